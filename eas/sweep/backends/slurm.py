"""``hydra/launcher=slurm``: job arrays on a SLURM cluster (submitit's SLURM executor).

States come from ``squeue`` and ``sacct`` (``eas.sweep.slurm``); a detached sweep queues
a dependent job (``afterany``) that merges the report once every array has ended.
Preemption and timeouts: submitit requeues a signalled job (``max_num_timeout`` bounds
timeouts); the requeued job runs the same cells again and reads every finished record
from the store.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

from eas.sweep import slurm
from eas.sweep.backend import LAUNCHER_TARGET, Backend, BackendError, JobPhase, SweepFields


@dataclass
class Conf(SweepFields, SlurmQueueConf):
    """``submitit_slurm``'s fields (sbatch options) plus the sweep's own."""

    _target_: str = LAUNCHER_TARGET
    backend: str = "slurm"


def phase(state: str) -> JobPhase:
    """SLURM's word for a job's state, as the protocol's phase."""
    if state in slurm.QUEUED:
        return JobPhase("pending", state)
    if state in slurm.LIVE:
        return JobPhase("running", state)
    if state == "UNKNOWN":  # neither squeue nor sacct knows it
        return JobPhase("gone", state)
    if state == "CANCELLED":
        return JobPhase("cancelled", state)
    return JobPhase("ended", state)


class SlurmBackend(Backend):
    name = "SLURM"
    cluster = "slurm"
    init_keys = ("max_num_timeout",)
    can_detach = True
    log_stream = "err"  # SLURM splits stdout and stderr

    def check(self, params, opts):
        if not slurm.available():
            raise BackendError("hydra/launcher=slurm needs SLURM's commands (sbatch, squeue) on PATH; to try eas "
                               "on SLURM on this machine see launchers/slurm/README.md (cluster.sh start DIR)")

    def max_array_size(self):
        return slurm.max_array_size()

    def job_states(self, manifest, job_ids):
        states = slurm.job_states(job_ids) if slurm.available() else None
        return None if states is None else {j: phase(s) for j, s in states.items()}

    def submit_report(self, params, sweep_dir, finalize, jobs):
        arrays = sorted({j.job_id.split("_")[0] for j in jobs})
        extra = dict(params.get("additional_parameters") or {})
        extra["dependency"] = "afterany:" + ":".join(arrays)
        # a small job: none of the sweep's GPUs or memory
        executor = self.executor(params, {}, sweep_dir, cpus_per_task=1, gpus_per_node=None, mem_gb=2, timeout_min=30,
                                 name="eas-sweep-report", additional_parameters=extra, gres=None,
                                 mem_per_gpu=None, cpus_per_gpu=None, gpus_per_task=None)
        return executor.submit(finalize, str(sweep_dir), True).job_id

    def cancel(self, manifest, job_ids):
        if not job_ids:
            return []
        if not slurm.available():
            raise BackendError("eas-sweep cancel needs SLURM's scancel on PATH")
        subprocess.run(["scancel", *job_ids], check=False)
        return [f"scancel {' '.join(job_ids)}"]


BACKEND = SlurmBackend()
