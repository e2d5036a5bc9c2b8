"""Ask SLURM about jobs and limits (``squeue``, ``sacct``, ``scontrol``), without submitit.

``squeue`` knows live jobs at once; ``sacct`` (accounting) also knows ended ones,
but only a moment after submission. ``job_states`` asks both and trusts squeue
for live jobs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable

# states of a job that has not ended (a requeued job passes through REQUEUED to PENDING)
LIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING",
                  "CONFIGURING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"})
# live, but not running: waiting for resources, or requeued after preemption
QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
_ID = re.compile(r"^(?P<main>\d+)(?:_(?:(?P<task>\d+)|\[(?P<ranges>[^\]]*)\]))?$")


def available() -> bool:
    return all(shutil.which(c) is not None for c in ("sbatch", "squeue"))


def _run(cmd: list[str], timeout: float = 30) -> str | None:
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _expand(job_id: str) -> list[str]:
    """``12`` -> [12]; ``12_3`` -> [12_3]; ``12_[1-3,7%2]`` -> [12_1, 12_2, 12_3, 12_7]."""
    m = _ID.match(job_id.strip())
    if not m:
        return []
    if m["ranges"] is None:
        return [job_id.strip()]
    out = []
    for part in m["ranges"].split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m['main']}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _parse(text: str) -> dict[str, str]:
    states = {}
    for line in text.splitlines():
        job_id, _, state = line.strip().partition("|")
        state = state.split(" ")[0].strip().upper()  # "CANCELLED by 0" -> CANCELLED
        if job_id and state and "." not in job_id:
            for j in _expand(job_id):
                states[j] = state
    return states


def job_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """SLURM state of each job id (``"123"`` or array task ``"123_4"``).

    Returns:
        ``{job_id: state}``; a job neither command knows is ``"UNKNOWN"`` (purged, or
        from another cluster's lifetime). None when neither squeue nor sacct answers.
    """
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    mains = sorted({j.split("_")[0] for j in ids})
    acct = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(mains)])
    queue = _run(["squeue", "-r", "-h", "-o", "%i|%T", "-j", ",".join(mains)])
    if queue is None:
        # squeue fails for a job id the controller has forgotten: ask job by job
        parts = [_run(["squeue", "-r", "-h", "-o", "%i|%T", "-j", m]) for m in mains]
        queue = None if all(p is None for p in parts) else "".join(p or "" for p in parts)
    if acct is None and queue is None:
        return None
    states = _parse(acct or "")
    states.update(_parse(queue or ""))
    out = {}
    for j in ids:
        # a plain id of an array job: take any of its tasks (submit-time id before the split)
        out[j] = states.get(j) or next((s for k, s in states.items() if k.split("_")[0] == j), "UNKNOWN")
    return out


def is_live(state: str | None) -> bool:
    return state in LIVE


def max_array_size(default: int = 1001) -> int:
    """The cluster's MaxArraySize (array task ids run from 0 to MaxArraySize - 1)."""
    out = _run(["scontrol", "show", "config"])
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out or "", re.MULTILINE)
    return int(m.group(1)) if m else default
