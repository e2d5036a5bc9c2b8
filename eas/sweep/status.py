"""The state of every cell of a sweep, from its records and (where it answers) its backend.

A cell is ``done``, ``failed`` (with the error), ``died`` (its record says running,
but the process is gone from this host: SIGKILL, out of memory), ``interrupted``
(SIGTERM, Ctrl-C), ``running``, ``pending`` (queued or requeued), ``missing`` (never
started: not submitted, cancelled before it started, forgotten by the backend before it
ran, or a job of a local multirun with no ``status.json``) or ``unknown`` (submitted,
the backend does not answer). A job's ``status.json`` counts only if it belongs to the
job's latest submission; a record that still says ``running`` while the backend says
the job ended (scancel, timeout, out of memory, node failure, a lost instance) is
``failed`` with the backend's word for it and the job's log.

The backend is the one the sweep's manifest names (``eas.sweep.backend``); this module
never asks for one by name.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eas.sweep import backend as backends
from eas.sweep import records
from eas.sweep.backend import Backend, JobPhase

STATES = ("done", "failed", "died", "interrupted", "running", "pending", "missing", "unknown")
LIVE = ("running", "pending", "unknown")  # resume leaves these alone
RESUMABLE = ("failed", "died", "interrupted", "missing")  # resume resubmits these
# how a steer job names a cell in summary.json's failed_cells (eas.experiments.base.cell_name)
_CELL_NAME = re.compile(r"L(?P<layer>-?\d+)_s(?P<strength>[^/\s]+)$")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass
class JobState:
    num: int | None
    overrides: list[str]
    cells: list[list[str]]
    state: str
    job_id: str | None = None  # the backend's id of the latest submission
    backend_state: str | None = None  # the backend's word for its state (SLURM's TIMEOUT, ...)
    job_dir: str | None = None
    error: str | None = None
    failed_cells: list[str] = field(default_factory=list)

    @property
    def has_results(self) -> bool:
        return bool(self.job_dir) and (Path(self.job_dir) / "results.parquet").exists()


@dataclass
class CellState:
    cell: list[str]
    state: str
    num: int | None
    job_id: str | None
    job_dir: str | None
    error: str | None = None


@dataclass
class SweepStatus:
    sweep_dir: Path
    jobs: list[JobState]
    cells: list[CellState]
    backend_answered: bool
    manifest: dict | None = None
    backend: Backend = field(default_factory=lambda: backends.load("local"))

    def count(self, state: str) -> int:
        return sum(c.state == state for c in self.cells)

    @property
    def live(self) -> bool:
        return any(c.state in LIVE for c in self.cells)

    @property
    def complete(self) -> bool:
        return bool(self.cells) and all(c.state == "done" for c in self.cells)

    def result_dirs(self) -> list[Path]:
        """Job dirs whose results belong in the merged table: the latest run of each job
        (a job with some failed cells still contributes the cells that landed)."""
        return [Path(j.job_dir) for j in self.jobs if j.state in ("done", "failed") and j.has_results]

    def counts(self) -> str:
        parts = [f"{self.count(s)} {s}" for s in STATES if self.count(s) or s in ("done", "failed")]
        return f"{len(self.cells)} cells: " + ", ".join(parts)

    def table(self, width: int = 160) -> str:
        """One line per cell: state, the backend's job id, cell overrides, last line of the error."""
        rows = [("state", "job", "cell", "error")]
        # overrides every cell shares say nothing about which cell this is
        common = set.intersection(*(set(c.cell) for c in self.cells)) if len(self.cells) > 1 else set()
        for c in self.cells:
            err = (c.error or "").strip().splitlines()
            rows.append((c.state, c.job_id or ("" if c.num is None else f"#{c.num}"),
                         " ".join(o for o in c.cell if o not in common) or "(no overrides)", err[-1] if err else ""))
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}"[:width].rstrip() for r in rows)

    def as_dict(self) -> dict:
        return {"sweep_dir": str(self.sweep_dir), "counts": {s: self.count(s) for s in STATES},
                "backend": self.backend.name, "backend_answered": self.backend_answered, "cells": [asdict(c) for c in self.cells],
                "jobs": [asdict(j) for j in self.jobs]}


