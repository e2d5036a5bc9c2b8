"""The SLURM launcher preset and the resources group compose, and resources reach sbatch."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "resources").glob("*.yaml")))
def test_every_resources_preset_reaches_the_slurm_launcher(option):
    cfg = _compose(["hydra/launcher=slurm", f"resources={option}"])
    config_mod.validate(cfg)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.eas_sweep.launcher.EasLauncher"
    assert launcher["backend"] == "slurm"
    for key in ("cpus_per_task", "gpus_per_node", "mem_gb", "timeout_min", "partition"):
        assert launcher[key] == cfg.resources[key], key


def test_resources_and_site_settings_override_field_by_field():
    cfg = _compose(["hydra/launcher=slurm", "resources=gpu1", "resources.timeout_min=7",
                    "resources.partition=a100", "hydra.launcher.account=proj", "hydra.launcher.qos=high",
                    "hydra.launcher.array_parallelism=4", "hydra.launcher.cells_per_job=9",
                    "hydra.launcher.setup=[module load cuda]"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["timeout_min"], launcher["gpus_per_node"], launcher["partition"]) == (7, 1, "a100")
    assert (launcher["account"], launcher["qos"], launcher["array_parallelism"]) == ("proj", "high", 4)
    assert launcher["cells_per_job"] == 9 and launcher["setup"] == ["module load cuda"]
    assert launcher["detach"] is False and launcher["max_num_timeout"] >= 1  # timeouts requeue


def test_typos_in_resources_and_launcher_fail_at_compose_time():
    with pytest.raises(Exception, match="typo"):
        _compose(["resources.typo=1"])
    with pytest.raises(Exception, match="detatch"):
        _compose(["hydra/launcher=slurm", "hydra.launcher.detatch=true"])
    with pytest.raises(Exception, match="cells_per_job"):
        _compose(["hydra/launcher=slurm", "hydra.launcher.cells_per_job=many"])


def test_the_sweep_callback_is_configured():
    cfg = _compose([])
    assert cfg.hydra.callbacks.sweep._target_ == "eas.sweep.callback.SweepCallback"
    assert cfg.resources.name == "cpu"
