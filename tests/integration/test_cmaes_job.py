"""experiment=cmaes end to end on the embedded SmolLM2-135M through the ``eas`` CLI:
a small budget runs, the fitness curve does not go down, and a run killed (SIGKILL) after
its second generation resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
EAS = REPO / ".venv" / "bin" / "eas"
# 40 items (16 train / 12 val / 12 test) keep the three runs near 90 s on two CPU cores
ARGS = ["experiment=cmaes", "method=mean_diff", "max_sample_size=40", "layer=14", "strength=[4,8]",
        "experiment.k=16", "experiment.popsize=8", "experiment.generations=4", "progress=false"]

pytestmark = pytest.mark.integration


def _env(root: Path) -> dict:
    return {**os.environ, "EAS_OUTPUTS": str(root / "outputs"), "EAS_STORE": str(root / "store")}


def _run(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(EAS), *ARGS], env=_env(root), capture_output=True, text=True, timeout=600,
                          check=False)


def _run_dir(root: Path) -> Path:
    (summary,) = (root / "outputs").rglob("summary.json")
    return summary.parent


def _leaves(d: dict, prefix: str = "") -> dict[str, float]:
    """A nested summary block as ``{"val.accuracy": x, ...}``."""
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _history(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "cmaes_history.parquet").drop(columns="seconds")


def test_cmaes_runs_and_resumes_after_sigkill(tmp_path):
    if not EAS.exists():
        pytest.skip(f"{EAS} not found: install eas into .venv")
    a = tmp_path / "a"
    done = _run(a)
    assert done.returncode == 0, done.stderr[-3000:]
    run_a = _run_dir(a)
    s = json.loads((run_a / "summary.json").read_text())
    assert s["experiment"] == "cmaes" and s["generations"] == 4 and s["k"] == 16
    assert s["fitness_curve"]["end"] >= s["fitness_curve"]["start"]
    assert 0 <= s["refined"]["test"]["accuracy"] <= 1 and s["n"]["test"] == 12
    for f in ("figures/fitness_curve.png", "vectors/refined_residual_L14.safetensors", "manifest.json",
              "components.csv"):
        assert (run_a / f).exists(), f

    # the same config in a store with everything but the optimiser's checkpoints, killed mid-run
    b = tmp_path / "b"
    shutil.copytree(a / "store", b / "store", ignore=shutil.ignore_patterns("cmaes"))
    proc = subprocess.Popen([str(EAS), *ARGS], env=_env(b), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while len(list((b / "store").glob("cmaes/*/*.json"))) < 2 and proc.poll() is None:
        assert time.monotonic() < deadline, "no second checkpoint within 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not list((b / "outputs").rglob("summary.json"))

    resumed = _run(b)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from generation" in resumed.stderr + resumed.stdout
    run_b = _run_dir(b)
    pd.testing.assert_frame_equal(_history(run_b), _history(run_a))
    sb = json.loads((run_b / "summary.json").read_text())
    assert sb["resumed_from"] >= 2
    # the search is the same to the bit (history above); scores recomputed in another process agree
    # to float32 rounding (BLAS sums may round differently with other memory alignment)
    assert _leaves(sb["refined"]) == pytest.approx(_leaves(s["refined"]), rel=1e-6, abs=1e-7)
    assert _leaves(sb["cosine"]) == pytest.approx(_leaves(s["cosine"]), rel=1e-6, abs=1e-7)
