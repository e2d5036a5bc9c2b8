"""Rented Vast.ai GPUs as a submitit executor, over the official ``vastai`` SDK.

``submitit.AutoExecutor(cluster="vast")`` gives each rented instance a batch of jobs,
moves code and results over SSH/rsync, and destroys every instance it created, also on
error and on Ctrl-C. The sweep's backend over it is ``backend`` (``hydra/launcher=vast``),
the one module of this package that imports ``eas.sweep`` (its protocol); eas.sweep finds
it by its module path. The SDK is imported only when a client is made (``api.client``).

Modules: ``api`` (the vastai SDK: key, offers, instances), ``remote`` (SSH/rsync to an
instance), ``executor`` (the submitit executor plugin and job environment), ``backend``
(the sweep's Vast.ai backend), ``runner`` (what runs a job on the instance), ``records`` (which instances a launch created, each
job's state), ``cli`` (``eas-vast``).
"""
