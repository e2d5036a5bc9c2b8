"""The steer job through the real CLI: the default model end to end, grid vs multirun, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

EAS = str(Path(sys.executable).with_name("eas"))


def run_eas(*args: str, cwd=None) -> subprocess.CompletedProcess:
    r = subprocess.run([EAS, *args, "progress=false"], capture_output=True, text=True, timeout=900, cwd=cwd)
    assert r.returncode == 0, r.stderr[-4000:]
    return r


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("results.parquet"))


@pytest.mark.integration
def test_default_job_on_embedded_smollm2(tmp_path):
    """The README's default job (smollm2_135m, built-in eas_facts, pasf) at a small size."""
    r = run_eas("max_sample_size=40", "layer=[10,18]", "strength=[2,8]")
    (run,) = run_dirs(tmp_path / "outputs")
    s = json.loads((run / "summary.json").read_text())
    assert s["model"] == "smollm2_135m" and s["benchmark"] == "eas_facts"
    assert set(s["unsteered"]) == {"train", "val", "test"}
    assert s["best"]["layer"] in (10, 18) and s["best"]["strength"] in (2.0, 8.0)
    t = s["test"]
    assert t["n"] == 12 and abs(t["delta"] - (t["accuracy"] - t["unsteered_accuracy"])) < 1e-9
    assert t["wrong_to_right"] - t["right_to_wrong"] == round(t["delta"] * t["n"])
    df = pd.read_parquet(run / "results.parquet")
    assert len(df[(df.split == "val") & (df.method == "pasf")]) == 4
    assert (run / "figures" / "val_heatmap_pasf.png").stat().st_size > 1000
    assert len(list((run / "vectors").glob("*.safetensors"))) == 2
    assert "best val cell" in r.stdout


def test_multirun_matches_grid_and_reuses_everything(tmp_path):
    common = ["model=tiny_random", "benchmark=eas_reasoning", "max_sample_size=60"]
    run_eas(*common, "layer=[1,2]", "strength=[1,4]")
    (grid,) = run_dirs(tmp_path / "outputs" / "runs")
    store_files = set((tmp_path / "store").rglob("*"))
    r = run_eas("-m", *common, "layer=1,2", "strength=1,4")
    assert "capture" not in r.stderr  # no capture pass: activations and cells come from the store
    new = {p for p in set((tmp_path / "store").rglob("*")) - store_files if p.suffix == ".json"}
    # nothing recomputed: no activations, vectors, unsteered or val cells; the only new records
    # are the test scores of the three cells that one-cell jobs select but the grid did not
    assert all(p.parts[-3] == "cells" for p in new) and len(new) == 3, new
    singles = run_dirs(tmp_path / "outputs" / "multirun")
    assert len(singles) == 4
    g = pd.read_parquet(grid / "results.parquet").query("split == 'val' and method != 'unsteered'")
    m = pd.concat([pd.read_parquet(d / "results.parquet") for d in singles])
    m = m.query("split == 'val' and method != 'unsteered'")
    key = ["layer", "strength"]
    pd.testing.assert_frame_equal(
        g.sort_values(key)[key + ["accuracy", "n_correct", "vector_norm"]].reset_index(drop=True),
        m.sort_values(key)[key + ["accuracy", "n_correct", "vector_norm"]].reset_index(drop=True),
    )


def test_job_that_dies_keeps_finished_cells(tmp_path, monkeypatch):
    """A chunk that raises marks its cells failed; finished cells are kept and not recomputed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from eas import config as config_mod
    from eas.cli import CONF_DIR
    from eas.core import engine
    from eas.experiments.steer import Steer

    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["model=tiny_random", "benchmark=eas_facts", "max_sample_size=40",
                                           "layer=[1,2]", "strength=[1,4]", "cells_per_chunk=2",
                                           "progress=false"])
    real = engine.sweep_mc
    calls = []

    def flaky(*a, **k):
        calls.append(len(a[6]))
        if len(calls) == 2:
            raise RuntimeError("node lost")
        return real(*a, **k)

    monkeypatch.setattr(engine, "sweep_mc", flaky)
    s = Steer(cfg, tmp_path / "run1").run()
    assert len(s["failed_cells"]) == 2 and "node lost" in s["failed_cells"][0]["error"]
    calls.clear()
    s2 = Steer(cfg, tmp_path / "run2").run()
    assert s2["failed_cells"] == []
    assert calls == [2], f"re-run recomputed finished cells: {calls}"


def test_sharded_capture_gives_the_same_vectors(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from eas import config as config_mod
    from eas.cli import CONF_DIR
    from eas.experiments.steer import Steer

    config_mod.register()
    vecs = {}
    for size in (7, 2048):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=["model=tiny_random", "benchmark=eas_facts", "max_sample_size=50",
                                               "layer=[1,3]", f"capture_shard_size={size}", "progress=false",
                                               f"store.root={tmp_path / str(size)}"])
        job = Steer(cfg, tmp_path / f"run{size}")
        job.load()
        vecs[size] = job.vectors(job.unsteered()["train"])
        shards = list((tmp_path / str(size) / "activations").rglob("*.safetensors"))
        # positives and negatives in one capture: one record unsharded, several with 7 texts a shard
        assert len(shards) == 1 if size == 2048 else len(shards) >= 3, shards
    for layer in (1, 3):
        torch.testing.assert_close(vecs[7][layer], vecs[2048][layer], atol=1e-5, rtol=1e-4)
