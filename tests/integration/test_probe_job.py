"""experiment=probe through the real CLI on the embedded SmolLM2-135M, at a small size.

A trait probe on the built-in A/B sycophancy set (and on the CAA sample file when
../shared is there), and an error probe with its abstention curve on a multiple-choice set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EAS = str(Path(sys.executable).with_name("eas"))
CAA_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "samples" / "caa_ab" / \
    "sycophancy_test_ab.json"
SMALL = ["experiment=probe", "model=smollm2_135m", "layer=[6,14,22]", "experiment.n_random=200",
         "experiment.n_bootstrap=2000", "experiment.ccs_restarts=4", "experiment.ccs_epochs=300",
         "progress=false"]


def run_probe(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([EAS, *SMALL, *args], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def the_run(root: Path) -> Path:
    (run,) = sorted(p.parent for p in root.rglob("probe_results.parquet"))
    return run


@pytest.mark.integration
def test_trait_probe_on_builtin_sycophancy(tmp_path):
    r = run_probe("benchmark=eas_sycophancy", "max_sample_size=48")
    run = the_run(tmp_path / "outputs")
    s = json.loads((run / "summary.json").read_text())
    assert s["model"] == "smollm2_135m" and s["target"] == "trait" and s["n_items"] == 47
    assert s["best"]["layer"] in (6, 14, 22)
    df = pd.read_parquet(run / "probe_results.parquet")
    assert len(df[df["probe"] == "logreg"]) == 3 and len(df[df["probe"] == "ccs"]) == 3
    lr = df[df["probe"] == "logreg"]
    assert lr["p_random"].between(1 / 201, 1).all()
    assert ((lr["auroc_low"] <= lr["auroc"]) & (lr["auroc"] <= lr["auroc_high"])).all()
    rnd = df[df["probe"] == "random"]
    assert (rnd["random_best"] >= rnd["auroc_high"]).all() and (rnd["auroc_low"] >= 0.5).all()
    assert 0 < s["best"]["ccs"]["accuracy"] <= 1
    for name in ("auroc_by_layer.png", "roc_best_layer.png"):
        assert (run / "figures" / name).stat().st_size > 1000
    assert len(list((run / "probes").glob("probe_residual_last_L*.safetensors"))) == 3
    assert "logreg AUROC" in r.stdout and "CCS" in r.stdout


@pytest.mark.integration
@pytest.mark.skipif(not CAA_SAMPLE.exists(), reason=f"the CAA sample is not at {CAA_SAMPLE}")
def test_trait_probe_on_the_caa_sample_file(tmp_path):
    run_probe("benchmark=caa_sycophancy", f"benchmark.path={CAA_SAMPLE}")
    s = json.loads((the_run(tmp_path / "outputs") / "summary.json").read_text())
    assert s["benchmark"] == "caa_sycophancy" and s["n_items"] == 10 and s["n_rows"] == 20


@pytest.mark.integration
def test_error_probe_with_abstention_on_mc(tmp_path):
    r = run_probe("benchmark=eas_facts", "experiment.target=error", "max_sample_size=60")
    run = the_run(tmp_path / "outputs")
    s = json.loads((run / "summary.json").read_text())
    assert s["target"] == "error" and "ccs" not in s["best"]
    a = s["abstention"]
    assert a["n"] == 60 and a["threshold"] == 0.5
    assert 0 <= a["probe"]["area"] <= 1 and 0 <= a["max_prob"]["area"] <= 1
    curve = pd.read_csv(run / "accuracy_coverage.csv")
    assert set(curve["score"]) == {"probe", "max_prob"}
    assert (run / "figures" / "accuracy_coverage.png").stat().st_size > 1000
    assert 0 <= s["baseline"]["max_prob_auroc"] <= 1
    assert "area under accuracy-coverage" in r.stdout
