"""Tests for eas.report: merging run dirs, val-to-test selection, flips, markdown, figures,
the eas-report CLI and the analysis notebook.

Run dirs are synthetic but follow the steering job's contract exactly (results.parquet,
summary.json, predictions/<method>/<cellname>.csv). The same numbers are written once as a
grid job (one run, every cell) and once as a Hydra multirun of one-cell jobs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eas.report import (
    cross_benchmark_table,
    flips,
    load_runs,
    select_best,
    summaries,
    to_markdown,
    val_heatmap,
    write_run_figures,
)
from eas.report import figures as report_figures
from eas.report.cli import main
from eas.report.tables import NoResultsError, unsteered_accuracy

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = (4, 8)
STRENGTHS = (1.0, 4.0)
N = {"train": 10, "val": 20, "test": 20}
# Val items right per cell: L8 s1 and L8 s4 tie, and the smaller |strength| must win.
VAL_RIGHT = {(4, 1.0): 11, (4, 4.0): 12, (8, 1.0): 14, (8, 4.0): 14}
TEST_RIGHT = {(4, 1.0): 10, (4, 4.0): 12, (8, 1.0): 15, (8, 4.0): 13}
UNSTEERED_RIGHT = {"train": 5, "val": 11, "test": 11}
BEST = (8, 1.0)


def _correct(key: object, split: str, n_right: int) -> np.ndarray:
    """A fixed, key-dependent set of ``n_right`` correct items out of ``N[split]``."""
    rng = np.random.default_rng(zlib.crc32(f"{key}/{split}".encode()))
    out = np.zeros(N[split], dtype=bool)
    out[rng.permutation(N[split])[:n_right]] = True
    return out


def _cellname(layer: int, strength: float) -> str:
    return f"L{layer}_s{float(strength):g}"  # as eas.experiments.base.cell_name


CORRECT = {
    "unsteered": {s: _correct("u", s, k) for s, k in UNSTEERED_RIGHT.items()},
    **{
        cell: {
            "val": _correct(cell, "val", VAL_RIGHT[cell]),
            "test": _correct(cell, "test", TEST_RIGHT[cell]),
        }
        for cell in VAL_RIGHT
    },
}


def _row(
    benchmark: str,
    method: str,
    layer: int,
    strength: float,
    split: str,
    correct,
    cell,
    selected: bool,
) -> dict:
    return {
        "experiment": "steer",
        "model": "tiny-llama",
        "benchmark": benchmark,
        "method": method,
        "steer_target": "residual",
        "position": "last",
        "layer": layer,
        "strength": strength,
        "seed": 0,
        "split": split,
        "accuracy": float(correct.mean()),
        "n": int(correct.size),
        "n_correct": int(correct.sum()),
        "vector_norm": np.nan if method == "unsteered" else 3.5,
        "cell": cell,
        "selected": selected,
    }


def _write_predictions(path: Path, rows: list[tuple[str, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [
        pd.DataFrame(
            {
                "item_id": [f"{split}-{i}" for i in range(c.size)],
                "split": split,
                "label": "A",
                "pred": np.where(c, "A", "B"),
                "correct": c,
            }
        )
        for split, c in rows
    ]
    pd.concat(frames).to_csv(path, index=False)


def write_run(
    run_dir: Path,
    cells,
    benchmark: str = "eas_facts",
    method: str = "pasf",
    unsteered_csv: str = "unsteered.csv",
) -> Path:
    """Write one steering run dir as the job would: grid over ``cells``, test for its best.

    ``unsteered_csv`` is where the baseline's predictions go under predictions/: the job
    writes ``unsteered.csv``; ``<method>/unsteered.csv`` is the contract's other reading.
    """
    best = max(cells, key=lambda c: (VAL_RIGHT[c], -abs(c[1]), -c[0]))
    rows = [
        _row(benchmark, "unsteered", -1, 0.0, s, c, "unsteered", False)
        for s, c in CORRECT["unsteered"].items()
    ]
    for cell in cells:
        name = f"{method}/{_cellname(*cell)}"
        splits = ["val", "test"] if cell == best else ["val"]
        rows += [
            _row(benchmark, method, *cell, s, CORRECT[cell][s], name, cell == best) for s in splits
        ]
        _write_predictions(
            run_dir / "predictions" / f"{name}.csv", [(s, CORRECT[cell][s]) for s in splits]
        )
    _write_predictions(
        run_dir / "predictions" / unsteered_csv,
        list(CORRECT["unsteered"].items()),
    )
    pd.DataFrame(rows).to_parquet(run_dir / "results.parquet", index=False)
    before, after = CORRECT["unsteered"]["test"], CORRECT[best]["test"]
    summary = {
        "experiment": "steer",
        "model": "tiny-llama",
        "benchmark": benchmark,
        "method": method,
        "steer_target": "residual",
        "position": "last",
        "seed": 0,
        "unsteered": {s: float(c.mean()) for s, c in CORRECT["unsteered"].items()},
        "best": {
            "cell": f"{method}/{_cellname(*best)}",
            "layer": best[0],
            "strength": best[1],
            "val_accuracy": float(CORRECT[best]["val"].mean()),
        },
        "test": {
            "accuracy": float(after.mean()),
            "unsteered_accuracy": float(before.mean()),
            "delta": float(after.mean() - before.mean()),
            "n": int(after.size),
            "wrong_to_right": int(np.sum(~before & after)),
            "right_to_wrong": int(np.sum(before & ~after)),
        },
        "failed_cells": [],
        "seconds": 1.5,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "manifest.json").write_text("{}")
    return run_dir


@pytest.fixture
def grid_dir(tmp_path: Path) -> Path:
    """One grid job: every (layer, strength) cell in one run."""
    run = tmp_path / "grid" / "run"
    run.mkdir(parents=True)
    return write_run(run, list(VAL_RIGHT))


@pytest.fixture
def multirun_dir(tmp_path: Path) -> Path:
    """A Hydra multirun folder of one-cell jobs (eas -m layer=4,8 strength=1,4)."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    for index, cell in enumerate(VAL_RIGHT):
        run = root / str(index)
        (run / ".hydra").mkdir(parents=True)
        write_run(run, [cell], unsteered_csv="pasf/unsteered.csv")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root.parent.parent


