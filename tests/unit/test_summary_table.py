"""eas-report's headline table (headline_table.md/.csv, statistics.json): one headline row per run, its
numbers those of the run's summary.json; a kind it does not know gets metric n/a, never a crash."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.experiments.base import prepare
from eas.report.cli import main as report_main
from eas.report.summary import HEADLINES, headline


def _run(out, *overrides: str) -> dict:
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["model=tiny_random", "progress=false", "max_sample_size=30",
                                           "layer=[1,2]", *overrides])
    return prepare(cfg).run(cfg, out)


def test_headline_rows_equal_the_runs_summaries(tmp_path):
    runs = tmp_path / "runs"
    steer = _run(runs / "steer", "strength=[1,4]")
    probe = _run(runs / "probe", "experiment=probe", "experiment.target=error", "experiment.n_random=50",
                 "experiment.n_bootstrap=200", "experiment.c_grid=[0.1,1.0]")
    toy = runs / "toy"
    toy.mkdir()
    (toy / "manifest.json").write_text(json.dumps({"experiment": "toy", "config": {"experiment": {"name": "toy"}}}))
    (toy / "summary.json").write_text(json.dumps({"experiment": "toy", "score": 1.0}))
    out = tmp_path / "report"
    assert report_main([str(runs), "--out", str(out)]) == 0
    table = pd.read_csv(out / "headline_table.csv").set_index("experiment")
    assert len(table) == 3

    s, t = table.loc["steer"], steer["test"]
    assert (s.value, s.low, s.high, s.p_value, s.n) == pytest.approx(
        (t["delta"], t["delta_low"], t["delta_high"], t["mcnemar_p"], t["n"]))
    p, b = table.loc["probe"], probe["best"]["logreg"]
    assert (p.value, p.low, p.high, p.p_value) == pytest.approx(
        (b["auroc"], b["auroc_low"], b["auroc_high"], b["p_random_holm"]))
    assert f"L{probe['best']['layer']}" in p.metric
    stats = {r["experiment"]: r for r in json.loads((out / "statistics.json").read_text())["runs"]}
    assert set(stats) == {"steer", "probe", "toy"}
    assert stats["toy"]["metric"] == "n/a" and stats["toy"]["value"] is None  # no crash, no number
    assert stats["steer"]["value"] == pytest.approx(t["delta"]) and stats["steer"]["cohens_d"] is None
    md = (out / "headline_table.md").read_text()
    assert "| Experiment" in md and "95% CI" in md and "Cohen's d" in md
    assert not (out / "summary_table.md").read_text().startswith("# eas report: every run")  # steer's stays steer's


def test_every_kind_reads_its_headline_and_a_bad_summary_is_n_a():
    summaries = {
        "traits": {"comparisons": [
            {"axis": "variant", "level": "a", "reference": "b", "trait": "t", "layer": 2, "n": 10, "diff": 0.1,
             "p": 0.2, "cohens_d": 0.3, "auroc": 0.6, "auroc_low": 0.4, "auroc_high": 0.8},
            {"axis": "variant", "level": "c", "reference": "b", "trait": "t", "layer": 3, "n": 10, "diff": -0.5,
             "p": 0.01, "cohens_d": -1.2, "auroc": 0.2, "auroc_low": 0.1, "auroc_high": 0.3}]},
        "generate": {"elbows": [{"condition": "steered", "group": "all", "layer": 2, "elbow_strength": 4.0}],
                     "curve": [{"condition": "steered", "group": "all", "layer": 2, "strength": s, "n": 20,
                                "success_rate": r, "success_low": r - 0.1, "success_high": r + 0.1,
                                "p_vs_unsteered": 0.5} for s, r in ((0.0, 0.1), (4.0, 0.4), (8.0, 0.9))]},
        "finetune": {"sft": {"before": {"val": 0.3, "test": 0.25}, "after": {"val": 0.5, "test": 0.55},
                             "n": {"val": 10, "test": 20}}},
        "mediation": {"total": {"value": 1.0, "low": 0.5, "high": 1.5, "n": 8}, "comparison": None},
        "lens": {"n_items": 5, "final_layer": {"prob_mean": 0.4, "prob_low": 0.3, "prob_high": 0.5, "top1_rate": 0.2}},
    }
    assert set(HEADLINES) >= set(summaries)
    tr = headline("traits", summaries["traits"])
    assert (tr.value, tr.cohens_d, tr.p_value) == (0.2, -1.2, 0.01)  # the strongest |d|, negative as it is
    g = headline("generate", summaries["generate"])
    assert g.value == 0.4 and "elbow" in g.metric
    f = headline("finetune", summaries["finetune"])
    assert f.value == 0.55 and "before 0.250" in f.note
    assert headline("mediation", summaries["mediation"]).value == 1.0
    assert headline("lens", summaries["lens"]).value == 0.4
    assert headline("steer", {"best": None, "test": None}).metric == "test accuracy delta"
    assert headline("probe", {"nothing": 1}).metric == "n/a"
    assert headline("cmaes", {}).metric == "n/a"
