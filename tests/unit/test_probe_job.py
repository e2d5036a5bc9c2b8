"""experiment=probe on the tiny random model: outputs, store reuse, the split protocol,
the lexical ablation and probe vectors for steering; plus the config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.data.schema import MCItem
from eas.experiments import probe as probe_job
from eas.experiments.base import prepare

FAST = ["model=tiny_random", "experiment=probe", "progress=false", "experiment.n_random=50",
        "experiment.n_bootstrap=200", "experiment.c_grid=[0.1,1.0]", "experiment.ccs_restarts=2",
        "experiment.ccs_epochs=30", "max_sample_size=30", "layer=[1,2]"]


def _cfg(*overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*FAST, *overrides])
    prepare(cfg)
    return cfg


def _store_files(tmp_path: Path) -> set[Path]:
    return {p for p in (tmp_path / "store").rglob("*") if p.is_file()}


def test_trait_probe_writes_everything_and_reruns_from_the_store(tmp_path):
    cfg = _cfg("benchmark=eas_sycophancy", "experiment.lexical_words=[I,believe]")
    s = probe_job.run(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert s["target"] == "trait" and s["evaluation"] == "5-fold out-of-fold"
    assert s["n_items"] == 30 and s["n_rows"] == 60 and s["n_pos"] == 30
    assert s["best"]["layer"] in (1, 2) and "ccs" in s["best"] and "lexical" in s
    assert 0 <= s["baseline"]["letter_auroc"] <= 1
    df = pd.read_parquet(run / "probe_results.parquet")
    assert set(df["probe"]) == {"logreg", "mean_diff", "random", "ccs", "logreg_lexical"}
    assert len(df) == 2 * 5
    sup = df[df["probe"].isin(["logreg", "mean_diff"])]
    assert ((sup["auroc_low"] <= sup["auroc"]) & (sup["auroc"] <= sup["auroc_high"])).all()
    assert sup["p_random"].between(1 / 51, 1).all()
    scores = pd.read_parquet(run / "probe_scores.parquet")
    assert len(scores) == 2 * 60 and not scores["logreg"].isna().any()
    for name in ("auroc_by_layer.png", "roc_best_layer.png"):
        assert (run / "figures" / name).stat().st_size > 1000
    assert sorted(p.name for p in (run / "probes").iterdir()) == [
        "probe_residual_last_L1.safetensors", "probe_residual_last_L2.safetensors"]
    table = (run / "summary_table.md").read_text()
    assert "| experiment" in table and "## By layer" in table and "CCS" in table
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["experiment"]["name"] == "probe"

    before = _store_files(tmp_path)
    again = probe_job.run(cfg, tmp_path / "run2")
    assert _store_files(tmp_path) == before  # nothing recomputed
    assert again["best"] == s["best"]


def test_error_probe_on_the_split_with_abstention(tmp_path):
    cfg = _cfg("benchmark=eas_facts", "experiment.folds=0", "max_sample_size=60", "experiment.abstain_threshold=0.1")
    s = probe_job.run(cfg, tmp_path / "run")
    assert s["target"] == "error" and s["evaluation"].startswith("train -> val")
    assert s["best"]["selected_on"] == "val" and "ccs" not in s["best"]
    a = s["abstention"]
    assert a["n"] == 18 and 0 <= a["probe"]["coverage"] <= 1 and a["threshold"] == 0.1
    curve = pd.read_csv(tmp_path / "run" / "accuracy_coverage.csv")
    for _, c in curve.groupby("score"):
        assert c["coverage"].is_monotonic_increasing and c["coverage"].iloc[-1] == 1.0
    assert (tmp_path / "run" / "figures" / "accuracy_coverage.png").exists()
    assert "max_prob_auroc" in s["baseline"]


def test_probe_vectors_feed_the_steer_job(tmp_path):
    cfg = _cfg("benchmark=eas_sycophancy", "experiment.ccs_restarts=0", "layer=[2]")
    probe_job.run(cfg, tmp_path / "run")
    from eas.methods.base import Expected, VectorError, read_vectors

    want = Expected("probe", "residual", "last", [2], "tiny_random", 64)
    vecs = read_vectors(tmp_path / "run", want)
    assert set(vecs) == {2} and vecs[2].shape == (64,)
    with pytest.raises(VectorError, match=r"no vector for layer=\[1\]"):
        read_vectors(tmp_path / "run", Expected("probe", "residual", "last", [1, 2], "tiny_random", 64))
    with pytest.raises(VectorError, match="made at model 'tiny_random'"):
        read_vectors(tmp_path / "run", Expected("probe", "residual", "last", [2], "other", 64))
    with pytest.raises(VectorError, match="no probe vector at steer_target=mlp"):
        read_vectors(tmp_path / "run", Expected("probe", "mlp", "last", [2], "tiny_random", 64))
    # the direction is the logistic probe's, at the mean difference's scale
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "run" / "probes" / "probe_residual_last_L2.safetensors"))
    cos = torch.nn.functional.cosine_similarity(w["vector"], w["logreg_weight"], dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-5)
    assert float(w["vector"].norm()) == pytest.approx(float(w["mean_diff_weight"].norm()), rel=1e-5)


def test_strip_words_removes_whole_words_only():
    item = MCItem("x", "I believe I am right. Believers agree.", ("I agree", "No"), 0, context="I think")
    out = probe_job.strip_words(item, ["I", "believe"])
    assert out.question == "am right. Believers agree." and out.options == ("agree", "No")
    assert out.context == "think" and out.label == 0
    assert probe_job.strip_words(item, []) is item


@pytest.mark.parametrize("override,match", [
    ("experiment.target=truth", "experiment.target='truth' is not allowed"),
    ("experiment.folds=1", "experiment.folds=1"),
    ("experiment.pooling=first", "experiment.pooling='first'"),
    ("experiment.pooling=[last,attn]", "experiment.pooling='attn'"),
    ("experiment.n_random=0", "experiment.n_random=0"),
    ("experiment.abstain_threshold=1.5", "experiment.abstain_threshold=1.5"),
    ("experiment.c_grid=[0,1]", "experiment.c_grid"),
])
def test_bad_probe_config_is_named(override, match):
    with pytest.raises(config_mod.ConfigError, match=match):
        _cfg(override)


def test_too_few_items_for_the_folds_is_a_user_error(tmp_path):
    from eas.methods.base import TooFewExamples

    cfg = _cfg("benchmark=eas_facts", "max_sample_size=12", "experiment.folds=5")
    with pytest.raises(TooFewExamples, match="experiment.folds=5"):
        probe_job.run(cfg, tmp_path / "run")


def test_poolings():
    assert probe_job.poolings(_cfg()) == ["last"]
    assert probe_job.poolings(_cfg("method.position=mean")) == ["mean"]
    assert probe_job.poolings(_cfg("experiment.pooling=[last,mid]")) == ["last", "mid"]


def test_eas_report_merges_probe_runs_with_statistics_across_seeds(tmp_path, capsys):
    from eas.report import cli

    for seed in (0, 1):
        probe_job.run(_cfg("benchmark=eas_sycophancy", f"seed={seed}"), tmp_path / "runs" / f"seed{seed}")
    assert cli.main([str(tmp_path / "runs")]) == 0
    out = tmp_path / "runs" / "report"
    md = (out / "probe_table.md").read_text()
    assert "2 probe run(s)" in md and "## Across seeds" in md
    assert "(2 seeds)" in md and "logreg AUROC" in md
    merged = pd.read_parquet(out / "merged_probe_results.parquet")
    assert set(merged["seed"]) == {0, 1} and merged["run_dir"].nunique() == 2
    assert len(merged) == sum(len(pd.read_parquet(d / "probe_results.parquet"))
                              for d in (tmp_path / "runs").glob("seed*"))
    assert not (out / "summary_table.md").exists()  # no steering run: no steering table
    assert "# eas probe report" in capsys.readouterr().out

    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty")]) == 2
    assert "probe_results.parquet" in capsys.readouterr().err


def test_attention_weighted_pooling_is_a_probe_pooling_of_its_own(tmp_path):
    cfg = _cfg("benchmark=eas_sycophancy", "experiment.pooling=[last,attention]")
    s = probe_job.run(cfg, tmp_path / "run")
    df = pd.read_parquet(tmp_path / "run" / "probe_results.parquet")
    assert set(df["pooling"]) == {"last", "attention"}
    a, last = (df[(df["pooling"] == p) & (df["probe"] == "logreg")].set_index("layer")["auroc"]
               for p in ("attention", "last"))
    assert a.between(0, 1).all() and not a.equals(last)  # its own activations, its own probes
    assert s["best"]["pooling"] in ("last", "attention")
