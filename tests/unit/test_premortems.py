"""The pre-mortems: the verdict rule, each preset's pm<N>.json / pm<N>_summary.md against its
summary.json (tiny random model), and eas-plan's decision table on PASS / FAIL / INCONCLUSIVE."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.experiments.base import prepare
from eas.experiments.verdicts import verdict
from eas.report import plan


def _run(out, *overrides: str) -> dict:
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["model=tiny_random", "progress=false", *overrides])
    return prepare(cfg).run(cfg, out)


def _rule(low: float, high: float, threshold: float) -> str:
    if not (math.isfinite(low) and math.isfinite(high)):
        return "INCONCLUSIVE"
    return "PASS" if low >= threshold else "FAIL" if high < threshold else "INCONCLUSIVE"


def test_verdict_on_the_three_interval_cases():
    assert verdict(0.7, 0.6, 0.8, 0.5) == "PASS"
    assert verdict(0.5, 0.5, 0.8, 0.5) == "PASS"  # at the threshold
    assert verdict(0.3, 0.2, 0.4, 0.5) == "FAIL"
    assert verdict(0.5, 0.4, 0.6, 0.5) == "INCONCLUSIVE"
    assert verdict(float("nan"), float("nan"), float("nan"), 0.5) == "INCONCLUSIVE"


def _written(run, n: int) -> dict:
    rec = json.loads((run / f"pm{n}.json").read_text())
    md = (run / f"pm{n}_summary.md").read_text()
    assert rec["premortem"] == n and rec["verdict"] in md and rec["metric"] in md and f"{rec['threshold']:g}" in md
    assert rec["command"] == f"eas experiment=premortem{n}" and rec["command"] in md and rec["seconds"] > 0
    assert rec["date"][:4] in md
    return rec


def test_premortem3_writes_its_verdict_from_the_patch_numbers(tmp_path):
    s = _run(tmp_path / "pm3", "experiment=premortem3", "experiment.max_pairs=6")
    rec = _written(tmp_path / "pm3", 3)
    b = s["strongest_layer"]
    assert rec["value"] == pytest.approx(b["change_rate"]) and rec["low"] == pytest.approx(b["change_low"])
    assert rec["high"] == pytest.approx(b["change_high"]) and rec["threshold"] == 0.5
    assert rec["verdict"] == s["verdict"]["verdict"] == _rule(b["change_low"], b["change_high"], 0.5)


def test_premortem2_writes_the_error_probe_accuracy(tmp_path):
    s = _run(tmp_path / "pm2", "experiment=premortem2", "experiment.n_random=50", "experiment.n_bootstrap=200",
             "experiment.c_grid=[0.1,1.0]", "max_sample_size=30", "layer=[1,2]")
    rec = _written(tmp_path / "pm2", 2)
    b = s["best"]["logreg"]
    assert s["target"] == "error" and rec["threshold"] == 0.55
    # balanced accuracy of the best probe's out-of-fold scores, recomputed from probe_scores.parquet
    sc = pd.read_parquet(tmp_path / "pm2" / "probe_scores.parquet")
    at = sc[(sc.layer == b.get("layer", s["best"]["layer"])) & (sc.pooling == s["best"]["pooling"])]
    y, hit = at.label.to_numpy() == 1, at.logreg.to_numpy() > 0
    want = 0.5 * ((hit & y).sum() / y.sum() + (~hit & ~y).sum() / (~y).sum())
    assert rec["value"] == pytest.approx(want) and rec["low"] <= rec["value"] <= rec["high"]
    assert rec["verdict"] == _rule(rec["low"], rec["high"], 0.55)
    assert rec["details"]["accuracy"] == pytest.approx(b["accuracy"])
    assert rec["details"]["model_accuracy"] == pytest.approx(s["baseline"]["accuracy"])


def test_premortem1_writes_the_projection_correlation(tmp_path):
    s = _run(tmp_path / "pm1", "experiment=premortem1", "experiment.models=[tiny_random]", "experiment.max_texts=16",
             "experiment.n_bootstrap=100", "experiment.n_permutations=20")
    rec = _written(tmp_path / "pm1", 1)
    (pair,) = s["pairs"]
    b = pair["best"]
    assert (rec["value"], rec["low"], rec["high"]) == pytest.approx((b["correlation"], b["low"], b["high"]))
    assert rec["threshold"] == 0.3 and rec["verdict"] == _rule(b["low"], b["high"], 0.3)


def _pm(folder, n: int, v: str, date: str = "2026-12-04T05:00:00+00:00", **kw) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"premortem": n, "date": date, "metric": "m", "value": 0.5, "low": 0.4, "high": 0.6, "threshold": 0.5,
           "verdict": v, "model": "smollm2_135m", "benchmark": "eas_facts", **kw}
    (folder / f"pm{n}.json").write_text(json.dumps(rec))


def test_eas_plan_prescribes_the_phases_of_each_verdict(tmp_path, capsys):
    runs = tmp_path / "runs"
    _pm(runs / "a", 1, "FAIL", date="2026-12-01T00:00:00+00:00")  # older: the newest pm1 wins
    _pm(runs / "b", 1, "PASS", model="smollm2_135m+gemma3_270m")
    _pm(runs / "c", 2, "FAIL")
    _pm(runs / "d", 3, "INCONCLUSIVE")
    assert plan.main([str(runs)]) == 0
    out = capsys.readouterr().out
    assert "| PM1 " in out and "PASS" in out and "FAIL" in out and "INCONCLUSIVE" in out
    assert "eas experiment=similarity experiment.transfer=true" in out
    assert "experiment.models=[smollm2_135m,gemma3_270m]" in out
    assert "skipped: the error probe's balanced accuracy lies below the threshold" in out
    assert "eas experiment=premortem3 experiment.max_pairs=96 model=smollm2_135m benchmark=eas_facts" in out
    assert "cross-model transfer" in out and "eas experiment=mediation" not in out


def test_eas_plan_names_a_missing_premortem_and_exits_2_on_none(tmp_path, capsys):
    _pm(tmp_path / "runs", 3, "PASS")
    assert plan.main([str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "eas experiment=premortem1" in out and "eas experiment=premortem2" in out
    assert "eas experiment=patch experiment.grid=layer_position" in out and "eas experiment=mediation" in out
    (tmp_path / "empty").mkdir()
    assert plan.main([str(tmp_path / "empty")]) == 2
    assert "no pm1.json" in capsys.readouterr().err
    assert plan.main([str(tmp_path / "nowhere")]) == 2