def _expected_flips() -> tuple[int, int]:
    before, after = CORRECT["unsteered"]["test"], CORRECT[BEST]["test"]
    return int(np.sum(~before & after)), int(np.sum(before & ~after))


# --------------------------------------------------------------------------- merge


def test_load_runs_merges_every_results_file(grid_dir: Path, multirun_dir: Path) -> None:
    grid = load_runs([grid_dir])
    multi = load_runs([multirun_dir])
    both = load_runs([grid_dir, multirun_dir])
    assert len(grid) == 3 + len(VAL_RIGHT) + 1
    assert len(multi) == len(VAL_RIGHT) * (3 + 1 + 1)
    assert len(both) == len(grid) + len(multi)
    assert grid["run_dir"].nunique() == 1 and multi["run_dir"].nunique() == len(VAL_RIGHT)
    assert all(Path(d).is_absolute() for d in both["run_dir"])
    assert both["layer"].dtype == "int64" and both["strength"].dtype == "float64"


def test_load_runs_dedupes_overlapping_paths(grid_dir: Path) -> None:
    once = load_runs([grid_dir])
    twice = load_runs([grid_dir, grid_dir.parent, grid_dir / "results.parquet"])
    assert len(twice) == len(once)


@pytest.mark.parametrize("make", ["empty", "missing"])
def test_load_runs_names_the_path_without_results(tmp_path: Path, make: str) -> None:
    path = tmp_path / make
    if make == "empty":
        path.mkdir()
    with pytest.raises(NoResultsError, match=str(path)):
        load_runs([path])


