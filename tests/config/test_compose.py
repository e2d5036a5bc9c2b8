"""Every option of every group composes and validates; bad input fails early and clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.experiments.base import prepare

GROUPS = ["model", "benchmark", "method", "steer_target", "experiment", "grid"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(overrides: list[str]):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = _compose([f"{group}={option}"])
    prepare(cfg)
    if group not in ("grid",):
        assert cfg[group] is not None


def test_groups_are_not_empty():
    for g in GROUPS:
        assert options(g), g


def test_layer_and_strength_take_numbers_and_lists():
    cfg = _compose(["layer=8", "strength=0.5"])
    assert config_mod.as_number_list("layer", cfg.layer, int) == [8]
    cfg = _compose(["layer=[4,8,12]", "strength=[0.5,1,4,8]"])
    assert config_mod.as_number_list("layer", cfg.layer, int) == [4, 8, 12]
    assert config_mod.as_number_list("strength", cfg.strength, float) == [0.5, 1.0, 4.0, 8.0]
    cfg = _compose(["model=tiny_random"])
    assert list(cfg.layer) == list(cfg.model.layers)


@pytest.mark.parametrize("overrides,match", [
    (["strength=abc"], "strength=.*'abc' is not a number"),
    (["layer=1.5"], "layer=.*not an integer"),
    (["layer=[]"], "layer is empty"),
    (["method.position=first"], "method.position='first' is not allowed; choose one of: last, mid, mean"),
    (["model.dtype=float8"], "model.dtype='float8'"),
    (["n_train_proportion=0.8"], "split proportions sum to"),
])
def test_bad_values_name_the_field(overrides, match):
    with pytest.raises(config_mod.ConfigError, match=match):
        prepare(_compose(overrides))


def eas(*args: str, env=None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("eas")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env=env)


def test_cli_help_and_cfg():
    r = eas("--help")
    assert r.returncode == 0
    for g in ("model", "benchmark", "method", "steer_target", "experiment"):
        assert f"{g}:" in r.stdout or g in r.stdout
    r = eas("--cfg", "job", "model=gemma3_270m", "layer=[4,8]")
    assert r.returncode == 0 and "gemma3_270m" in r.stdout


@pytest.mark.parametrize("args,code,match", [
    (["strength=abc"], 2, "strength="),
    (["lyer=3"], 1, "lyer"),
    (["model=nonexistent"], 1, "smollm2_135m"),
    (["benchmark=openbookqa", "benchmark.path=/no/such/file.jsonl"], 2, "benchmark.path"),
    (["model=tiny_random", "layer=9"], 2, "layer=9 is out of range"),
    (["model=tiny_random", "model.quantization=4bit"], 2, "needs a CUDA GPU"),
])
def test_cli_bad_input_exits_with_a_clear_message(args, code, match):
    r = eas(*args, "progress=false")
    assert r.returncode == code, r.stderr[-2000:]
    assert match in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