def _same_job(recorded: str | None, submitted: str) -> bool:
    """A one-task array (``12``) runs as ``12_0`` inside the job."""
    return recorded is None or recorded == submitted or recorded == f"{submitted}_0"


def _ended(backend: Backend, job_id: str, state: JobPhase) -> str:
    return (f"{backend.name} job {job_id} "
            + ("is no longer queued or running" if state.phase == "gone" else f"ended {state.word}"))


def _log_hint(backend: Backend, manifest: dict | None, job_id: str | None) -> str:
    path = backend.log_path(manifest or {}, job_id) if job_id else None
    return f"; log: {path}" if path else ""


def _died(rec: dict) -> str:
    return f"process {rec['pid']} on {rec['host']} ended without recording why (SIGKILL, out of memory, power loss)"


def process_gone(rec: dict) -> bool:
    """Whether the process a ``running`` record names has ended: only a reader on the job's own
    host can tell (elsewhere, or with no pid recorded: False)."""
    pid = rec.get("pid")
    if not isinstance(pid, int) or pid <= 0 or rec.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        pass
    stat = records.proc_stat(pid)  # Linux; None without /proc
    # a zombie is dead but not yet reaped by its parent; another start time is a reused pid
    return stat is not None and (stat[0] in "ZX" or rec.get("pid_start") not in (None, stat[1]))


def resolve_job(job: dict, rec: dict | None, state: JobPhase | None, manifest: dict | None = None,
                backend: Backend | None = None) -> JobState:
    """The state of one job from its manifest entry, its status record and its backend's state.

    Args:
        job: ``{"num", "overrides", "cells", "job_id"}`` (``job_id``: the latest submission).
        rec: The job's ``status.json``, or None.
        state: The backend's state of the latest submission; None when the backend did not answer.
        manifest: The sweep's manifest (for log paths in errors).
        backend: The backend that ran the job (default: the manifest's).
    """
    backend = backend or backends.of_manifest(manifest or {})
    sid = job.get("job_id", job.get("slurm_job_id"))  # slurm_job_id: manifests of eas before backends
    st = JobState(job.get("num"), list(job.get("overrides") or []), [list(c) for c in job.get("cells") or []],
                  "missing", sid, state.word if state is not None else None)
    current = rec is not None and (sid is None or _same_job(rec.get("slurm_job_id"), sid))
    if current:
        st.job_dir = rec.get("job_dir")
        recorded = rec.get("state")
        if recorded in ("done", "failed"):
            st.state, st.error = recorded, rec.get("error")
            st.failed_cells = list(rec.get("failed_cells") or [])
        elif state is not None and state.live:
            st.state = state.phase
        elif state is None or not sid:
            # no backend to ask: the record, and whether its process is still there
            if recorded == "running" and process_gone(rec):
                st.state, st.error = "died", _died(rec)
            elif recorded in ("running", "interrupted"):
                st.state, st.error = recorded, rec.get("error")
            else:
                st.state, st.error = "failed", rec.get("error")
        elif state.phase == "gone" and recorded == "running" and process_gone(rec):
            st.state, st.error = "died", _died(rec)  # the backend forgot it; this host saw it die
        else:
            st.state = "failed"
            st.error = (f"{_ended(backend, sid, state)} while running"
                        + (f" ({rec['error']})" if rec.get("error") else "") + _log_hint(backend, manifest, sid))
    elif sid:
        if state is not None and state.live:
            st.state = state.phase
        elif state is None:
            st.state = "unknown"
            st.error = f"{backend.name} does not answer"
        elif state.phase == "gone":
            st.state = "missing"
        elif state.phase == "cancelled":
            st.state = "missing"
            st.error = f"{backend.name} job {sid} was cancelled before the cell started"
        else:
            st.state = "failed"
            st.error = (f"{_ended(backend, sid, state)} before the job recorded a status"
                        + _log_hint(backend, manifest, sid))
    if st.cells == [] and st.overrides is not None:
        st.cells = [st.overrides]
    return st


