"""What a sweep leaves on disk: one manifest per sweep dir, one status record per job dir.

- ``<sweep dir>/sweep.json`` (the manifest, written by the launcher): how to launch
  the sweep again (cwd, overrides, the env vars that locate the store) and every
  job: its number, its overrides, the cells (override sets) it covers, and the
  SLURM ids it was submitted under.
- ``<job dir>/status.json`` (written by the job itself): ``running`` (with the host,
  pid and the pid's start time, so a reader on that host can tell that the process is
  gone), then ``done`` or ``failed`` (error, traceback), or ``interrupted`` (SIGTERM,
  Ctrl-C, preempted: the process ended without finishing). A SIGKILL writes nothing:
  ``eas.sweep.status`` reports such a record ``died``.

Every write is atomic (``eas.store.write_json``), so a reader never sees half a record.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
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


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state letter, start time in clock ticks since boot)`` of a Linux process, or None when
    it does not exist (or there is no ``/proc``). The start time tells a reused pid apart."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[19])


class Terminated(SystemExit):
    """SIGTERM during a job (``kill``, ``docker stop``, a scheduler): recorded ``interrupted``;
    the process exits 143 (128 + SIGTERM), as an unhandled SIGTERM would."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


class JobRecord:
    """The status record of one job; ``job_record`` drives it."""

    def __init__(self, job_dir: Path, num: int | None, overrides: list[str]):
        self.path = Path(job_dir) / STATUS
        self.result: Any = None
        self.failed = False
        stat = proc_stat(os.getpid())
        self.rec: dict[str, Any] = {
            "state": "running", "num": num, "overrides": overrides, "job_dir": str(Path(job_dir).resolve()),
            "slurm_job_id": slurm_job_id(), "attempt": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
            "host": socket.gethostname(), "pid": os.getpid(), "pid_start": stat[1] if stat else None,
            "started": now(),
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
        if self.rec["state"] != "running":  # a signal after the job's end was recorded changes nothing
            return
        why = "terminated by SIGTERM" if isinstance(exc, Terminated) else f"{type(exc).__name__}{exc.args or ''}"
        self._finish("interrupted", error=f"process ended early: {why}")


@contextmanager
def job_record(job_dir: Path, multirun: bool | None = None):
    """Record one job's status in ``<job_dir>/status.json``.

    In a multirun an exception is recorded (error and traceback) and swallowed, so one
    failing cell does not fail the launcher call and the other cells still land; the
    sweep's end callback reports it and sets the exit status. Outside a multirun it
    is recorded and re-raised. ``SystemExit``/``KeyboardInterrupt`` are never swallowed
    (submitit exits that way after requeueing a preempted job): raised while handling
    an error they record that error, otherwise ``interrupted``. SIGTERM is caught while
    the job runs (outside submitit, which handles it itself) and ends it ``interrupted``
    with exit status 143.

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
    # submitit installs its own SIGTERM handler (it ignores SLURM's SIGTERM at preemption and
    # requeues on USR2): only a default handler is replaced, and only the main thread may;
    # before the first write, so that a job that reads as running already catches SIGTERM
    own_sigterm = (threading.current_thread() is threading.main_thread()
                   and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    if own_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _write(record.path, record.rec)
        try:
            yield record
        except Exception as e:
            record.error(e)
            if not multirun:
                raise
        except BaseException as e:
            ctx = e.__context__
            if isinstance(ctx, Exception) and not isinstance(e, Terminated):
                record.error(ctx)  # sys.exit(2) after a user error: that error is the cause
            else:
                record.interrupted(e)
            raise
    finally:
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
