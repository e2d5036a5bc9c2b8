"""The ``hydra/launcher=slurm`` launcher: hydra-submitit-launcher's SLURM launcher, plus
sweep bookkeeping.

What it adds to ``submitit_slurm``:

- a manifest (``sweep.json``) of every job and cell, written before anything runs;
- cells packed several to a job (``cells_per_job``; one model load per job);
- job arrays split at the cluster's ``MaxArraySize``;
- ``detach=true``: submit, write the manifest, queue a dependent job that merges
  the report when every cell has ended, and return at once;
- re-launching into the same sweep dir (``eas-sweep resume DIR``) resubmits only
  the jobs that are missing or failed;
- waiting never raises for a failed or killed job: its cell is recorded failed
  (by the job, or from SLURM's state), the others land, and the end-of-sweep
  callback reports it and sets the exit status.

Preemption and timeouts: submitit requeues a signalled job (the launcher is
checkpointable, ``max_num_timeout`` bounds timeouts); the requeued job runs the
same cell again and reads every finished record from the store.

Hydra only instantiates launchers defined under ``hydra_plugins``; the plugin
(``launchers/hydra_plugins/eas_sweep``) combines ``SweepLauncher`` with
``SlurmLauncher`` and registers ``SlurmSweepConf``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from omegaconf import OmegaConf

from eas.sweep import records, slurm
from eas.sweep.pack import PACK_KEYS, pack
from eas.sweep.status import LIVE, backend_name, sweep_status

log = logging.getLogger("eas")


@dataclass
class SlurmSweepConf(SlurmQueueConf):
    """``submitit_slurm``'s fields plus the sweep's own (all under ``hydra.launcher``)."""

    _target_: str = "hydra_plugins.eas_sweep.launcher.EasSlurmLauncher"
    # submit, record the manifest, and return without waiting (see eas-sweep status)
    detach: bool = False
    # cells run by one job (one model load): layer/strength grids packed as list overrides
    cells_per_job: int = 1
    pack_keys: list[str] = field(default_factory=lambda: list(PACK_KEYS))
    # tasks per job array; null: the cluster's MaxArraySize (scontrol show config)
    max_array_size: int | None = None
    # seconds between two looks at SLURM while waiting
    poll_s: float = 10.0
    # detach: queue a job that writes the merged report once every cell has ended
    report_job: bool = True


SWEEP_KEYS = ("detach", "cells_per_job", "pack_keys", "max_array_size", "poll_s", "report_job")


class SweepLauncher:
    """Mixin over ``BaseSubmititLauncher``: bookkeeping around submitit's job arrays."""

    _EXECUTOR: str

    def __init__(self, **params: Any) -> None:
        own = {k: params.pop(k) for k in SWEEP_KEYS if k in params}
        super().__init__(**params)  # type: ignore[call-arg]
        self.sweep_opts = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
                           for k, v in own.items()}

    # -- submitit ---------------------------------------------------------
    def _executor(self, **extra: Any):
        """A submitit executor from ``hydra.launcher`` (as hydra-submitit-launcher builds it)."""
        import submitit

        params = dict(self.params)  # type: ignore[attr-defined]
        init_keys = {"submitit_folder", "max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_max_num_timeout": params["max_num_timeout"]})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        params.update(extra)
        executor.update_parameters(**{k if k in base else f"{self._EXECUTOR}_{k}": v
                                      for k, v in params.items() if k not in init_keys})
        return executor

    # -- the backend (SLURM here; eas.vast's launcher overrides these) ------
    def _check_backend(self) -> None:
        if not slurm.available():
            raise RuntimeError("hydra/launcher=slurm needs SLURM's commands (sbatch, squeue) on PATH; to try eas "
                               "on SLURM on this machine see launchers/slurm/README.md (cluster.sh start DIR)")

    def _max_array_size(self) -> int:
        return slurm.max_array_size()

    def _job_states(self, job_ids: list[str]) -> dict[str, str] | None:
        return slurm.job_states(job_ids)

    # -- the manifest -----------------------------------------------------
    def _new_manifest(self, sweep_dir: Path) -> dict:
        cfg = self.config  # type: ignore[attr-defined]
        hydra_overrides = [o for o in cfg.hydra.overrides.hydra
                           if not o.startswith(("hydra.sweep.dir=", "hydra.mode="))]
        return {
            "version": 1, "created": records.now(), "sweep_dir": str(sweep_dir),
            "launcher": self._EXECUTOR, "submitit_folder": str(Path(self.params["submitit_folder"]).resolve()),  # type: ignore[attr-defined]
            "command": {"cwd": os.getcwd(), "hydra_overrides": list(hydra_overrides),
                        "task_overrides": list(cfg.hydra.overrides.task),
                        "env": {k: os.environ[k] for k in records.ENV_KEYS if k in os.environ}},
            "jobs": [],
        }

    def launch(self, job_overrides, initial_job_idx: int):
        from hydra.core.singleton import Singleton
        from hydra.core.utils import JobReturn, JobStatus

        opts = self.sweep_opts
        self._check_backend()
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
                entry = {"num": num, "overrides": job.overrides, "cells": job.cells, "slurm_job_id": None,
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
        limit = opts.get("max_array_size") or self._max_array_size()
        submitted = []
        for start in range(0, len(todo), limit):
            chunk = todo[start:start + limit]
            args = [(list(e["overrides"]), "hydra.sweep.dir", e["num"], f"job_id_for_{e['num']}",
                     Singleton.get_state()) for e in chunk]
            for e in chunk:
                log.info("\t#%d : %s", e["num"], " ".join(e["overrides"]))
            jobs = executor.map_array(self, *zip(*args))
            for e, j in zip(chunk, jobs):
                e["slurm_job_id"] = j.job_id
                e["submissions"].append(j.job_id)
            submitted += list(zip(chunk, jobs))
            records.write_manifest(sweep_dir, manifest)  # ids land before the next sbatch can fail

        if opts.get("detach"):
            if opts.get("report_job", True):
                self._submit_report_job(sweep_dir, manifest, [j for _, j in submitted])
            return [JobReturn(overrides=e["overrides"], status=JobStatus.COMPLETED,
                              _return_value={"state": "submitted", "slurm_job_id": j.job_id})
                    for e, j in submitted]
        return self._wait(submitted, float(opts.get("poll_s", 10.0)))

    def _submit_report_job(self, sweep_dir: Path, manifest: dict, jobs: list) -> None:
        """A small job that runs ``finalize`` once every array of this launch has ended."""
        from eas.sweep.report import finalize

        arrays = sorted({j.job_id.split("_")[0] for j in jobs})
        p = self.params  # type: ignore[attr-defined]
        extra = dict(p.get("additional_parameters") or {})
        extra["dependency"] = "afterany:" + ":".join(arrays)
        executor = self._executor(cpus_per_task=1, gpus_per_node=None, mem_gb=2, timeout_min=30,
                                  name="eas-sweep-report", additional_parameters=extra,
                                  gres=None, mem_per_gpu=None, cpus_per_gpu=None, gpus_per_task=None)
        job = executor.submit(finalize, str(sweep_dir), True)
        manifest["report_job_id"] = job.job_id
        records.write_manifest(sweep_dir, manifest)

    def _wait(self, submitted: list, poll_s: float):
        """Wait for every submitted job to end; a job that ends without a result is not an error
        here (its cell's state comes from its record and SLURM at the end of the sweep)."""
        pending = {e["num"]: (e, j) for e, j in submitted}
        out = {}
        ended_once: set[int] = set()
        try:
            while True:
                states = self._job_states([j.job_id for _, j in pending.values()]) or {}
                for num, (e, j) in list(pending.items()):
                    has_result = j.paths.result_pickle.exists()
                    state = states.get(j.job_id)
                    ended = state is not None and not slurm.is_live(state)
                    # without accounting, an ended job is UNKNOWN: believe it on the second look
                    if has_result or (ended and (state != "UNKNOWN" or num in ended_once)):
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

    def _job_return(self, entry: dict, job, has_result: bool, state: str | None):
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
            who = backend_name({"launcher": self._EXECUTOR})
            value = {"state": "failed", "error": f"{who} job {job.job_id} ended {state} without a result"}
        log.error("job #%d (%s): %s", entry["num"], " ".join(entry["overrides"]), value["error"])
        return JobReturn(overrides=entry["overrides"], status=JobStatus.COMPLETED, _return_value=value)