def _cell_failed(cell: list[str], failed_names: list[str]) -> bool:
    vals = dict(o.partition("=")[::2] for o in cell)
    try:
        layer, strength = int(vals["layer"]), float(vals["strength"])
    except (KeyError, ValueError):
        return True  # cannot tell which of the job's cells failed: report them all
    for name in failed_names:
        m = _CELL_NAME.search(name)
        if m and int(m["layer"]) == layer and float(m["strength"]) == strength:
            return True
    return False


def _cell_states(job: JobState) -> list[CellState]:
    out = []
    # a packed job that ran but lost some cells: only those cells failed
    partial = job.state == "failed" and job.failed_cells and len(job.cells) > 1
    for cell in job.cells:
        state = job.state
        if partial and not _cell_failed(cell, job.failed_cells):
            state = "done"
        out.append(CellState(cell, state, job.num, job.job_id, job.job_dir,
                             job.error if state != "done" else None))
    return out


def latest_records(sweep_dir: Path) -> dict[int | str, dict]:
    """Each job's status record, keyed by job number (by job dir when a job has none)."""
    recs: dict[int | str, dict] = {}
    for rec in records.find_status_records(sweep_dir):
        k = rec.get("num") if rec.get("num") is not None else rec.get("job_dir")
        if k not in recs or str(rec.get("started", "")) >= str(recs[k].get("started", "")):
            recs[k] = rec
    return recs


def planned_jobs(sweep_dir: Path) -> list[dict]:
    """Every job of a multirun without a manifest, numbered as Hydra numbers them, from the
    ``multirun.yaml`` that Hydra's basic sweeper writes before the first job starts; [] for
    another sweeper or a file that does not parse (the records alone are listed then)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hc = OmegaConf.to_container(OmegaConf.load(path).hydra, resolve=False)
        if hc["sweeper"].get("_target_") != BASIC_SWEEPER:
            return []
        # what BasicSweeper.sweep expands: its params, then the command line's overrides
        args = [f"{k}={v}" for k, v in (hc["sweeper"].get("params") or {}).items()] + list(hc["overrides"]["task"])
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    except Exception:  # noqa: BLE001 - a sweep we cannot expand is listed from its records
        return []
    return [{"num": i, "overrides": list(o), "job_id": None} for i, o in enumerate(batches[0])]


def sweep_status(sweep_dir: str | Path, ask_backend: bool = True) -> SweepStatus:
    """Resolve every job and cell of a sweep dir.

    With a manifest (eas's launcher) every cell of the sweep is listed, run or not, and
    the manifest's backend is asked for its jobs' states; without one, every job of the
    multirun (``multirun.yaml``): a job that never wrote a ``status.json`` is ``missing``.
    """
    sweep_dir = Path(sweep_dir)
    manifest = records.read_manifest(sweep_dir)
    recs = latest_records(sweep_dir)
    if manifest is not None:
        jobs = [{**j, "job_id": j.get("job_id", j.get("slurm_job_id"))} for j in manifest.get("jobs", [])]
        backend = backends.of_manifest(manifest)
    else:
        # a job's SLURM id (hydra/launcher=submitit_slurm) is known from its record only
        jobs = [{**j, "job_id": recs.get(j["num"], {}).get("slurm_job_id"), "_key": j["num"]}
                for j in planned_jobs(sweep_dir)]
        planned = {j["num"] for j in jobs}
        jobs += [{"num": r.get("num"), "overrides": r.get("overrides", []), "job_id": r.get("slurm_job_id"),
                  "_key": k} for k, r in recs.items() if k not in planned]
        # without a manifest, the records say who ran the jobs: SLURM writes its job ids into them
        backend = backends.load("slurm" if any(j["job_id"] for j in jobs) else "local")
    ids = [j["job_id"] for j in jobs if j.get("job_id")]
    states = backend.job_states(manifest or {}, ids) if ask_backend and ids else None
    resolved = []
    for j in jobs:
        rec = recs.get(j["_key"] if "_key" in j else j.get("num"))
        sid = j.get("job_id")
        resolved.append(resolve_job(j, rec, states.get(sid) if states is not None and sid else None, manifest,
                                    backend))
    resolved.sort(key=lambda j: (j.num is None, j.num if j.num is not None else 0))
    cells = [c for j in resolved for c in _cell_states(j)]
    return SweepStatus(sweep_dir, resolved, cells, states is not None, manifest, backend)
