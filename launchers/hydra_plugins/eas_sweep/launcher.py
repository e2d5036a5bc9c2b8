"""eas's Hydra launcher plugin (``hydra/launcher=slurm``).

Hydra instantiates launchers only from the ``hydra_plugins`` namespace, so the
class lives here; its logic is ``eas.sweep.launcher``.
"""

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

from eas.sweep.launcher import SlurmSweepConf, SweepLauncher


class EasSlurmLauncher(SweepLauncher, SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher with eas's sweep bookkeeping."""


ConfigStore.instance().store(group="hydra/launcher", name="eas_slurm", node=SlurmSweepConf, provider="eas")
