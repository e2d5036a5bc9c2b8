"""The ``hydra/launcher=vast`` preset composes, validates, and reaches the Vast executor."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from eas import config as config_mod
from eas.cli import CONF_DIR


def _compose(overrides: list[str]):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=True)


def test_vast_preset_composes_with_overrides():
    cfg = _compose(["hydra/launcher=vast", "hydra.launcher.spot=true", "hydra.launcher.max_dph=0.3",
                    "hydra.launcher.gpu_name=A100 SXM4", "hydra.launcher.instances=4"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"] == "hydra_plugins.eas_sweep.launcher.EasLauncher"
    assert launcher["backend"] == "eas.vast.backend"
    assert launcher["spot"] is True and launcher["max_dph"] == 0.3 and launcher["gpu_name"] == "A100 SXM4"
    assert launcher["instances"] == 4 and launcher["cells_per_job"] == 9 and launcher["disk_gb"] == 40


def test_vast_preset_rejects_a_bad_value():
    import pytest

    with pytest.raises(Exception, match="instances"):
        _compose(["hydra/launcher=vast", "hydra.launcher.instances=many"])


def test_submitit_finds_the_vast_executor_plugin():
    from submitit.core import plugins

    from eas.vast.executor import VastExecutor, VastJobEnvironment

    assert plugins.get_executors()["vast"] is VastExecutor
    assert isinstance(plugins.get_job_environments()["vast"], VastJobEnvironment)
