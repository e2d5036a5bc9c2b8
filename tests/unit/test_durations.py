"""Run durations: every phase's seconds in manifest.json and summary.json, and eas-report's
table of them across runs (tiny random model)."""

from __future__ import annotations

import json

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.experiments.base import prepare
from eas.report.cli import main as report_main
from eas.report.durations import duration_table


def _run(out, *overrides: str) -> dict:
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["model=tiny_random", "progress=false", *overrides])
    return prepare(cfg).run(cfg, out)


def test_phases_are_in_the_manifest_and_the_report_has_one_row_per_run(tmp_path):
    steer = tmp_path / "runs" / "steer"
    s = _run(steer, "max_sample_size=30", "layer=[1,2]", "strength=[1,4]")
    manifest = json.loads((steer / "manifest.json").read_text())
    phases = manifest["phases"]
    assert set(phases) == {"load", "unsteered", "capture", "sweep_val", "sweep_test"}
    assert all(v > 0 for v in phases.values())
    assert sum(phases.values()) <= manifest["seconds"]
    assert s["phases"] == phases == json.loads((steer / "summary.json").read_text())["phases"]

    patch = tmp_path / "runs" / "patch"
    _run(patch, "experiment=patch", "experiment.max_pairs=4")
    assert set(json.loads((patch / "manifest.json").read_text())["phases"]) == {"load", "patch"}

    table = duration_table([steer, patch])
    assert len(table) == 2
    row = table.set_index("experiment").loc["steer"]
    assert row.grid == "2 x 2" and row.cells == 4 and row.device == "cpu" and row.model == "tiny_random"
    assert row["phase.sweep_val"] == phases["sweep_val"] and row.total == manifest["seconds"]

    out = tmp_path / "report"
    assert report_main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    written = pd.read_csv(out / "durations.csv")
    assert len(written) == 2 and set(written.experiment) == {"steer", "patch"}
    assert "sweep_val" in (out / "durations.md").read_text()
