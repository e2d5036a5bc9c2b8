"""Sweeps on rented Vast.ai GPUs: a submitit executor over the official ``vastai`` SDK.

``hydra/launcher=vast`` packs a multirun's cells into jobs (one model load each), gives
each rented instance a batch of jobs, moves code and results over SSH/rsync, and
destroys every instance it created, also on error and on Ctrl-C. The sweep dir,
``eas-sweep status`` and ``eas-sweep resume`` are the same as on SLURM.

Modules: ``api`` (the vastai SDK: key, offers, instances), ``remote`` (SSH/rsync to an
instance), ``executor`` (the submitit executor plugin and job environment), ``records``
(which instances a sweep created, each job's state), ``cli`` (``eas-vast``).
"""
