"""Figures of steering runs: the val layer x strength grid, and test accuracy with CIs.

Figures are built on ``matplotlib.figure.Figure`` directly, never through ``pyplot``: no
global figure state, no display, and PNGs are rendered by the Agg canvas, so this works
headless, in threads and in notebooks alike. Every function returns the Figure and
writes it when given a path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from eas.core.stats import wilson_interval
from eas.report.setups import with_setup
from eas.report.tables import DEFAULT_BY, UNSTEERED, load_runs, select_best, unsteered_accuracy

_DIVERGING = "RdBu"  # red below the unsteered baseline, blue above
_BASE_COLOR = "#9e9e9e"
_STEER_COLOR = "#2166ac"


# --------------------------------------------------------------------------- helpers


def save_figure(fig: Figure, path: str | Path | None, dpi: int = 150) -> Figure:
    """Write ``fig`` as a PNG at ``path`` (its folder created) with the Agg canvas; ``None``
    writes nothing. Returns ``fig``."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(fig)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def _label(values: dict, keys: Sequence[str]) -> str:
    return " · ".join(str(values[k]) for k in keys)


def _varying(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """Columns among ``cols`` that take more than one value in ``df``."""
    return [c for c in cols if c in df and df[c].nunique(dropna=False) > 1]


# --------------------------------------------------------------------------- val heatmap


def _panel_keys(by: Sequence[str]) -> list[str]:
    keys = [c for c in by if c != "method"]
    return keys if "position" in keys else [*keys, "position"]


def _grid(val: pd.DataFrame) -> pd.DataFrame:
    """Val accuracy as a layer (rows, ascending) x strength (columns, ascending) table."""
    val = val.drop_duplicates(subset=["layer", "strength"], keep="first")
    return (
        val.pivot(index="layer", columns="strength", values="accuracy")
        .sort_index()
        .sort_index(axis=1)
    )


def _layer_label(rows: pd.DataFrame) -> str:
    """``layer``, and the read rule when vectors were read at another site than the one steered."""
    if "read_site" not in rows or "steer_target" not in rows:
        return "layer"
    pairs = rows[["read_site", "steer_target"]].dropna().drop_duplicates()
    rules = [f"read at {r} L, steered at {t} L" for r, t in pairs.itertuples(index=False) if r != t]
    return f"layer ({'; '.join(rules)})" if rules else "layer"


def _draw_heatmap(ax, fig: Figure, grid: pd.DataFrame, center: float, selected: tuple | None,
                  ylabel: str = "layer"):
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    half = max(0.02, float(np.max(np.abs(finite - center)))) if finite.size else 0.05
    norm = Normalize(center - half, center + half)
    cmap = colormaps[_DIVERGING].with_extremes(bad="#e0e0e0")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for i, j in np.ndindex(values.shape):
        v = values[i, j]
        text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
        dark = np.isfinite(v) and abs(norm(v) - 0.5) > 0.3
        ax.text(
            j, i, text, ha="center", va="center", fontsize=9, color="white" if dark else "black"
        )
    if selected is not None and selected[0] in grid.index and selected[1] in grid.columns:
        i, j = grid.index.get_loc(selected[0]), grid.columns.get_loc(selected[1])
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5),
                1,
                1,
                fill=False,
                edgecolor="black",
                linewidth=2.5,
                label="selected on val",
            )
        )
    ax.set_xticks(range(len(grid.columns)), [f"{s:g}" for s in grid.columns])
    ax.set_yticks(range(len(grid.index)), [str(layer) for layer in grid.index])
    ax.set_xlabel("strength")
    ax.set_ylabel(ylabel)
    bar = fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03)
    bar.set_label("val accuracy")
    bar.ax.axhline(center, color="black", linewidth=1.5)  # the unsteered baseline


