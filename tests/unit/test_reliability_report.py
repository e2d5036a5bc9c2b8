"""Regression tests for what ``eas-report`` must never do silently:

1. merge runs whose setups differ (max_sample_size, prompt, ...) into one row: each setup is
   its own row, the table and the markdown name the fields that differ; identical runs
   still dedupe; the same holds for the probe and cmaes tables;
2. crash on a corrupt or column-less ``results.parquet`` (or ``probe_results.parquet``): the
   good runs are reported, the bad ones listed with their reason (exit 0), or exit 2 when no
   run is usable;
3. report p = 0 (or ~1e-16) from a paired test over seeds whose differences have zero
   variance: the p-value is NaN and the table says "undefined (zero variance)".

Run folders come from the real steering job on the tiny random model (seconds each) or are
written with the job's own writer (``eas.store.write_parquet``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import store
from eas.cli import CONF_DIR
from eas.experiments.steer import Steer
from eas.report.cli import main

FAST = ["model=tiny_random", "benchmark=eas_facts", "layer=[1,2]", "strength=[1.0,4.0]", "progress=false"]
RUNS = {  # Hydra multirun subfolders: eas -m max_sample_size=30,45 (+ a prompt change, + a repeat)
    "0-max_sample_size=30": ["max_sample_size=30"],
    "1-max_sample_size=45": ["max_sample_size=45"],
    "2-prompt.system=Be_brief": ["max_sample_size=30", "prompt.system='Be brief.'"],
    "3-max_sample_size=30": ["max_sample_size=30"],  # the same job again
}


def _cfg(store_root: Path, *overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=[*FAST, f"store.root={store_root}", *overrides])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multirun")
    out = {}
    for name, overrides in RUNS.items():
        out[name] = root / name
        Steer(_cfg(root.parent / "store", *overrides), out[name]).run()
    return out


def _report(dirs: list[Path], out: Path) -> tuple[int, pd.DataFrame, str]:
    rc = main([*map(str, dirs), "--out", str(out)])
    table = pd.read_csv(out / "summary_table.csv") if rc == 0 else pd.DataFrame()
    md = (out / "summary_table.md").read_text() if rc == 0 else ""
    return rc, table, md


def _test_n(run: Path) -> int:
    return json.loads((run / "summary.json").read_text())["test"]["n"]


# --------------------------------------------------------------------------- 1. setups


def test_runs_that_differ_in_max_sample_size_are_separate_rows(runs, tmp_path, capsys) -> None:
    a, b = runs["0-max_sample_size=30"], runs["1-max_sample_size=45"]
    assert _test_n(a) != _test_n(b)  # the two runs really scored different test sets
    rc, table, md = _report([a, b], tmp_path / "report")
    assert rc == 0
    assert len(table) == 2 and table["setup"].nunique() == 2
    assert sorted(table["setup.max_sample_size"].astype(str)) == ["30", "45"]
    assert sorted(table["n_test"]) == sorted([_test_n(a), _test_n(b)])
    assert "max_sample_size" in md and "differ" in md
    assert all(s in md for s in table["setup"])
    printed = capsys.readouterr().out
    assert all(s in printed for s in table["setup"]) and "setup.max_sample_size" in printed
    merged = pd.read_parquet(tmp_path / "report" / "merged_results.parquet")
    assert merged["setup"].nunique() == 2


def test_markdown_names_every_differing_field(runs, tmp_path) -> None:
    rc, table, md = _report(list(runs.values()), tmp_path / "report")
    assert rc == 0 and table["setup"].nunique() == 3 and len(table) == 3
    setups = md[md.index("## Setups"):]
    assert "max_sample_size" in setups and "prompt.system" in setups and "Be brief." in setups
    assert "prompt.instruction" not in setups  # the same in every run


def test_identical_runs_still_dedupe(runs, tmp_path) -> None:
    rc, table, md = _report([runs["0-max_sample_size=30"], runs["3-max_sample_size=30"]], tmp_path / "r")
    assert rc == 0 and len(table) == 1 and table["setup"].nunique() == 1
    assert table["n_cells"].tolist() == [4]  # 2 layers x 2 strengths, not 8
    assert "## Setups" not in md


def test_setup_covers_every_field_that_changes_results(runs) -> None:
    from eas.report.setups import setup_fields, setup_id

    config = json.loads((runs["0-max_sample_size=30"] / "manifest.json").read_text())["config"]
    base = setup_id(setup_fields(config))

    def changed(dotted: str, value: object) -> str:
        new = json.loads(json.dumps(config))
        *parents, leaf = dotted.split(".")
        node = new
        for p in parents:
            node = node.setdefault(p, {}) if dotted.startswith("experiment.") else node[p]
        # the field exists in a real steer manifest; experiment.* fields are other kinds' own
        assert leaf in node or dotted.startswith("experiment."), dotted
        node[leaf] = value
        return setup_id(setup_fields(new))

    changes = {"max_sample_size": 31, "benchmark.path": "/data/other.jsonl", "model.dtype": "bfloat16",
               "model.quantization": "8bit", "prompt.format": "plain", "prompt.system": "Be brief.",
               "prompt.instruction": "Pick one.", "n_train_proportion": 0.5, "n_val_proportion": 0.2,
               "n_test_proportion": 0.2, "method.normalize": True, "model.random_config.hidden_size": 32,
               "experiment.popsize": 8, "experiment.judge.model": "other"}
    for dotted, value in changes.items():
        assert changed(dotted, value) != base, dotted
    same = {"seed": 7, "layer": [1], "strength": [4.0], "model.device": "cuda", "batch_size": 8,
            "store.root": "/elsewhere", "progress": True, "cells_per_chunk": 3, "model.compile": True,
            "experiment.fanout.workers": 4}
    for dotted, value in same.items():
        assert changed(dotted, value) == base, dotted


def _synthetic_run(run: Path, kind: str, max_sample_size: int) -> Path:
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"experiment": kind, "config": {
        "experiment": {"name": kind}, "max_sample_size": max_sample_size}}))
    return run


def _probe_run(run: Path, seed: int, auroc: float, max_sample_size: int = 30) -> Path:
    _synthetic_run(run, "probe", max_sample_size)
    base = {"experiment": "probe", "model": "tiny", "benchmark": "eas_sycophancy", "target": "trait",
            "steer_target": "residual", "pooling": "last", "layer": 4, "seed": seed}
    rows = [{**base, "probe": "logreg", "auroc": auroc, "random_best": np.nan},
            {**base, "probe": "mean_diff", "auroc": auroc - 0.05, "random_best": np.nan},
            {**base, "probe": "random", "auroc": 0.55, "random_best": 0.6 + 0.01 * seed}]
    store.write_parquet(run / "probe_results.parquet", pd.DataFrame(rows))
    return run


def test_probe_runs_of_two_setups_with_the_same_seeds_are_not_deduped(tmp_path) -> None:
    for size in (30, 45):
        for seed in (0, 1):
            _probe_run(tmp_path / "multirun" / f"{size}-{seed}", seed, 0.8 + 0.02 * seed + size / 1000, size)
    out = tmp_path / "report"
    assert main([str(tmp_path / "multirun"), "--out", str(out)]) == 0
    from eas.report.seeds import probe_seed_table

    table = probe_seed_table(pd.read_parquet(out / "merged_probe_results.parquet"))
    assert len(table) == 4 and (table["n_seeds"] == 2).all() and table["setup"].nunique() == 2
    md = (out / "probe_table.md").read_text()
    assert "## Setups" in md and "max_sample_size" in md and md.count("[setup ") == 4


def test_cmaes_runs_of_two_setups_are_two_rows(tmp_path) -> None:
    for size in (30, 45):
        run = _synthetic_run(tmp_path / "multirun" / str(size), "cmaes", size)
        acc = {"val": {"accuracy": 0.5}, "test": {"accuracy": 0.4}}
        (run / "summary.json").write_text(json.dumps({
            "experiment": "cmaes", "benchmark": "b", "model": "m", "method": "pasf", "layer": 3,
            "fitness": "val_accuracy", "generations": 4, "extracted": acc, "refined": acc,
            "cosine": {"refined_vs_extracted": 0.9}, "n": {"test": 10}}))
    out = tmp_path / "report"
    assert main([str(tmp_path / "multirun"), "--out", str(out)]) == 0
    gap = pd.read_csv(out / "cmaes_gap.csv")
    assert len(gap) == 2 and sorted(gap["setup.max_sample_size"]) == [30, 45]
    assert "setup.max_sample_size" in (out / "cmaes_gap.md").read_text()


# --------------------------------------------------------------------------- 2. bad results files


def _bad_runs(tmp_path: Path) -> tuple[Path, Path]:
    corrupt, columnless = tmp_path / "corrupt", tmp_path / "columnless"
    corrupt.mkdir()
    (corrupt / "results.parquet").write_bytes(b"PAR1 this is not a parquet file")
    columnless.mkdir()
    store.write_parquet(columnless / "results.parquet", pd.DataFrame())
    return corrupt, columnless


def test_bad_results_files_are_listed_and_the_good_runs_reported(runs, tmp_path, capsys) -> None:
    corrupt, columnless = _bad_runs(tmp_path)
    good = runs["0-max_sample_size=30"]
    rc, table, md = _report([good, corrupt, columnless], tmp_path / "report")
    assert rc == 0 and len(table) == 1
    printed = capsys.readouterr().out
    for text in (printed, md):
        assert "Skipped runs" in text
        assert str(corrupt) in text and "cannot be read" in text
        assert str(columnless) in text and "lacks column" in text
    merged = pd.read_parquet(tmp_path / "report" / "merged_results.parquet")
    assert set(merged["run_dir"]) == {str(good.resolve())}


def test_only_bad_results_files_exit_2_naming_each(tmp_path, capsys) -> None:
    corrupt, columnless = _bad_runs(tmp_path)
    assert main([str(corrupt), str(columnless), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert str(corrupt) in err and "cannot be read" in err
    assert str(columnless) in err and "lacks column" in err


def test_a_corrupt_probe_results_file_is_listed_and_the_good_probe_runs_reported(tmp_path, capsys) -> None:
    good = [_probe_run(tmp_path / "runs" / str(seed), seed, 0.8) for seed in (0, 1)]
    corrupt = _synthetic_run(tmp_path / "runs" / "corrupt", "probe", 30)
    (corrupt / "probe_results.parquet").write_bytes(b"PAR1 this is not a parquet file")
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    merged = pd.read_parquet(out / "merged_probe_results.parquet")
    assert set(merged["run_dir"]) == {str(g.resolve()) for g in good}
    for text in (capsys.readouterr().out, (out / "probe_table.md").read_text(), (out / "skipped_runs.md").read_text()):
        assert "Skipped runs" in text and str(corrupt.resolve()) in text and "cannot be read" in text
    (good[0] / "probe_results.parquet").write_bytes(b"")
    (good[1] / "probe_results.parquet").unlink()
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 2  # no usable probe run: exit 2
    assert str(corrupt.resolve()) in capsys.readouterr().err


# --------------------------------------------------------------------------- 3. zero variance


def _seed_run(run: Path, seed: int, unsteered: int, steered: int, n: int = 10) -> None:
    """One steering run dir (results.parquet, as the job writes it) with test accuracies
    ``unsteered / n`` and ``steered / n``."""
    base = {"experiment": "steer", "model": "tiny_random", "benchmark": "eas_facts", "steer_target": "residual",
            "position": "last", "seed": seed, "n": n, "vector_norm": np.nan, "selected": False}
    rows = [{**base, "method": "unsteered", "layer": -1, "strength": 0.0, "split": s, "cell": "unsteered",
             "n_correct": unsteered, "accuracy": unsteered / n} for s in ("train", "val", "test")]
    rows += [{**base, "method": "pasf", "layer": 1, "strength": 1.0, "split": s, "cell": "pasf/L1_s1",
              "n_correct": steered, "accuracy": steered / n, "vector_norm": 1.0, "selected": True}
             for s in ("val", "test")]
    run.mkdir(parents=True)
    store.write_parquet(run / "results.parquet", pd.DataFrame(rows))


@pytest.mark.parametrize("counts", [
    [(4, 5), (4, 5)],  # the same delta, exactly
    [(3, 4), (4, 5)],  # the same delta up to float rounding: 0.4 - 0.3 != 0.5 - 0.4
    [(5, 5), (6, 6)],  # no change at all
])
def test_zero_variance_across_seeds_has_no_p_value(tmp_path, counts) -> None:
    for seed, (unsteered, steered) in enumerate(counts):
        _seed_run(tmp_path / "multirun" / f"{seed}-seed={seed}", seed, unsteered, steered)
    out = tmp_path / "report"
    assert main([str(tmp_path / "multirun"), "--out", str(out)]) == 0
    row = pd.read_csv(out / "seed_summary.csv").iloc[0]
    assert row["n_seeds"] == 2 and np.isnan(row["p_ttest"]) and np.isnan(row["p_adjusted"])
    assert row["zero_variance"]
    section = (out / "summary_table.md").read_text().split("## Across seeds")[1]
    assert "undefined (zero variance)" in section
    assert not re.search(r"\de[-+]\d\d", section)  # no tiny (1.8e-16) or zero (0.0e+00) p-value


def test_seeds_with_variance_keep_their_p_value(tmp_path) -> None:
    for seed, (unsteered, steered) in enumerate([(3, 5), (4, 5), (4, 7)]):
        _seed_run(tmp_path / "multirun" / str(seed), seed, unsteered, steered)
    assert main([str(tmp_path / "multirun"), "--out", str(tmp_path / "report")]) == 0
    row = pd.read_csv(tmp_path / "report" / "seed_summary.csv").iloc[0]
    assert 0 < row["p_ttest"] < 1 and not row["zero_variance"]
