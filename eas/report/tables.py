"""Tables over steering runs: merge run dirs, select the best cell on val, report it on test.

A steering job writes ``results.parquet`` (one row per (cell, split)), ``summary.json`` and
``predictions/<method>/<cellname>.csv`` into its run dir. These functions read any number
of such dirs (a single run, a grid job, or a Hydra multirun folder with one run per
subfolder) and select across all of them, so a multirun of one-cell jobs
(``eas -m layer=4,8 strength=1,4``) gives the same selection as one grid job.

Selection is on val only, by the rule of ``eas.core.select`` (the one the steer experiment
uses): per group the steered cell with the highest val accuracy wins; ties go to the smaller
``|strength|``, then the lower layer. Its test accuracy is read
from whichever run scored that cell on test; a grid job scores test only for its own
val-best cell, so a cell that no run scored on test is reported with a missing test
accuracy and a note that says so.

Runs are grouped by setup (``eas.report.setups``): runs whose configs differ in a field that
changes results (``max_sample_size``, the prompt, the data file, ...) are reported in separate
rows and never deduplicated into each other.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from eas.core.select import reference_key, selection_key
from eas.report.setups import SETUP, setup_columns, tag_setups, with_setup

DEFAULT_BY: tuple[str, ...] = ("model", "benchmark", "method", "steer_target", "position", "seed", SETUP)
"""Groups within which one cell is selected (``setup``: see ``eas.report.setups``)."""

CELL_KEYS: tuple[str, ...] = ("method", "steer_target", "position", "layer", "strength")
"""Fields that identify a steered cell within a (model, benchmark, seed)."""

UNSTEERED = "unsteered"
RESULTS_FILE = "results.parquet"
SUMMARY_FILE = "summary.json"
RESULTS_COLUMNS: tuple[str, ...] = (
    "model", "benchmark", "method", "steer_target", "position", "seed", "layer", "strength",
    "split", "accuracy", "n", "n_correct", "cell",
)  # fmt: skip
"""Columns a ``results.parquet`` must have to be reported."""
_REDO = "rerun that job or remove the file"

# Fields that describe the steering, not the data: the unsteered baseline of a group is
# matched on the remaining group keys (typically model, benchmark, seed).
_STEERING_FIELDS = frozenset({"method", "steer_target", "position", "layer", "strength", "cell"})


class NoResultsError(FileNotFoundError):
    """A path given to the report holds no ``results.parquet`` (or ``summary.json``), or no usable one."""


class BadResultsError(ValueError):
    """A ``results.parquet`` cannot be reported: it cannot be read, has no rows, or lacks a column
    of ``RESULTS_COLUMNS``. The message names the file and the reason."""


# --------------------------------------------------------------------------- loading


def _find(paths: Iterable[str | Path], filename: str) -> list[Path]:
    """Every ``filename`` under each path (recursive), in a stable order, without repeats.

    Raises:
        NoResultsError: A path does not exist or holds no ``filename``.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise NoResultsError(f"{path}: no such file or directory")
        if path.is_file():
            hits = [path] if path.name == filename else []
        else:
            hits = sorted(path.rglob(filename))
        if not hits:
            raise NoResultsError(
                f"{path}: no {filename} found in it or any subfolder "
                "(is it a run dir, a Hydra multirun dir, or a folder of those?)"
            )
        for hit in hits:
            found.setdefault(hit.resolve(), None)
    return list(found)


def _normalize_results(df: pd.DataFrame) -> pd.DataFrame:
    """Give the contract's columns their types (layer/seed int, strength float, ...)."""
    out = df.copy()
    for col in ("layer", "seed", "n", "n_correct"):
        if col in out:
            out[col] = out[col].astype("int64")
    for col in ("strength", "accuracy", "vector_norm"):
        if col in out:
            out[col] = out[col].astype("float64")
    if "selected" in out:
        out["selected"] = out["selected"].fillna(False).astype(bool)
    return out