def val_heatmap(
    results: pd.DataFrame,
    method: str,
    path: str | Path | None = None,
    by: Sequence[str] = DEFAULT_BY,
) -> Figure:
    """Val accuracy over layer (rows) x strength (columns) for one method.

    One panel per combination of the other ``by`` columns and ``position`` (one panel for a
    single run). Colours diverge around the unsteered val accuracy, so cells that beat the
    baseline are blue and cells that hurt are red; each cell is annotated with its
    accuracy, cells without a val score (e.g. failed) are grey ``n/a``, and the cell
    ``select_best`` picks is outlined in black.

    Args:
        results: Rows in the ``results.parquet`` format (one run or merged runs).
        method: A steered method present in ``results``, e.g. ``"pasf"``.
        path: Where to write the PNG; ``None`` to only return the figure.
        by: Selection groups, as for ``select_best``.

    Returns:
        The figure.

    Raises:
        ValueError: ``results`` has no val rows for ``method``.
    """
    results = with_setup(results)
    val = results[(results["method"] == method) & (results["split"] == "val")]
    if val.empty:
        methods = sorted(set(results["method"]) - {UNSTEERED})
        raise ValueError(f"no val rows for method={method!r}; methods present: {methods}")
    keys = _panel_keys(by)
    best = select_best(results[results["method"].isin([method, UNSTEERED])], by)
    panels = list(val.groupby(keys, sort=True, dropna=False))
    shapes = [_grid(group).shape for _, group in panels]
    width = 1.8 + 0.85 * max(s[1] for s in shapes)
    height = 1.4 + 0.42 * max(s[0] for s in shapes)
    ncols = math.ceil(math.sqrt(len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(max(4.5, width) * ncols, max(3.0, height) * nrows), layout="constrained")
    varying = _varying(val, [k for k in keys if k not in ("model", "benchmark")])
    for index, (key_values, group) in enumerate(panels):
        panel = dict(zip(keys, key_values, strict=True))
        ax = fig.add_subplot(nrows, ncols, index + 1)
        pick = best
        for k in [*by, "position"]:
            if k in panel and k in pick:
                pick = pick[pick[k] == panel[k]]
        selected = None if pick.empty else (pick.iloc[0]["layer"], pick.iloc[0]["strength"])
        center = unsteered_accuracy(results, "val", panel)
        grid = _grid(group)
        if not np.isfinite(center):
            center = float(np.nanmedian(grid.to_numpy(dtype=float)))
        _draw_heatmap(ax, fig, grid, center, selected, _layer_label(group))
        title = f"{panel['model']} · {panel['benchmark']} · {method}"
        if varying:
            title += " (" + ", ".join(f"{k}={panel[k]}" for k in varying) + ")"
        title += f"\nunsteered val = {center:.2f} (colour centre, black line)"
        ax.set_title(title, fontsize=10)
    fig.suptitle(
        "Val accuracy by layer and strength (black box: cell selected on val)", fontsize=10
    )
    return save_figure(fig, path)


# --------------------------------------------------------------------------- test bars


def _bar_table(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """A selection table from results rows (they have ``split``), or ``table`` as it is."""
    if "split" in table:
        return select_best(table, by)
    need = {"test_accuracy", "test_n", "unsteered_test_accuracy"}
    if not need <= set(table.columns):
        raise KeyError(
            f"test_bars needs results rows (with 'split') or a selection table with "
            f"{sorted(need)}; got columns {list(table.columns)}"
        )
    return table


def _interval(acc: float, n: float) -> tuple[float, float]:
    """Wilson 95% interval of an accuracy over ``n`` items; NaN when either is missing."""
    if not (np.isfinite(acc) and np.isfinite(n) and n >= 1):
        return math.nan, math.nan
    interval = wilson_interval(round(acc * n), int(n))
    return interval.low, interval.high


def test_bars(
    table: pd.DataFrame, path: str | Path | None = None, by: Sequence[str] = DEFAULT_BY
) -> Figure:
    """Test accuracy of the unsteered model and of the val-selected cell, with 95% CIs.

    One pair of bars per group (benchmark, method, ... whatever varies). Error bars are
    Wilson 95% intervals from each accuracy and its number of test items. A group whose
    selected cell was never scored on test shows a "test not scored" label instead of a bar.

    Args:
        table: Results rows (``load_runs``; the selection is made here), or a table with
            ``test_accuracy``, ``test_n``, ``unsteered_test_accuracy`` (and optionally
            ``unsteered_test_n``) per group: ``select_best`` or ``summaries`` output.
        path: Where to write the PNG; ``None`` to only return the figure.
        by: Selection groups, as for ``select_best``.

    Returns:
        The figure.
    """
    rows = _bar_table(table, by).reset_index(drop=True)
    label_keys = _varying(
        rows, ["model", "benchmark", "method", "steer_target", "position", "seed"]
    ) or [k for k in ("benchmark", "method") if k in rows]
    fig = Figure(figsize=(max(4.5, 1.4 + 1.3 * len(rows)), 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.38
    n_base = rows["unsteered_test_n"] if "unsteered_test_n" in rows else rows["test_n"]
    series = [
        ("unsteered", rows["unsteered_test_accuracy"], n_base, _BASE_COLOR, -width / 2),
        (
            "steered (cell selected on val)",
            rows["test_accuracy"],
            rows["test_n"],
            _STEER_COLOR,
            width / 2,
        ),
    ]
    for name, accs, ns, color, offset in series:
        accs = accs.astype(float).to_numpy()
        bounds = np.array([_interval(a, n) for a, n in zip(accs, ns.astype(float))]).reshape(-1, 2)
        err = np.vstack([accs - bounds[:, 0], bounds[:, 1] - accs])
        shown = np.nan_to_num(accs)
        ax.bar(
            x + offset,
            shown,
            width,
            color=color,
            label=name,
            yerr=np.nan_to_num(err),
            capsize=3,
            error_kw={"elinewidth": 1},
        )
        for xi, acc, high in zip(x + offset, accs, bounds[:, 1]):
            if np.isfinite(acc):
                ax.text(
                    xi,
                    (high if np.isfinite(high) else acc) + 0.015,
                    f"{acc:.2f}",
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            else:
                ax.text(
                    xi,
                    0.02,
                    "test not\nscored",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                    color="dimgray",
                )
    ax.set_xticks(x, ["\n".join(str(row[k]) for k in label_keys) for _, row in rows.iterrows()])
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("test accuracy")
    ax.spines[["top", "right"]].set_visible(False)
    fig.legend(loc="outside lower center", ncols=2, frameon=False, fontsize=8)
    title_keys = [k for k in ("model", "benchmark") if k in rows and k not in label_keys]
    prefix = _label(rows.iloc[0], title_keys) + ": " if title_keys and len(rows) else ""
    ax.set_title(f"{prefix}test accuracy (95% Wilson CI)", fontsize=10)
    return save_figure(fig, path)


test_bars.__test__ = False  # a figure function, not a pytest test


# --------------------------------------------------------------------------- per run


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


def write_figures(results: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write ``val_heatmap_<method>.png`` per steered method and ``test_bars.png``.

    Args:
        results: Rows in the ``results.parquet`` format (one run or merged runs).
        out_dir: Folder for the PNGs (created if needed).

    Returns:
        The paths written. With no steered val rows, nothing is written.
    """
    out_dir = Path(out_dir)
    steered = results[(results["method"] != UNSTEERED) & (results["split"] == "val")]
    written = []
    for method in sorted(steered["method"].unique()):
        path = out_dir / f"val_heatmap_{_safe_name(method)}.png"
        val_heatmap(results, method, path)
        written.append(path)
    if not steered.empty:
        test_bars(results, out_dir / "test_bars.png")
        written.append(out_dir / "test_bars.png")
    return written


def write_run_figures(run_dir: str | Path) -> list[Path]:
    """Read ``results.parquet`` under ``run_dir`` and write its figures to ``run_dir/figures``.

    Args:
        run_dir: A run dir (or a multirun dir: every ``results.parquet`` under it is merged).

    Returns:
        The paths written.

    Raises:
        NoResultsError: No ``results.parquet`` under ``run_dir``.
    """
    return write_figures(load_runs([run_dir]), Path(run_dir) / "figures")
