"""What a Vast sweep records: every instance it created, and each job's state.

- ``<submitit root>/vast_instances.jsonl``: one line per event (``created``,
  ``destroyed``, ``destroy_failed``) with the instance id; ``eas-vast destroy DIR``
  destroys every instance created and not yet destroyed.
- ``<job folder>/vast_state.json``: ``PENDING`` (waiting for an instance), ``RUNNING``,
  ``COMPLETED``, ``FAILED`` (the job ran and raised), ``CANCELLED`` (lost before it
  started), ``NODE_FAIL`` (lost while running: outbid, instance died), or ``UNKNOWN`` (no
  record). SLURM's words, for a reader who knows ``sacct``; the sweep's Vast backend
  (``eas.vast.backend``) reads them as the protocol's phases.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

INSTANCES = "vast_instances.jsonl"
JOB_STATE = "vast_state.json"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL"})
_lock = threading.Lock()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _read_json(path: Path) -> dict | None:
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def log_instance(root: Path, event: str, instance_id: int, **fields) -> None:
    line = json.dumps({"event": event, "instance_id": int(instance_id), "time": now(), **fields})
    with _lock, open(Path(root) / INSTANCES, "a") as f:
        f.write(line + "\n")


def instances(root: Path) -> dict[int, dict]:
    """Each instance the sweep created: its last event and the fields of its ``created`` line."""
    out: dict[int, dict] = {}
    path = Path(root) / INSTANCES
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        rec = out.setdefault(ev["instance_id"], {})
        rec.update(ev if ev["event"] == "created" else {})
        rec["last"] = ev["event"]
    return out


def live_instances(root: Path) -> list[int]:
    return [i for i, r in instances(root).items() if r["last"] != "destroyed"]


def set_job_state(job_folder: Path, state: str, **fields) -> None:
    from eas import store

    job_folder = Path(job_folder)
    job_folder.mkdir(parents=True, exist_ok=True)
    rec = read_job_state(job_folder) or {}
    rec.update(state=state, updated=now(), **fields)
    store.write_json(job_folder / JOB_STATE, rec)


def read_job_state(job_folder: Path) -> dict | None:
    return _read_json(Path(job_folder) / JOB_STATE)


def mark_lost(job_folder: Path, error: str, ran: bool | None = None, **fields) -> bool:
    """Record a job that will not finish: ``NODE_FAIL`` if it ran (by default: its recorded state
    is ``RUNNING``), else ``CANCELLED``. A job already ended, or with a result, is left alone.

    Returns:
        Whether the job was marked.
    """
    job_folder = Path(job_folder)
    state = (read_job_state(job_folder) or {}).get("state")
    if state in TERMINAL or any(job_folder.glob("*_result.pkl")):
        return False
    ran = state == "RUNNING" if ran is None else ran
    set_job_state(job_folder, "NODE_FAIL" if ran else "CANCELLED", error=error, **fields)
    return True


def job_states(submitit_folder: str, job_ids) -> dict[str, str]:
    """``{job_id: state}`` of jobs under a submitit folder (``.../%j``); a job with no record is ``UNKNOWN``."""
    from submitit.core.utils import JobPaths

    out = {}
    for j in job_ids:
        rec = read_job_state(JobPaths(submitit_folder, job_id=j).folder)
        out[j] = (rec or {}).get("state", "UNKNOWN")
    return out
