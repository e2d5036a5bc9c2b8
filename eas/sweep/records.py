"""What a sweep leaves on disk: one manifest per sweep dir, one status record per job dir.

- ``<sweep dir>/sweep.json`` (the manifest, written by the launcher): how to launch
  the sweep again (cwd, overrides, the env vars that locate the store) and every
  job: its number, its overrides, the cells (override sets) it covers, and the
  SLURM ids it was submitted under.
- ``<job dir>/status.json`` (written by the job itself): ``running``, then
  ``done`` or ``failed`` (error, traceback), or ``interrupted`` (preempted,
  timed out, killed: the process ended without finishing).

Every write is atomic (``eas.store.write_json``), so a reader never sees half a record.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MANIFEST = "sweep.json"
STATUS = "status.json"
# env vars that locate the store and outputs: `eas-sweep resume` restores them
ENV_KEYS = ("EAS_STORE", "EAS_OUTPUTS")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _write(path: Path, obj: Any) -> None:
    from eas import store  # imports torch: only where a record is written

    store.write_json(path, obj)


def read_json(path: Path) -> Any | None:
    """A record, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def slurm_job_id() -> str | None:
    """This process's SLURM job id as submitit and sacct write it (``123_4`` for array task 4)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


class JobRecord:
    """The status record of one job; ``job_record`` drives it."""

    def __init__(self, job_dir: Path, num: int | None, overrides: list[str]):
        self.path = Path(job_dir) / STATUS
        self.result: Any = None
        self.failed = False
        self.rec: dict[str, Any] = {
            "state": "running", "num": num, "overrides": overrides, "job_dir": str(Path(job_dir).resolve()),
            "slurm_job_id": slurm_job_id(), "attempt": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            "host": socket.gethostname(), "pid": os.getpid(), "started": now(),
        }
        self._t0 = time.monotonic()

    def _finish(self, state: str, **fields: Any) -> None:
        self.rec.update(state=state, ended=now(), seconds=round(time.monotonic() - self._t0, 3), **fields)
        _write(self.path, self.rec)

    def done(self, summary: dict | None) -> None:
        """The job returned. Cells that failed inside it (a grid job records them in its summary
        and goes on) make the job ``failed``, so that ``eas-sweep resume`` retries it."""
        self.result = summary
        failed = [c for c in (summary or {}).get("failed_cells") or []]
        if not failed:
            self._finish("done")
            return
        self.failed = True
        names = [c.get("cell", "?") if isinstance(c, dict) else str(c) for c in failed]
        tbs = [c.get("error", "") for c in failed if isinstance(c, dict)]
        last = tbs[0].strip().splitlines()[-1] if tbs and tbs[0].strip() else ""
        self._finish("failed", error=f"{len(names)} cell(s) failed: {', '.join(names)}: {last}",
                     traceback=tbs[0] if tbs else None, failed_cells=names)

    def error(self, exc: BaseException) -> None:
        self.failed = True
        self.result = {"state": "failed", "error": _error_line(exc), "job_dir": self.rec["job_dir"]}
        self._finish("failed", error=_error_line(exc),
                     traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def interrupted(self, exc: BaseException) -> None:
        self._finish("interrupted", error=f"process ended early: {type(exc).__name__}{exc.args or ''}")


@contextmanager
def job_record(job_dir: Path, multirun: bool | None = None):
    """Record one job's status in ``<job_dir>/status.json``.

    In a multirun an exception is recorded (error and traceback) and swallowed, so one
    failing cell does not fail the launcher call and the other cells still land; the
    sweep's end callback reports it and sets the exit status. Outside a multirun it
    is recorded and re-raised. ``SystemExit``/``KeyboardInterrupt`` are never swallowed
    (submitit exits that way after requeueing a preempted job): raised while handling
    an error they record that error, otherwise ``interrupted``.

    Yields:
        JobRecord: call ``.done(summary)`` when the job returns; ``.result`` is what the
        Hydra task returns (the summary, or the failure record).
    """
    num, overrides = None, []
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        num = hc.job.get("num")
        overrides = list(hc.overrides.task)
        if multirun is None:
            multirun = hc.mode.name == "MULTIRUN"
    except ValueError:  # not inside a Hydra job
        pass
    record = JobRecord(Path(job_dir), num, overrides)
    _write(record.path, record.rec)
    try:
        yield record
    except Exception as e:
        record.error(e)
        if not multirun:
            raise
    except BaseException as e:
        ctx = e.__context__
        if isinstance(ctx, Exception):  # sys.exit(2) after a user error: that error is the cause
            record.error(ctx)
        else:
            record.interrupted(e)
        raise


def read_manifest(sweep_dir: Path) -> dict | None:
    return read_json(Path(sweep_dir) / MANIFEST)


def write_manifest(sweep_dir: Path, manifest: dict) -> None:
    manifest["updated"] = now()
    _write(Path(sweep_dir) / MANIFEST, manifest)


def find_status_records(sweep_dir: Path) -> list[dict]:
    """Every job's ``status.json`` under a sweep dir (job dirs do not nest)."""
    out = []
    for root, dirs, files in os.walk(sweep_dir):
        if STATUS in files:
            rec = read_json(Path(root) / STATUS)
            if isinstance(rec, dict):
                rec.setdefault("job_dir", root)
                out.append(rec)
            dirs.clear()
        else:
            dirs[:] = [d for d in dirs if not d.startswith(".") and d != "report"]
    return out
