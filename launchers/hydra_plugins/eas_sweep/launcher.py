"""eas's Hydra launcher plugin: ``hydra/launcher=local|slurm|vast`` (``conf/hydra/launcher``).

Hydra instantiates launchers only from the ``hydra_plugins`` namespace, so the class
lives here; its logic is ``eas.sweep.launcher``, and what differs between launchers is
the backend module each preset names (``eas.sweep.backend``). The ``Conf`` of the backend
of every preset ``<name>.yaml`` is registered as ``hydra/launcher=eas_<name>``, the base
the preset extends: a new launcher is its backend module and its preset, nothing here.
"""

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

from eas.sweep import backend
from eas.sweep.launcher import SweepLauncher


class EasLauncher(SweepLauncher, BaseSubmititLauncher):
    """hydra-submitit-launcher's launcher (it runs each job) with eas's sweep bookkeeping
    over the backend ``hydra.launcher.backend`` names."""


for _preset, _backend in backend.presets().items():
    ConfigStore.instance().store(group="hydra/launcher", name=f"eas_{_preset}",
                                 node=backend.load_module(_backend, f"conf/hydra/launcher/{_preset}.yaml: backend").Conf,
                                 provider="eas")