def read_results_file(file: Path, columns: Sequence[str]) -> pd.DataFrame:
    """One results parquet (``results.parquet``, ``probe_results.parquet``) as it was written.

    Raises:
        BadResultsError: It cannot be read, lacks one of ``columns`` or has no rows.
    """
    try:
        frame = pd.read_parquet(file)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise BadResultsError(f"{file}: cannot be read ({type(err).__name__}: {err}); {_REDO}") from err
    missing = [c for c in columns if c not in frame]
    if missing:
        raise BadResultsError(
            f"{file}: lacks column(s) {', '.join(missing)} (has {', '.join(map(str, frame.columns)) or 'none'}); "
            f"{_REDO}"
        )
    if frame.empty:
        raise BadResultsError(f"{file}: has no rows; {_REDO}")
    return frame


def _read_results(file: Path) -> pd.DataFrame:
    """One ``results.parquet`` with the contract's types.

    Raises:
        BadResultsError: As ``read_results_file``, or a column holds values of the wrong type.
    """
    frame = read_results_file(file, RESULTS_COLUMNS)
    try:
        return _normalize_results(frame)
    except (TypeError, ValueError) as err:
        raise BadResultsError(f"{file}: a column has values of the wrong type ({err}); {_REDO}") from err


def load_results_files(paths: Iterable[str | Path], filename: str, read: Callable[[Path], pd.DataFrame],
                       skipped: list[str] | None = None) -> pd.DataFrame:
    """Every ``filename`` under ``paths``, read with ``read``, concatenated with a ``run_dir``
    column and tagged with each run's setup (``eas.report.setups.tag_setups``).

    Args:
        paths: Run dirs, folders holding them (searched recursively), or the files.
        filename: ``results.parquet``, ``probe_results.parquet``, ...
        read: Reads one file; raises ``BadResultsError`` for an unusable one.
        skipped: Given a list, each unusable file is left out and its ``"<file>: <reason>"``
            appended; ``None`` raises on the first one.

    Raises:
        NoResultsError: A path does not exist or holds no ``filename``, or no file is usable.
        BadResultsError: A file is unusable and ``skipped`` is ``None``.
    """
    frames = []
    for file in _find(paths, filename):
        try:
            frames.append(read(file).assign(run_dir=str(file.parent)))
        except BadResultsError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
    if not frames:
        raise NoResultsError(f"no usable {filename} among the runs given: " + "; ".join(skipped or []))
    return tag_setups(pd.concat(frames, ignore_index=True))


def load_runs(paths: Iterable[str | Path], skipped: list[str] | None = None) -> pd.DataFrame:
    """Concatenate every ``results.parquet`` found under ``paths``, each tagged with its setup.

    Args:
        paths: Run dirs, Hydra multirun dirs or any folders holding them (searched
            recursively), or ``results.parquet`` files.
        skipped: Where unusable files go: given a list, each ``results.parquet`` that cannot
            be read or lacks a column is left out and its ``"<file>: <reason>"`` appended;
            ``None`` raises on the first one.

    Returns:
        The rows of all runs with an added ``run_dir`` column (the absolute folder of each
        ``results.parquet``), ``setup`` (``eas.report.setups.setup_id`` of the run's manifest
        config) and one ``setup.<field>`` column (its value as text) per field of
        ``setup_fields`` whose value differs between the runs.

    Raises:
        NoResultsError: A path does not exist or has no ``results.parquet`` anywhere in it, or
            every file found is unusable (the message lists why).
        BadResultsError: A file is unusable and ``skipped`` is ``None``.
    """
    return load_results_files(paths, RESULTS_FILE, _read_results, skipped)


