"""Sweeps: what a multirun records, how its cells are packed into jobs, and their state.

A sweep dir (Hydra's ``hydra.sweep.dir``) holds ``sweep.json`` (the manifest: every job
and cell and the backend that runs them, written by eas's launcher before anything runs),
one job dir per job with its ``status.json`` (written by the job), and at the end
``sweep_status.{json,md}`` and ``report/`` (the merged table).
``eas-sweep status|resume|report|cancel DIR`` reads them.

Modules: ``records`` (manifest and status records), ``pack`` (cells -> jobs), ``backend``
(the launch backend protocol: submit arrays, job states, limits, teardown), ``backends``
(``local``, ``slurm``; Vast.ai's is ``eas.vast.backend``), ``slurm`` (squeue/sacct/scontrol),
``status`` (each cell's state), ``report`` (the end of a sweep), ``launcher`` (the Hydra
launcher), ``callback`` (the end-of-multirun hook), ``cli`` (``eas-sweep``).
"""

from eas.sweep.records import job_record

__all__ = ["job_record"]