def test_summaries_flatten_summary_json(grid_dir: Path, multirun_dir: Path) -> None:
    runs = summaries([grid_dir, multirun_dir])
    assert len(runs) == 1 + len(VAL_RIGHT)
    grid = runs[runs["run_dir"] == str(grid_dir.resolve())].iloc[0]
    assert grid["cell"] == f"pasf/{_cellname(*BEST)}"
    assert grid["test_accuracy"] == pytest.approx(TEST_RIGHT[BEST] / N["test"])
    assert (grid["wrong_to_right"], grid["right_to_wrong"]) == _expected_flips()
    assert grid["n_failed_cells"] == 0


# --------------------------------------------------------------------------- selection


def test_select_best_is_the_same_for_grid_and_multirun(grid_dir: Path, multirun_dir: Path) -> None:
    grid = select_best(load_runs([grid_dir])).drop(columns="run_dir")
    multi = select_best(load_runs([multirun_dir])).drop(columns="run_dir")
    pd.testing.assert_frame_equal(grid, multi)
    row = grid.iloc[0]
    assert (row["layer"], row["strength"]) == BEST  # tie with L8 s4.0 -> smaller |strength|
    assert row["n_cells"] == len(VAL_RIGHT)
    assert row["val_accuracy"] == pytest.approx(VAL_RIGHT[BEST] / N["val"])
    assert row["test_accuracy"] == pytest.approx(TEST_RIGHT[BEST] / N["test"])
    assert row["unsteered_test_accuracy"] == pytest.approx(UNSTEERED_RIGHT["test"] / N["test"])
    assert row["delta"] == pytest.approx((TEST_RIGHT[BEST] - UNSTEERED_RIGHT["test"]) / N["test"])
    assert not row["test_missing"] and row["note"] == ""


def test_select_best_merging_both_layouts_keeps_one_row_per_group(
    grid_dir: Path, multirun_dir: Path
) -> None:
    both = select_best(load_runs([grid_dir, multirun_dir]))
    assert len(both) == 1
    assert (both.iloc[0]["layer"], both.iloc[0]["strength"]) == BEST


def _cells_frame(cells: list[tuple[int, float, float]]) -> pd.DataFrame:
    base = {
        "model": "m",
        "benchmark": "b",
        "method": "pasf",
        "steer_target": "residual",
        "position": "last",
        "seed": 0,
        "split": "val",
        "n": 10,
    }
    rows = [
        {
            **base,
            "layer": layer,
            "strength": s,
            "accuracy": acc,
            "n_correct": round(acc * 10),
            "cell": f"pasf/L{layer}_s{s}",
        }
        for layer, s, acc in cells
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ([(8, 4.0, 0.7), (4, 1.0, 0.7), (2, -2.0, 0.7)], (4, 1.0)),  # smaller |strength|
        ([(8, 1.0, 0.7), (4, -1.0, 0.7), (12, 1.0, 0.7)], (4, -1.0)),  # then lower layer
        ([(8, 4.0, 0.8), (4, 1.0, 0.7)], (8, 4.0)),  # accuracy first
        ([(8, 1.0, 0.1 + 0.2), (4, 1.0, 0.3)], (4, 1.0)),  # float noise is a tie
    ],
)
def test_select_best_tie_breaks(cells, expected) -> None:
    best = select_best(_cells_frame(cells)).iloc[0]
    assert (best["layer"], best["strength"]) == expected
    assert best["test_missing"]  # no test rows at all
    assert np.isnan(best["unsteered_val_accuracy"])


def test_select_best_reports_missing_test_for_unscored_cell(grid_dir: Path) -> None:
    results = load_runs([grid_dir])
    best_cell = f"pasf/{_cellname(*BEST)}"
    dropped = results[~((results["cell"] == best_cell) & (results["split"] == "test"))]
    row = select_best(dropped).iloc[0]
    assert row["cell"] == best_cell
    assert row["test_missing"] and np.isnan(row["test_accuracy"]) and np.isnan(row["delta"])
    assert best_cell in row["note"] and "layer=8 strength=1" in row["note"]
    table = cross_benchmark_table(dropped)
    assert table.iloc[0]["note"] == row["note"]
    assert pd.isna(table.iloc[0]["wrong_to_right"])