def _flatten_summary(summary: dict, run_dir: Path) -> dict:
    """One ``summary.json`` -> one flat row, with the column names ``select_best`` uses."""
    best = summary.get("best") or {}
    test = summary.get("test") or {}
    unsteered = summary.get("unsteered") or {}
    failed = summary.get("failed_cells") or []
    n = test.get("n", math.nan)
    row = {
        key: summary.get(key)
        for key in (
            "experiment",
            "model",
            "benchmark",
            "method",
            "steer_target",
            "position",
            "seed",
        )
    }
    row.update(
        unsteered_train_accuracy=unsteered.get("train", math.nan),
        unsteered_val_accuracy=unsteered.get("val", math.nan),
        unsteered_test_accuracy=test.get("unsteered_accuracy", unsteered.get("test", math.nan)),
        cell=best.get("cell"),
        layer=best.get("layer"),
        strength=best.get("strength"),
        val_accuracy=best.get("val_accuracy", math.nan),
        test_accuracy=test.get("accuracy", math.nan),
        delta=test.get("delta", math.nan),
        test_n=n,
        unsteered_test_n=n,
        wrong_to_right=test.get("wrong_to_right"),
        right_to_wrong=test.get("right_to_wrong"),
        n_failed_cells=len(failed),
        failed_cells="; ".join(f"{f.get('cell')}: {f.get('error')}" for f in failed),
        seconds=summary.get("seconds", math.nan),
        run_dir=str(run_dir),
    )
    return row


