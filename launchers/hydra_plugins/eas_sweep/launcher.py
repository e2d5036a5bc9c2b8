"""eas's Hydra launcher plugin: ``hydra/launcher=local|slurm|vast`` (``conf/hydra/launcher``).

Hydra instantiates launchers only from the ``hydra_plugins`` namespace, so the class
lives here; its logic is ``eas.sweep.launcher``, and what differs between backends is
``eas.sweep.backends.<name>``. Every backend's ``Conf`` is registered as
``hydra/launcher=eas_<name>``, the base its preset yaml extends.
"""

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

from eas.sweep import backend
from eas.sweep.launcher import SweepLauncher


class EasLauncher(SweepLauncher, BaseSubmititLauncher):
    """hydra-submitit-launcher's launcher (it runs each job) with eas's sweep bookkeeping
    over the backend ``hydra.launcher.backend`` names."""


for _name in backend.builtin():
    ConfigStore.instance().store(group="hydra/launcher", name=f"eas_{_name}", node=backend.load_module(_name).Conf,
                                 provider="eas")
