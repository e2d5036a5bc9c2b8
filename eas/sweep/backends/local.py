"""``hydra/launcher=local``: the sweep's jobs as processes on this machine (submitit's local
executor), with the sweep's manifest, packing and resume.

A sweep dir without a manifest (Hydra's own launcher) is read with this backend too: it
asks nothing, and each job's ``status.json`` (with its pid) says what became of it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf

from eas.sweep.backend import LAUNCHER_TARGET, Backend, JobPhase, SweepFields


@dataclass
class Conf(SweepFields, LocalQueueConf):
    """``submitit_local``'s fields plus the sweep's own."""

    _target_: str = LAUNCHER_TARGET
    backend: str = "local"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class LocalBackend(Backend):
    name = "local"
    cluster = "local"

    def job_states(self, manifest, job_ids):
        """A local job's id is its pid: alive (on the launching host) or gone."""
        if (manifest or {}).get("host") != socket.gethostname():
            return None  # another machine's pids say nothing here
        out = {}
        for j in job_ids:
            alive = str(j).isdigit() and _pid_alive(int(j))
            out[j] = JobPhase("running", "RUNNING") if alive else JobPhase("gone", "EXITED")
        return out

    def waiting_states(self, manifest, jobs):
        # submitit's local job knows its own process
        return {j.job_id: JobPhase("running", "RUNNING") if j.state == "RUNNING" else JobPhase("ended", j.state)
                for j in jobs}


BACKEND = LocalBackend()