def summaries(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per ``summary.json`` found under ``paths`` (each run's own selection).

    Args:
        paths: As for ``load_runs``.

    Returns:
        Columns: the run's experiment, model, benchmark, method, steer_target, position and
        seed; ``unsteered_{train,val,test}_accuracy``; the run's best ``cell``, ``layer``,
        ``strength``, ``val_accuracy``; ``test_accuracy``, ``delta``, ``test_n``,
        ``unsteered_test_n``, ``wrong_to_right``, ``right_to_wrong`` (NaN/None when the
        run has no best cell); ``n_failed_cells``, ``failed_cells`` (``"cell: error; ..."``),
        ``seconds`` and ``run_dir``.

    Raises:
        NoResultsError: A path does not exist or has no ``summary.json`` anywhere in it.
    """
    rows = [
        _flatten_summary(json.loads(f.read_text()), f.parent) for f in _find(paths, SUMMARY_FILE)
    ]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- selection


def _is_unsteered(df: pd.DataFrame) -> pd.Series:
    return (df["method"] == UNSTEERED) | (df["cell"] == UNSTEERED)


def _baseline_keys(by: Sequence[str]) -> list[str]:
    return [c for c in by if c not in _STEERING_FIELDS]


def _where(df: pd.DataFrame, values: dict) -> pd.DataFrame:
    """Rows of ``df`` whose columns equal ``values`` (NaN never matches)."""
    mask = np.ones(len(df), dtype=bool)
    for col, value in values.items():
        mask &= (df[col] == value).to_numpy()
    return df[mask]


def _prefer_run(rows: pd.DataFrame, run_dirs: Sequence[str | None]) -> pd.Series | None:
    """The first row from the first of ``run_dirs`` that has one, else the first row."""
    if rows.empty:
        return None
    if "run_dir" in rows:
        for run_dir in run_dirs:
            same = rows[rows["run_dir"] == run_dir]
            if not same.empty:
                return same.iloc[0]
    return rows.iloc[0]


def unsteered_accuracy(results: pd.DataFrame, split: str, keys: dict) -> float:
    """Accuracy of the unsteered rows on ``split`` that match the data fields of ``keys``.

    Steering fields in ``keys`` (method, steer_target, position, ...) are ignored: the
    baseline does not depend on them.

    Args:
        results: Rows in the ``results.parquet`` format.
        split: ``"train"``, ``"val"`` or ``"test"``.
        keys: Column -> value, e.g. a group of ``select_best``.

    Returns:
        The first matching row's accuracy (runs of one group share the baseline); NaN if
        there is none.
    """
    results = with_setup(results)
    base = results[_is_unsteered(results) & (results["split"] == split)]
    row = _prefer_run(
        _where(base, {k: v for k, v in keys.items() if k in _baseline_keys(keys)}), []
    )
    return _accuracy(row)


def _best_val(val: pd.DataFrame) -> pd.Series:
    """The val row of the cell ``eas.core.select`` picks by the runs' ``selection_rule`` (the
    first of equal cells); under ``pas_reference`` strengths rank in the order the rows list them."""
    rules = set(val["selection_rule"].dropna()) if "selection_rule" in val else set()
    if len(rules) > 1:
        raise ValueError(f"runs of one group select their cell by different rules {sorted(rules)}; "
                         "report them apart (they answer different questions)")
    if rules == {"pas_reference"}:
        rank = {s: i for i, s in reversed(list(enumerate(dict.fromkeys(val["strength"]))))}
        keys = [reference_key(a, layer, rank[s]) for a, layer, s in zip(val["accuracy"], val["layer"], val["strength"])]
    else:
        keys = [selection_key(a, layer, s) for a, layer, s in zip(val["accuracy"], val["layer"], val["strength"])]
    return val.iloc[keys.index(min(keys))]


def _missing_test_note(best: pd.Series) -> str:
    return (
        f"test not scored for {best['cell']}: no run scored this cell on test (a grid job "
        "scores test only for its own val-best cell); rerun it alone with "
        f"layer={best['layer']} strength={best['strength']:g} to get its test accuracy"
    )


def _accuracy(row: pd.Series | None, field: str = "accuracy") -> float:
    return math.nan if row is None else float(row[field])


def _count(row: pd.Series | None, field: str) -> int | float:
    return math.nan if row is None else int(row[field])


def _select_group(
    keys: dict,
    cells: pd.DataFrame,
    steered_test: pd.DataFrame,
    unsteered: pd.DataFrame,
    baseline_keys: list[str],
) -> dict:
    """The selection row of one group; ``cells`` holds its val rows, one per cell."""
    best = _best_val(cells)
    cell = {k: best[k] for k in CELL_KEYS}
    test = _prefer_run(_where(steered_test, {**keys, **cell}), [best.get("run_dir")])
    runs = [None if test is None else test.get("run_dir"), best.get("run_dir")]
    base = _where(unsteered, {k: keys[k] for k in baseline_keys})
    base_val = _prefer_run(base[base["split"] == "val"], runs)
    base_test = _prefer_run(base[base["split"] == "test"], runs)
    acc = _accuracy(test)
    u_test = _accuracy(base_test)
    return {
        **keys,
        **{k: best[k] for k in CELL_KEYS if k not in keys},
        "cell": best["cell"],
        "n_cells": len(cells),
        "val_accuracy": float(best["accuracy"]),
        "val_n": int(best["n"]),
        "unsteered_val_accuracy": _accuracy(base_val),
        "test_accuracy": acc,
        "test_n": _count(test, "n"),
        "test_n_correct": _count(test, "n_correct"),
        "unsteered_test_accuracy": u_test,
        "unsteered_test_n": _count(base_test, "n"),
        "unsteered_test_n_correct": _count(base_test, "n_correct"),
        "delta": acc - u_test,
        "test_missing": test is None,
        "run_dir": best.get("run_dir") if test is None else test.get("run_dir"),
        "note": _missing_test_note(best) if test is None else "",
    }


def select_best(results: pd.DataFrame, by: Sequence[str] = DEFAULT_BY) -> pd.DataFrame:
    """Pick the best steered cell on val per group, across all runs in ``results``.

    Works the same whether the cells come from one grid job or from many one-cell jobs:
    only the val rows decide, and test is looked up afterwards for the chosen cell.

    Args:
        results: Rows in the ``results.parquet`` format, e.g. from ``load_runs``; a
            ``run_dir`` column is optional (it decides which run's rows are preferred
            when a cell or the baseline was scored in more than one).
        by: Columns that define a group. The unsteered baseline of a group is matched on
            the columns of ``by`` that do not describe steering (``method``,
            ``steer_target``, ``position``), i.e. usually model, benchmark, seed and setup.
            Rows without a ``setup`` column (not from ``load_runs``) are one setup.

    Returns:
        One row per group that has at least one steered val row, with the ``by`` columns,
        the cell's remaining ``CELL_KEYS``, ``cell``, ``n_cells`` (cells compared),
        ``val_accuracy``, ``val_n``, ``unsteered_val_accuracy``, ``test_accuracy``,
        ``test_n``, ``test_n_correct``, ``unsteered_test_accuracy``, ``unsteered_test_n``,
        ``unsteered_test_n_correct``, ``delta`` (test minus unsteered test), ``test_missing``,
        ``run_dir`` (where the test row came from) and ``note`` (why test is missing).
        Accuracies are fractions in [0, 1]; missing values are NaN.

    Raises:
        KeyError: A column of ``by`` or of the contract is missing from ``results``.
    """
    by = list(by)
    results = with_setup(results)
    missing = [c for c in [*by, *CELL_KEYS, "split", "accuracy", "n", "cell"] if c not in results]
    if missing:
        raise KeyError(f"results lack column(s) {missing}; have {list(results.columns)}")
    base_mask = _is_unsteered(results)
    steered, unsteered = results[~base_mask], results[base_mask]
    val = steered[steered["split"] == "val"]
    test = steered[steered["split"] == "test"]
    rows = []
    for key_values, group in val.groupby(by, sort=True, dropna=False):
        keys = dict(zip(by, key_values, strict=True))
        cells = group.drop_duplicates(subset=list(CELL_KEYS), keep="first")
        rows.append(_select_group(keys, cells, test, unsteered, _baseline_keys(by)))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- flips


def _prediction_file(run_dir: Path, method: str, cell: str) -> Path | None:
    """The predictions CSV of ``cell`` in ``run_dir``, trying the layouts the contract allows.

    Steered: ``predictions/<cell>.csv`` when ``cell`` is ``"<method>/<name>"``, else
    ``predictions/<method>/<cell>.csv``. Unsteered: ``predictions/unsteered.csv`` (what the
    steer job writes), ``predictions/unsteered/unsteered.csv``,
    ``predictions/<method>/unsteered.csv`` or the first ``predictions/*/unsteered.csv``.
    """
    root = run_dir / "predictions"
    if cell == UNSTEERED:
        candidates = [
            root / f"{UNSTEERED}.csv",
            root / UNSTEERED / f"{UNSTEERED}.csv",
            root / method / f"{UNSTEERED}.csv",
            *sorted(root.glob(f"*/{UNSTEERED}.csv")),
        ]
    elif "/" in cell:
        candidates = [root / f"{cell}.csv", root / method / f"{cell.split('/')[-1]}.csv"]
    else:
        candidates = [root / method / f"{cell}.csv"]
    return next((c for c in candidates if c.is_file()), None)


