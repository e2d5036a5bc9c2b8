"""eas's Hydra launcher: sweep bookkeeping around a launch backend (``eas.sweep.backend``).

What it adds to submitit's executors, on every backend (local, SLURM, Vast.ai):

- a manifest (``sweep.json``) of every job and cell, written before anything runs;
- cells packed several to a job (``cells_per_job``; one model load per job);
- job arrays split at the backend's limit (SLURM: the cluster's ``MaxArraySize``);
- ``detach=true`` (where the backend can): submit, write the manifest, queue a
  dependent job that merges the report when every cell has ended, and return at once;
- re-launching into the same sweep dir (``eas-sweep resume DIR``) resubmits only
  the jobs that are missing or failed;
- waiting never raises for a failed or killed job: its cell is recorded failed
  (by the job, or from the backend's state), the others land, and the end-of-sweep
  callback reports it and sets the exit status.

Hydra only instantiates launchers defined under ``hydra_plugins``; the plugin
(``launchers/hydra_plugins/eas_sweep``) combines ``SweepLauncher`` with
hydra-submitit-launcher's ``BaseSubmititLauncher`` (which runs each job) and registers
every backend's ``Conf`` as ``hydra/launcher=eas_<name>``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from eas.sweep import backend as backends
from eas.sweep import records
from eas.sweep.pack import PACK_KEYS, pack
from eas.sweep.status import LIVE, sweep_status

log = logging.getLogger("eas")


class SweepLauncher:
    """Mixin over ``BaseSubmititLauncher``: bookkeeping around a backend's job arrays."""

    def __init__(self, **params: Any) -> None:
        own = {k: params.pop(k) for k in backends.SWEEP_KEYS if k in params}
        super().__init__(**params)  # type: ignore[call-arg]
        self.sweep_opts = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                           for k, v in own.items()}
        self.backend_name = str(self.sweep_opts.get("backend") or "local")
        self.backend = backends.load(self.backend_name)

    def _executor(self, **extra: Any):
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()  # type: ignore[attr-defined]
        return self.backend.executor(dict(self.params), self.sweep_opts, sweep_dir, **extra)  # type: ignore[attr-defined]

    def _new_manifest(self, sweep_dir: Path) -> dict:
        cfg = self.config  # type: ignore[attr-defined]
        hydra_overrides = [o for o in cfg.hydra.overrides.hydra
                           if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        return {
            "version": 1, "created": records.now(), "sweep_dir": str(sweep_dir),
            "backend": self.backend_name, "host": socket.gethostname(),
            "submitit_folder": str(Path(self.params["submitit_folder"]).resolve()),  # type: ignore[attr-defined]
            "command": {"cwd": os.getcwd(), "hydra_overrides": list(hydra_overrides),
                        "task_overrides": list(cfg.hydra.overrides.task),
                        "env": {k: os.environ[k] for k in records.ENV_KEYS if k in os.environ}},
            "jobs": [],
        }

    def launch(self, job_overrides, initial_job_idx: int):
        try:
            self.backend.check(dict(self.params), self.sweep_opts)  # type: ignore[attr-defined]
        except backends.BackendError as e:  # before anything is submitted: a message, not a traceback
            print(f"eas: error: {e}", file=sys.stderr)
            sys.exit(2)
        return self.backend.run_launch(lambda: self._launch(job_overrides, initial_job_idx))

    def _launch(self, job_overrides, initial_job_idx: int):
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobReturn, JobStatus

        opts = self.sweep_opts
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()  # type: ignore[attr-defined]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        manifest = records.read_manifest(sweep_dir) or self._new_manifest(sweep_dir)
        known = {j["num"]: j for j in manifest["jobs"]}
        packed = pack([list(o) for o in job_overrides], int(opts.get("cells_per_job", 1)),
                      tuple(opts.get("pack_keys") or PACK_KEYS))
        todo = []
        for i, job in enumerate(packed):
            num = initial_job_idx + i
            entry = known.get(num)
            if entry is None:
                entry = {"num": num, "overrides": job.overrides, "cells": job.cells, "job_id": None,
                         "submissions": []}
                manifest["jobs"].append(entry)
                known[num] = entry
            elif entry["overrides"] != job.overrides:
                raise RuntimeError(
                    f"{sweep_dir} holds another sweep: its job {num} ran {entry['overrides']}, this one would "
                    f"run {job.overrides}; launch into a new hydra.sweep.dir")
            todo.append(entry)
        records.write_manifest(sweep_dir, manifest)
        if any(e["submissions"] for e in todo):  # a re-launch: leave finished and live jobs alone
            states = {j.num: j.state for j in sweep_status(sweep_dir).jobs}
            for e in [e for e in todo if states.get(e["num"]) in ("done", *LIVE)]:
                log.info("\t#%d : %s (%s, not resubmitted)", e["num"], " ".join(e["overrides"]), states[e["num"]])
                todo.remove(e)
        n_cells = sum(len(e["cells"]) for e in todo)
        log.info("sweep %s: submitting %d job(s) for %d cell(s)", sweep_dir, len(todo), n_cells)
        if not todo:
            return []

        executor = self._executor()
        limit = opts.get("max_array_size") or self.backend.max_array_size()
        submitted = []
        for start in range(0, len(todo), limit):
            chunk = todo[start:start + limit]
            args = [(list(e["overrides"]), "hydra.sweep.dir", e["num"], f"job_id_for_{e['num']}",
                     Singleton.get_state()) for e in chunk]
            for e in chunk:
                log.info("\t#%d : %s", e["num"], " ".join(e["overrides"]))
            jobs = executor.map_array(self, *zip(*args))
            for e, j in zip(chunk, jobs):
                e["job_id"] = j.job_id
                e["submissions"].append(j.job_id)
            submitted += list(zip(chunk, jobs))
            records.write_manifest(sweep_dir, manifest)  # ids land before the next sbatch can fail

        if opts.get("detach"):
            if opts.get("report_job", True):
                from eas.sweep.report import finalize

                rid = self.backend.submit_report(dict(self.params), sweep_dir, finalize,  # type: ignore[attr-defined]
                                                 [j for _, j in submitted])
                if rid:
                    manifest["report_job_id"] = rid
                    records.write_manifest(sweep_dir, manifest)
            return [JobReturn(overrides=e["overrides"], status=JobStatus.COMPLETED,
                              _return_value={"state": "submitted", "job_id": j.job_id})
                    for e, j in submitted]
        return self._wait(manifest, submitted, float(opts.get("poll_s", 10.0)))

    def _wait(self, manifest: dict, submitted: list, poll_s: float):
        """Wait for every submitted job to end; a job that ends without a result is not an error
        here (its cell's state comes from its record and SLURM at the end of the sweep)."""
        pending = {e["num"]: (e, j) for e, j in submitted}
        out = {}
        ended_once: set[int] = set()
        try:
            while True:
                states = self.backend.waiting_states(manifest, [j for _, j in pending.values()]) or {}
                for num, (e, j) in list(pending.items()):
                    has_result = j.paths.result_pickle.exists()
                    state = states.get(j.job_id)
                    ended = state is not None and not state.live
                    # SLURM without accounting forgets an ended job (gone): believe it on the second look
                    if has_result or (ended and (state.phase != "gone" or num in ended_once)):
                        out[num] = self._job_return(e, j, has_result, state)
                        del pending[num]
                    elif ended:
                        ended_once.add(num)
                if not pending:
                    break
                time.sleep(poll_s)
        except KeyboardInterrupt:
            log.warning("stopped waiting: the jobs keep running; see `eas-sweep status %s`",
                        self.config.hydra.sweep.dir)  # type: ignore[attr-defined]
            raise
        return [out[e["num"]] for e, _ in submitted]

    def _job_return(self, entry: dict, job, has_result: bool, state: backends.JobPhase | None):
        from hydra.core.utils import JobReturn, JobStatus

        if has_result:
            try:
                ret = job.results()[0]
                if ret.status == JobStatus.COMPLETED:
                    return ret
                value = {"state": "failed", "error": f"{type(ret._return_value).__name__}: {ret._return_value}"}
            except Exception as e:  # noqa: BLE001 - submitit's error for a job that raised outside the task
                value = {"state": "failed", "error": str(e).splitlines()[0]}
        else:
            word = state.word if state is not None else "UNKNOWN"
            value = {"state": "failed", "error": f"{self.backend.name} job {job.job_id} ended {word} without a result"}
        log.error("job #%d (%s): %s", entry["num"], " ".join(entry["overrides"]), value["error"])
        return JobReturn(overrides=entry["overrides"], status=JobStatus.COMPLETED, _return_value=value)
