"""The study's fan-out presets (paper_*, robust_*): every job each one sweeps composes and
validates, and model-relative layers resolve from model.n_layers."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from eas import config as config_mod
from eas import models
from eas.cli import CONF_DIR
from eas.core.sites import ModelError
from eas.experiments.base import prepare

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")
                 if p.stem.startswith(("paper_", "robust_")))


def _compose(overrides: list[str], hydra: bool = False):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def _dimensions(preset: str) -> dict[str, list[str]]:
    """The preset's sweep as Hydra's sweeper parses it: key -> the values it takes."""
    params = _compose([f"experiment={preset}"], hydra=True).hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {o.get_key_element(): [str(v) for v in o.sweep_iterator()] if o.is_sweep_override() else [o.value()]
            for o in parsed}


def test_the_presets_exist():
    assert {"paper_pas", "paper_sites", "paper_quantization", "robust_pooling", "robust_layers",
            "robust_seeds", "robust_models"} <= set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_value_a_preset_sweeps_composes_and_validates(preset):
    dims = _dimensions(preset)
    first = [f"{k}={v[0]}" for k, v in dims.items()]
    jobs = [first] + [[*(f for f in first if not f.startswith(f"{k}=")), f"{k}={v}"]
                      for k, values in dims.items() for v in values[1:]]
    for job in jobs:
        cfg = _compose([f"experiment={preset}", *job])
        prepare(cfg)  # a ConfigError names the field; nothing is loaded
        assert cfg.experiment.name == "steer"
        for k, v in (j.split("=", 1) for j in job):  # each job gets the value it was swept to
            got = {"model": "model.name", "benchmark": "benchmark.name", "method": "method.name",
                   "steer_target": "steer_target.site"}.get(k, k)
            if k not in ("protocol", "grid"):
                assert str(OmegaConf.select(cfg, got)) == v, (k, v)


def test_the_paper_presets_fan_out_the_papers_runs():
    pas = _dimensions("paper_pas")
    assert pas["seed"] == [str(s) for s in range(15)] and pas["protocol"] == ["pas_reference"]
    assert set(pas["method"]) == {"pasf", "ipas_all", "ipas_wrong_only"} and len(pas["benchmark"]) >= 10
    cfg = _compose(["experiment=paper_pas", "protocol=pas_reference", "grid=pas"])
    assert cfg.prompt.format == "pas_reference" and len(cfg.layer) == 10 and len(cfg.strength) == 14
    assert _dimensions("paper_sites")["steer_target"] == ["residual", "mlp", "self_attn", "post_attention_layernorm"]
    assert _dimensions("paper_quantization")["model.quantization"] == ["none", "8bit", "4bit"]
    assert _dimensions("robust_pooling")["method.position"] == ["last", "mean", "attention"]


@pytest.mark.parametrize("model,layers", [("smollm2_135m", [0, 15, 29]), ("gemma3_270m", [0, 9, 17]),
                                          ("pythia_70m", [0, 3, 5]), ("tiny_random", [0, 2, 3])])
def test_robust_layers_are_the_first_middle_and_last_block(model, layers):
    assert list(_compose(["experiment=robust_layers", f"model={model}"]).layer) == layers


def test_relative_layers_need_the_models_depth():
    cfg = _compose(["experiment=robust_layers", "model.n_layers=null"])
    with pytest.raises(Exception, match="model.n_layers is not set"):
        list(cfg.layer)
    assert config_mod.depths(1) == [0]


def test_a_wrong_depth_is_an_error_naming_the_field():
    cfg = _compose(["model=tiny_random", "model.n_layers=5"])
    with pytest.raises(ModelError, match=r"model.n_layers=5 but tiny_random has 4 blocks: set model.n_layers=4"):
        models.load(cfg.model)
    assert models.load(_compose(["model=tiny_random"]).model).sites.n_layers == 4