def _test_correct(file: Path) -> pd.Series:
    """``item_id -> correct`` (bool) for the test rows of a predictions CSV."""
    preds = pd.read_csv(file)
    preds = preds[preds["split"] == "test"]
    correct = preds["correct"].astype(str).str.lower().isin(["true", "1", "1.0"])
    return pd.Series(correct.to_numpy(), index=preds["item_id"].astype(str).to_numpy())


def _no_flips() -> dict[str, float]:
    """The ``flips`` result when nothing can be paired (every field NaN)."""
    return {
        "wrong_to_right": math.nan,
        "right_to_wrong": math.nan,
        "n_paired": math.nan,
        "p_mcnemar": math.nan,
    }


def flips(run_dir: str | Path, method: str, cell: str) -> dict[str, float]:
    """Wrong->right and right->wrong test items of ``cell`` against the unsteered baseline.

    Args:
        run_dir: The run that scored ``cell`` on test.
        method: The cell's method (a folder under ``predictions/``).
        cell: The ``cell`` value of its results rows, e.g. ``"pasf/L8_s4.0"``.

    Returns:
        ``wrong_to_right``, ``right_to_wrong`` and ``n_paired`` (test items in both files),
        plus ``p_mcnemar`` (two-sided, from ``eas.core.stats.mcnemar``; NaN if that is not
        available). All NaN when either predictions file or its test rows are missing.
    """
    out = _no_flips()
    steered_file = _prediction_file(Path(run_dir), method, cell)
    base_file = _prediction_file(Path(run_dir), method, UNSTEERED)
    if steered_file is None or base_file is None:
        return out
    after, before = _test_correct(steered_file), _test_correct(base_file)
    both = before.index.intersection(after.index)
    if both.empty:
        return out
    before, after = before.loc[both].to_numpy(), after.loc[both].to_numpy()
    out["wrong_to_right"] = int(np.sum(~before & after))
    out["right_to_wrong"] = int(np.sum(before & ~after))
    out["n_paired"] = int(both.size)
    try:
        from eas.core.stats import mcnemar
    except ImportError:
        return out
    out["p_mcnemar"] = mcnemar(before, after).p_value
    return out


