"""One module plus one yaml per extension point: a toy method, a toy benchmark format and a
toy experiment kind that live in tests/extensions run from the ``eas`` command line, with
no file of the package edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
EXT = REPO / "tests" / "extensions"
EAS = Path(sys.executable).parent / "eas"


def _items(path: Path, n: int = 24) -> Path:
    lines = [f"What is {i} plus {i % 3}? | {i + i % 3}; {i + i % 3 + 1}; {i * 2 + 7} | {0 if i % 2 else 1}"
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _eas(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "EAS_STORE": str(tmp_path / "store"), "EAS_OUTPUTS": str(tmp_path / "out")}
    return subprocess.run([str(EAS), f"hydra.searchpath=[file://{EXT / 'conf'}]", "model=tiny_random",
                           "progress=false", *overrides], check=False, capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)


def _run_dir(tmp_path: Path) -> Path:
    (summary,) = (tmp_path / "out").glob("runs/*/*/summary.json")
    return summary.parent


@pytest.mark.skipif(not EAS.exists(), reason="the eas console script is not installed in this environment")
def test_toy_method_format_and_experiment_run_from_the_command_line(tmp_path):
    data = _items(tmp_path / "toy.txt")
    r = _eas(tmp_path, "benchmark=toy_lines", f"benchmark.path={data}", "method=toy_median",
             "experiment=toy_norms", "layer=[1,2]", "experiment.norm_ord=1")
    assert r.returncode == 0, r.stderr[-2000:]
    run = _run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["experiment"] == "toy_norms" and summary["benchmark"] == "toy_lines"
    norms = pd.read_parquet(run / "norms.parquet")
    assert list(norms["layer"]) == [1, 2] and (norms["norm"] > 0).all()
    assert set(norms["method"]) == {"toy_median"}
    assert "toy: toy_median vector norms" in r.stdout
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["experiment"] == "toy_norms"
    assert manifest["config"]["experiment"]["module"] == "tests.extensions.toy_experiment"


@pytest.mark.skipif(not EAS.exists(), reason="the eas console script is not installed in this environment")
def test_toy_method_steers_in_the_steer_experiment(tmp_path):
    data = _items(tmp_path / "toy.txt")
    r = _eas(tmp_path, "benchmark=toy_lines", f"benchmark.path={data}", "method=toy_median", "layer=[1]",
             "strength=[1,4]")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["method"] == "toy_median" and summary["best"]["cell"].startswith("toy_median/L1_")
    assert summary["test"]["n"] > 0


@pytest.mark.skipif(not EAS.exists(), reason="the eas console script is not installed in this environment")
def test_a_toy_kinds_own_fields_are_typed_and_checked(tmp_path):
    data = _items(tmp_path / "toy.txt")
    common = ("benchmark=toy_lines", f"benchmark.path={data}", "experiment=toy_norms")
    r = _eas(tmp_path, *common, "experiment.norm_ord=-1")
    assert r.returncode == 2 and "experiment.norm_ord=-1.0: must be > 0" in r.stderr
    r = _eas(tmp_path, *common, "experiment.norm_ord=abc")
    assert r.returncode == 2 and "experiment.norm_ord" in r.stderr and "Traceback" not in r.stderr
    r = _eas(tmp_path, *common, "+experiment.typo=1")
    assert r.returncode == 2 and "typo" in r.stderr


def test_a_method_module_outside_eas_is_in_the_store_keys(tmp_path):
    """Two modules that share a method.name build different vectors: their records must differ."""
    from types import SimpleNamespace

    from eas.experiments.base import Experiment

    def job(module):
        cfg = SimpleNamespace(method=SimpleNamespace(get=lambda k, d=None: module if k == "module" else d))
        j = Experiment.__new__(Experiment)
        j.cfg = cfg
        return j

    assert job(None).module_key == []
    assert job("lab_a.toy").module_key != job("lab_b.toy").module_key
