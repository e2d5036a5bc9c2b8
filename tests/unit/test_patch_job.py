"""experiment=patch and experiment=mediation on the tiny random model: outputs, what the numbers
mean (checked against direct computations), store reuse, the verdict rule, bad input."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import models, store
from eas.cli import CONF_DIR
from eas.config import ConfigError
from eas.core import patch as P
from eas.core.intervene import steer
from eas.experiments import causal
from eas.experiments import mediation as mediation_job
from eas.experiments import patch as patch_job
from eas.experiments.base import prepare


def _cfg(*overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["model=tiny_random", "progress=false", "experiment.max_pairs=5",
                                           *overrides])
    prepare(cfg)
    return cfg


def _job(kind, cfg, out):
    job = kind(cfg, out)
    job.load()
    return job


def test_patch_writes_everything_and_its_numbers_mean_what_they_say(tmp_path):
    cfg = _cfg("experiment=patch", "experiment.grid=layer_position", "experiment.positions=4",
               "experiment.attribution=true")
    s = patch_job.run(cfg, tmp_path / "run")
    assert s["n_pairs"] == 5 and s["layers"] == [0, 1, 2, 3] and s["verdict"]["verdict"] in ("PASS", "FAIL",
                                                                                               "INCONCLUSIVE")
    for f in ("results.parquet", "patches.parquet", "attribution.parquet", "verdict.json", "summary.json",
              "manifest.json", "figures/patch_layers.png", "figures/patch_heatmap.png"):
        assert (tmp_path / "run" / f).exists(), f
    df = pd.read_parquet(tmp_path / "run" / "patches.parquet")
    assert len(df) == 5 * (4 + 4 * 4)
    # the last position of the last block is the clean run's output: the whole gap is recovered
    last = df[(df.patch_position == "span") & (df.layer == 3)]
    assert last.logit_diff.to_numpy() == pytest.approx(last.source_logit_diff.to_numpy(), abs=1e-5)
    assert (last.changed == (last.source_pick != last.target_pick)).all()
    # one pair's row against a direct computation
    job = _job(patch_job.Patching, cfg, tmp_path / "again")
    pair = job.pairs()[0]
    want = P.patch_naive(job.lm.model, job.lm.sites, "residual", pair.target, [P.Patch(1, (len(pair.target) - 2,))],
                         job.readout(pair), pair.source)
    row = df[(df.item == pair.item) & (df.layer == 1) & (df.patch_position == "-2")]
    assert float(row.logit_diff.iloc[0]) == pytest.approx(float(want["logit_diff"][0]), abs=1e-5)
    assert -1 <= s["attribution"]["pearson_r"] <= 1


def test_patch_rerun_reads_the_store(tmp_path):
    cfg = _cfg("experiment=patch")
    first = patch_job.run(cfg, tmp_path / "a")
    records = {p: p.read_bytes() for p in (tmp_path / "store" / "patches").rglob("*") if p.is_file()}
    assert len(records) == 5
    second = patch_job.run(cfg, tmp_path / "b")
    assert {p: p.read_bytes() for p in (tmp_path / "store" / "patches").rglob("*") if p.is_file()} == records
    a, b = (pd.read_parquet(tmp_path / d / "results.parquet") for d in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)
    assert first["strongest_layer"] == second["strongest_layer"]
    # a record that does not fit its plan is not trusted: recomputed, the same numbers
    victim = next(iter(records))
    rec = store.read_json(victim)
    victim.write_text("{}")
    patch_job.run(cfg, tmp_path / "c")
    pd.testing.assert_frame_equal(a, pd.read_parquet(tmp_path / "c" / "results.parquet"))
    assert rec is not None


def test_swap_pairs_move_the_answer_to_the_next_letter(tmp_path):
    cfg = _cfg("experiment=patch")
    job = _job(patch_job.Patching, cfg, tmp_path / "run")
    items = job.items()
    for it, pair in zip(items, job.pairs()):
        twin = causal.swapped(it)
        assert twin.options[twin.label] == it.options[it.label] and twin.label == (it.label + 1) % len(it.options)
        assert (pair.good, pair.bad) == (it.label, twin.label) and len(pair.source) == len(pair.target)


def test_mediation_effects_equal_direct_computations(tmp_path):
    cfg = _cfg("experiment=mediation", "layer=[1,2]", "strength=[4.0]")
    s = mediation_job.run(cfg, tmp_path / "run")
    assert s["n_pairs"] == 5 and s["comparison"]["layer"] in (1, 2)
    assert (tmp_path / "run" / "figures" / "mediation.png").exists()
    df = pd.read_parquet(tmp_path / "run" / "effects.parquet")
    assert set(df.effect) == {"total", "indirect_direction", "indirect_site", "direct_direction", "steer_4"}
    assert df.vig.to_numpy() == pytest.approx(torch.expm1(torch.tensor(df.value.to_numpy())).numpy(), rel=1e-4)
    job = _job(mediation_job.Mediation, cfg, tmp_path / "again")
    vecs = job.vectors(job.unsteered()["train"])
    pair = job.pairs()[0]
    ro = job.readout(pair)
    model = job.lm.model
    with torch.no_grad():
        ld = {name: float(ro(model(input_ids=torch.tensor([row])).logits[:, -1])["logit_diff"][0])
              for name, row in (("target", pair.target), ("source", pair.source))}
        start = len(pair.target) - min(len(pair.target), len(pair.source))  # the aligned suffix
        with steer(job.lm.sites, 2, "residual", vecs[2], 4.0, position=start):
            steered = float(ro(model(input_ids=torch.tensor([pair.target])).logits[:, -1])["logit_diff"][0])
    mine = df[df.item == pair.item].set_index(["effect", "layer"]).value
    assert mine[("total", -1)] == pytest.approx(ld["source"] - ld["target"], abs=1e-5)
    assert mine[("steer_4", 2)] == pytest.approx(steered - ld["target"], abs=1e-5)


def test_verdict_rule():
    assert causal.threshold_verdict(0.55, 0.9, 0.5) == "PASS"
    assert causal.threshold_verdict(0.1, 0.45, 0.5) == "FAIL"
    assert causal.threshold_verdict(0.3, 0.7, 0.5) == "INCONCLUSIVE"
    assert causal.threshold_verdict(float("nan"), 0.7, 0.5) == "INCONCLUSIVE"


@pytest.mark.parametrize("overrides, match", [
    (["experiment=patch", "experiment.pairs=prompt"], "needs experiment.source_system"),
    (["experiment=patch", "experiment.pairs=prompt", "experiment.source_system=Agree.", "experiment.align=end",
      "experiment.span=differing"], "span=differing"),
    (["experiment=patch", "experiment.attribution=true"], "grid=layer_position"),
    (["experiment=patch", "experiment.grid=cube"], "experiment.grid='cube' is not allowed"),
    (["experiment=patch", "experiment.align=end"], "pairs=swap .* experiment.align=index"),
    (["experiment=mediation", "strength=[]"], "strength is empty"),
])
def test_bad_config_is_one_line_naming_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(*overrides)


def test_a_layer_beyond_the_model_fails_before_any_patch(tmp_path):
    cfg = _cfg("experiment=patch", "experiment.all_layers=false", "layer=[9]")
    with pytest.raises(models.ModelError if hasattr(models, "ModelError") else Exception, match="layer=9"):
        patch_job.run(cfg, tmp_path / "run")
    assert not (tmp_path / "store" / "patches").exists()


def test_named_token_roles_are_the_tokens_of_those_parts(tmp_path):
    cfg = _cfg("experiment=patch", "experiment.span=answer")
    job = _job(patch_job.Patching, cfg, tmp_path / "roles")
    pairs = job.pairs()
    tok = job.lm.tokenizer
    for pair, it in zip(pairs, job.items()):
        answer = tok.decode([pair.target[q] for q in pair.roles["answer"]])
        assert it.options[it.label].strip() in answer  # the clean answer's text, where the target shows it
        assert set(pair.roles["answer"]) <= set(pair.roles["options"])
        assert max(pair.roles["question"]) < min(pair.roles["options"])
        assert it.question.split()[0] in tok.decode([pair.target[q] for q in pair.roles["question"]])
        assert "subject" not in pair.roles  # eas_facts items name no subject
    s = patch_job.run(cfg, tmp_path / "run")
    df = pd.read_parquet(tmp_path / "run" / "patches.parquet")
    # the answer span at the last block: only the option's tokens change, the last position's output
    # is the target's own there (a patch at positions before the last cannot reach block 3's last output)
    last = df[(df.patch_position == "span") & (df.layer == 3)]
    assert last.logit_diff.to_numpy() == pytest.approx(last.target_logit_diff.to_numpy(), abs=1e-5)
    assert s["n_pairs"] == 5
    with pytest.raises(Exception, match="no subject tokens.*metadata"):
        patch_job.run(_cfg("experiment=patch", "experiment.span=subject"), tmp_path / "subject")