# --------------------------------------------------------------------------- report table


TABLE_COLUMNS: tuple[str, ...] = (
    "model", "benchmark", "method", "steer_target", "position", "seed",
    "unsteered_val", "unsteered_test", "best_cell", "n_cells", "best_val", "test", "delta",
    "n_test", "wrong_to_right", "right_to_wrong", "p_mcnemar", "note",
)  # fmt: skip


def cross_benchmark_table(results: pd.DataFrame, by: Sequence[str] = DEFAULT_BY) -> pd.DataFrame:
    """The headline table: per group, the val-selected cell and what it does on test.

    Flips are counted from the predictions CSVs in the ``run_dir`` that scored the cell
    on test; without a ``run_dir`` column or those files they are missing.

    Args:
        results: As for ``select_best``.
        by: As for ``select_best``.

    Returns:
        One row per group with ``TABLE_COLUMNS`` (plus any extra ``by`` columns, e.g.
        ``setup``, followed by the ``setup.<field>`` columns of ``results``):
        ``unsteered_val``/``unsteered_test`` and ``best_val``/``test`` accuracies,
        ``delta`` = test - unsteered_test, ``n_test`` items, ``wrong_to_right`` and
        ``right_to_wrong`` item counts, ``p_mcnemar`` and a ``note``. Counts use pandas'
        nullable ``Int64`` (missing is ``<NA>``).
    """
    best = select_best(results, by)
    if best.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    flip_rows = [
        flips(row.run_dir, row.method, row.cell)
        if not row.test_missing and isinstance(row.run_dir, str)
        else _no_flips()
        for row in best.itertuples(index=False)
    ]
    table = best.rename(
        columns={
            "unsteered_val_accuracy": "unsteered_val",
            "unsteered_test_accuracy": "unsteered_test",
            "cell": "best_cell",
            "val_accuracy": "best_val",
            "test_accuracy": "test",
            "test_n": "n_test",
        }
    )
    table = pd.concat([table, pd.DataFrame(flip_rows, index=table.index)], axis=1)
    for col in ("n_test", "wrong_to_right", "right_to_wrong", "n_cells"):
        table[col] = table[col].astype("Float64").round().astype("Int64")
    extra = [c for c in by if c not in TABLE_COLUMNS]
    fields = setup_columns(results) if SETUP in table else []
    if fields:
        table = table.merge(results[[SETUP, *fields]].drop_duplicates(SETUP), on=SETUP, how="left")
    return table[[*TABLE_COLUMNS[:6], *extra, *fields, *TABLE_COLUMNS[6:]]]


# --------------------------------------------------------------------------- markdown


def _format_cell(value: object, floatfmt: str) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """Render ``df`` as a markdown (pipe) table with ``DataFrame.to_markdown``.

    Cells are formatted here and passed on as text, so a string that looks like a number
    (``"1.0e-03"``) stays as written: floats use ``floatfmt``, missing values print as
    ``n/a``, booleans as ``yes``/``no``, ``|`` inside text is escaped. Numeric columns are
    right-aligned. The index is not printed.

    Args:
        df: Any DataFrame.
        floatfmt: A ``format`` spec for floats, e.g. ``".3f"``.

    Returns:
        The table, one line per row, ending without a newline.
    """
    align = [
        "right" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) else "left"
        for c in df.columns
    ]
    cells = df.astype(object).apply(lambda col: col.map(lambda v: _format_cell(v, floatfmt)))
    return cells.to_markdown(index=False, tablefmt="pipe", colalign=align, disable_numparse=True)