def test_select_best_groups_separately(grid_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_run(other, [(4, 1.0), (4, 4.0)], benchmark="eas_reasoning", method="mean_diff")
    best = select_best(load_runs([grid_dir, other]))
    assert list(zip(best["benchmark"], best["method"])) == [
        ("eas_facts", "pasf"),
        ("eas_reasoning", "mean_diff"),
    ]
    assert best.iloc[1]["layer"] == 4 and best.iloc[1]["strength"] == 4.0


def test_unsteered_accuracy_ignores_steering_fields(grid_dir: Path) -> None:
    results = load_runs([grid_dir])
    keys = {
        "model": "tiny-llama",
        "benchmark": "eas_facts",
        "seed": 0,
        "method": "pasf",
        "position": "mean",
    }
    assert unsteered_accuracy(results, "val", keys) == UNSTEERED_RIGHT["val"] / N["val"]
    assert np.isnan(unsteered_accuracy(results, "val", {**keys, "benchmark": "other"}))


# --------------------------------------------------------------------------- flips and table


def test_flips_from_prediction_csvs_match_both_layouts(grid_dir: Path, multirun_dir: Path) -> None:
    expected = _expected_flips()
    assert expected[0] > 0 and expected[1] > 0  # the fixture exercises both directions
    for runs in ([grid_dir], [multirun_dir]):
        row = cross_benchmark_table(load_runs(runs)).iloc[0]
        assert (row["wrong_to_right"], row["right_to_wrong"]) == expected
        assert row["n_test"] == N["test"]
        assert 0.0 < row["p_mcnemar"] <= 1.0
    summary = json.loads((grid_dir / "summary.json").read_text())["test"]
    assert (summary["wrong_to_right"], summary["right_to_wrong"]) == expected


def test_flips_are_missing_without_prediction_files(grid_dir: Path) -> None:
    (grid_dir / "predictions" / "unsteered.csv").unlink()
    out = flips(grid_dir, "pasf", f"pasf/{_cellname(*BEST)}")
    assert all(np.isnan(v) for v in out.values())


def test_cross_benchmark_table_columns(grid_dir: Path) -> None:
    table = cross_benchmark_table(load_runs([grid_dir]))
    assert list(table.columns[:6]) == [
        "model",
        "benchmark",
        "method",
        "steer_target",
        "position",
        "seed",
    ]
    row = table.iloc[0]
    assert row["best_cell"] == f"pasf/{_cellname(*BEST)}"
    assert row["unsteered_val"] == pytest.approx(UNSTEERED_RIGHT["val"] / N["val"])
    assert row["test"] - row["unsteered_test"] == pytest.approx(row["delta"])
    assert str(table["wrong_to_right"].dtype) == "Int64"


# --------------------------------------------------------------------------- markdown


def test_to_markdown_formats_cells_itself() -> None:
    df = pd.DataFrame({
        "name": ["a|b", "c"], "acc": [0.51234, np.nan], "n": pd.array([3, None], dtype="Int64"),
        "ok": [True, False], "p": ["1.0e-03", "0.012"],
    })
    lines = to_markdown(df).splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["name", "acc", "n", "ok", "p"]
    rule = [c.strip() for c in lines[1].strip("|").split("|")]
    assert not rule[0].endswith(":") and not rule[3].endswith(":")  # text left-aligned
    assert rule[1].endswith(":") and rule[2].endswith(":")  # numbers right-aligned
    assert "a\\|b" in lines[2] and "0.512" in lines[2] and "yes" in lines[2]
    assert "1.0e-03" in lines[2]  # text that looks like a number stays as written
    assert lines[3].count("n/a") == 2 and "no" in lines[3]
    assert len({len(line) for line in lines}) == 1  # columns padded to one width


def test_to_markdown_of_report_table(grid_dir: Path) -> None:
    text = to_markdown(cross_benchmark_table(load_runs([grid_dir])))
    assert "pasf/L8_s1" in text and "| model" in text


# --------------------------------------------------------------------------- figures


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_write_run_figures(grid_dir: Path) -> None:
    written = write_run_figures(grid_dir)
    names = sorted(p.name for p in written)
    assert names == ["test_bars.png", "val_heatmap_pasf.png"]
    assert all(p.parent == grid_dir / "figures" and _is_png(p) for p in written)


def test_val_heatmap_panels_and_errors(grid_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    write_run(other, list(VAL_RIGHT), benchmark="eas_reasoning")
    results = load_runs([grid_dir, other])
    fig = val_heatmap(results, "pasf", tmp_path / "two.png")
    assert _is_png(tmp_path / "two.png")
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 2
    with pytest.raises(ValueError, match="pasf"):
        val_heatmap(results, "nope")


def test_val_heatmap_says_which_layer_rule(grid_dir: Path) -> None:
    results = load_runs([grid_dir])
    same = val_heatmap(results.assign(read_site=results["steer_target"]), "pasf")
    ref = val_heatmap(results.assign(read_site="residual_pre"), "pasf")
    ylabel = [ax.get_ylabel() for ax in ref.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_ylabel() for ax in same.axes if ax.get_label() != "<colorbar>"] == ["layer"]
    assert ylabel == [f"layer (read at residual_pre L, steered at {results['steer_target'].iloc[0]} L)"]


def test_test_bars_from_results_selection_and_summaries(
    grid_dir: Path, multirun_dir: Path, tmp_path: Path
) -> None:
    results = load_runs([grid_dir])
    inputs = {
        "results": results,
        "selection": select_best(results),
        "summaries": summaries([grid_dir, multirun_dir]),
    }
    for name, table in inputs.items():
        report_figures.test_bars(table, tmp_path / f"{name}.png")
        assert _is_png(tmp_path / f"{name}.png"), name
    missing = select_best(results).assign(test_accuracy=np.nan, test_n=np.nan)
    report_figures.test_bars(missing, tmp_path / "missing.png")
    assert _is_png(tmp_path / "missing.png")


def test_test_bars_intervals_are_the_core_wilson_interval() -> None:
    from eas.core.stats import wilson_interval

    core = wilson_interval(15, 20)
    assert report_figures._interval(0.75, 20) == (core.low, core.high)
    assert all(np.isnan(report_figures._interval(np.nan, 20)))
    assert all(np.isnan(report_figures._interval(0.5, 0)))


# --------------------------------------------------------------------------- CLI


REPORT_FILES = (
    "merged_results.parquet",
    "merged_results.csv",
    "summary_table.md",
    "summary_table.csv",
    "figures/val_heatmap_pasf.png",
    "figures/test_bars.png",
)


def test_cli_writes_the_report(
    grid_dir: Path, multirun_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report"
    assert main([str(grid_dir), str(multirun_dir), "--out", str(out)]) == 0
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    merged = pd.read_parquet(out / "merged_results.parquet")
    assert len(merged) == len(load_runs([grid_dir, multirun_dir]))
    printed = capsys.readouterr().out
    assert "pasf/L8_s1" in printed
    assert to_markdown(cross_benchmark_table(merged)) in (out / "summary_table.md").read_text()


def test_cli_default_out_is_first_dir_report(grid_dir: Path) -> None:
    assert main([str(grid_dir)]) == 0
    assert (grid_dir / "report" / "summary_table.md").is_file()
    assert main([str(grid_dir)]) == 0  # a second report does not pick up the first


def test_cli_error_names_the_path(
    grid_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    assert main([str(grid_dir), str(empty)]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "results.parquet" in err
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def _manifest(run: Path, kind: str, module: str | None = None, **config: object) -> None:
    """A manifest as the platform writes it: the kind on top and in config.experiment."""
    experiment = {"name": kind, **({"module": module} if module else {})}
    (run / "manifest.json").write_text(json.dumps({"experiment": kind, "config": {"experiment": experiment,
                                                                                   **config}}))


def _summary_run(run: Path, kind: str, score: float, module: str | None = None, **config: object) -> Path:
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"experiment": kind, "best": {"layer": 3, "score": score}}))
    _manifest(run, kind, module, **config)
    return run


def test_cli_reads_the_kind_from_the_manifest_and_calls_the_kinds_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "lab" / "toylab").mkdir(parents=True)
    (tmp_path / "lab" / "toylab" / "__init__.py").write_text("")
    (tmp_path / "lab" / "toylab" / "kind.py").write_text(
        "import pandas as pd\n"
        "def report(runs):\n"
        "    return {'scores': pd.DataFrame({'run_dir': [str(r) for r in runs], 'n': [len(runs)] * len(runs)})}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    a = _summary_run(tmp_path / "runs" / "0", "toy", 0.5, module="toylab.kind", max_sample_size=30)
    b = _summary_run(tmp_path / "runs" / "1", "toy", 0.7, module="toylab.kind", max_sample_size=45)
    pd.DataFrame({"x": [1]}).to_parquet(a / "results.parquet")  # the manifest wins over file names
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    scores = pd.read_csv(out / "toy_scores.csv")
    assert sorted(scores["run_dir"]) == sorted(str(r.resolve()) for r in (a, b)) and set(scores["n"]) == {2}
    assert scores["setup"].nunique() == 2 and sorted(scores["setup.max_sample_size"]) == [30, 45]
    md = (out / "toy_table.md").read_text()
    assert md.startswith("# eas report: experiment=toy") and "## scores" in md
    assert "## scores" in capsys.readouterr().out
    assert not (out / "summary_table.md").exists()  # not taken for a steering run


def test_cli_reports_a_kind_without_report_one_row_per_run(tmp_path: Path) -> None:
    for i in range(2):
        _summary_run(tmp_path / "runs" / str(i), "spectrum", 0.1 * i)  # a kind eas does not have
    out = tmp_path / "report"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    rows = pd.read_csv(out / "spectrum_runs.csv")
    assert len(rows) == 2 and list(rows["best.score"]) == [0.0, 0.1] and set(rows["best.layer"]) == {3}
    assert "spectrum" in (out / "spectrum_table.md").read_text()


def test_cli_tells_the_kind_of_a_run_without_a_manifest_config(grid_dir: Path, tmp_path: Path) -> None:
    from eas.report.cli import find_runs, run_kind

    assert json.loads((grid_dir / "manifest.json").read_text()) == {}  # an older run
    assert run_kind(grid_dir) == ("steer", "steer")
    assert find_runs([grid_dir.parent]) == {("steer", "steer"): [grid_dir.resolve()]}
    _manifest(grid_dir, "probe")
    assert run_kind(grid_dir) == ("probe", "probe")


def _console_script() -> Path:
    script = Path(sys.executable).parent / "eas-report"
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (pip install -e .)")
    return script


def test_console_script_exit_codes(grid_dir: Path, tmp_path: Path) -> None:
    script = _console_script()
    ok = subprocess.run(
        [script, str(grid_dir), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "pasf/L8_s1" in ok.stdout
    bad = subprocess.run(
        [script, str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2 and str(tmp_path / "nowhere") in bad.stderr


# --------------------------------------------------------------------------- notebook


def test_analysis_notebook_runs_headless(
    grid_dir: Path, multirun_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    out = tmp_path / "report"
    assert main([str(grid_dir), str(multirun_dir), "--out", str(out)]) == 0
    monkeypatch.setenv("EAS_REPORT_DIR", str(out))
    notebook = REPO / "notebooks" / "analysis.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=120,
        resources={"metadata": {"path": str(notebook.parent)}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = json.dumps([o.get("data", {}).get("text/markdown", "") for o in outputs])
    assert "pasf/L8_s1" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert _is_png(out / "notebook_figures" / "test_bars.png")
