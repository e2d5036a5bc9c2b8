"""eas's Vast.ai launcher plugin (``hydra/launcher=vast``); its logic is ``eas.vast.launcher``."""

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

from eas.vast.launcher import VastSweepConf, VastSweepLauncher


class EasVastLauncher(VastSweepLauncher, BaseSubmititLauncher):
    """hydra-submitit-launcher's launcher with eas's sweep bookkeeping, on Vast.ai instances."""


ConfigStore.instance().store(group="hydra/launcher", name="eas_vast", node=VastSweepConf, provider="eas")
