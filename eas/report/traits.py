"""What experiment=traits shows a reader.

- ``trajectories.png``: per comparison axis (a factor, the variants), the mean projection at
  each token relative to the response's start, one line per level with its 95% band, at the
  (layer, trait) where the axis separates most;
- ``distributions.png``: the per-prompt scores of every (first factor level x group) cell as
  histograms on one grid (the 2x2 of harmful/benign x prefill/none);
- ``categories.png``: the mean score per prompt category and condition, with intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from eas.report.figures import save_figure


def _strongest(comps: pd.DataFrame, axis: str) -> tuple[int, str] | None:
    d = comps[comps.axis == axis]
    if d.empty or d.cohens_d.abs().isna().all():
        return None
    r = d.loc[d.cohens_d.abs().fillna(-1).idxmax()]
    return int(r.layer), str(r.trait)


def trajectories(toks: pd.DataFrame, comps: pd.DataFrame, axes: Sequence[str], path: Path | None) -> Figure | None:
    axes = [a for a in axes if a in toks.columns and toks[a].nunique() > 1]
    if toks.empty or not axes:
        return None
    fig = Figure(figsize=(5.5 * len(axes), 3.8))
    cmap = colormaps["tab10"]
    for k, axis in enumerate(axes):
        ax = fig.add_subplot(1, len(axes), k + 1)
        where = _strongest(comps, axis) or (int(toks.layer.iloc[0]), str(toks.trait.iloc[0]))
        d = toks[(toks.layer == where[0]) & (toks.trait == where[1])]
        for j, (level, g) in enumerate(d.groupby(axis, sort=False)):
            by = g.groupby("rel").projection.agg(["mean", "std", "count"])
            by = by[by["count"] >= 2]
            half = 1.96 * by["std"].to_numpy(float) / np.sqrt(by["count"].to_numpy(float))
            x, m = by.index.to_numpy(), by["mean"].to_numpy(float)
            ax.plot(x, m, color=cmap(j % 10), label=str(level), lw=1.4)
            ax.fill_between(x, m - half, m + half, color=cmap(j % 10), alpha=0.2, lw=0)
        ax.axvline(0, color="0.6", lw=0.8, ls="--")
        ax.set(title=f"{axis} (layer {where[0]}, {where[1]})", xlabel="token (0 = first response token)",
               ylabel="projection")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def distributions(scores: pd.DataFrame, factors: Sequence[str], path: Path | None) -> Figure | None:
    if scores.empty:
        return None
    layer, trait = scores.layer.iloc[0], scores.trait.iloc[0]
    if len(scores.layer.unique()) > 1:  # the middle layer monitored
        layer = sorted(scores.layer.unique())[len(scores.layer.unique()) // 2]
    d = scores[(scores.layer == layer) & (scores.trait == trait) & (scores.variant == scores.variant.iloc[0])]
    rows = factors[0] if factors else None
    row_levels = list(dict.fromkeys(d[rows])) if rows else [None]
    groups = sorted(d.group.unique())
    fig = Figure(figsize=(3.2 * len(groups), 2.4 * len(row_levels)))
    bins = np.histogram_bin_edges(d.score.to_numpy(float), bins=20)
    for i, level in enumerate(row_levels):
        for j, g in enumerate(groups):
            ax = fig.add_subplot(len(row_levels), len(groups), i * len(groups) + j + 1)
            cell = d[(d.group == g) & ((d[rows] == level) if rows else True)]
            ax.hist(cell.score.to_numpy(float), bins=bins, color=colormaps["tab10"](j % 10), alpha=0.8)
            ax.set_title(f"{g}" + (f" · {rows}={level}" if rows else "") + f" (n={len(cell)})", fontsize=8)
            if i == len(row_levels) - 1:
                ax.set_xlabel(f"score (layer {layer}, {trait})", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def categories(scores: pd.DataFrame, path: Path | None) -> Figure | None:
    d = scores[scores.category != ""]
    if d.empty or d.category.nunique() < 2:
        return None
    layer = sorted(d.layer.unique())[len(d.layer.unique()) // 2]
    d = d[(d.layer == layer) & (d.trait == d.trait.iloc[0]) & (d.variant == d.variant.iloc[0])]
    cats = sorted(d.category.unique())
    conds = list(dict.fromkeys(d.condition))
    groups = sorted(d.group.unique())
    series = [(c, g) for c in conds for g in groups]
    fig = Figure(figsize=(max(6, 0.9 * len(cats) * max(1, len(series)) / 2), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(series)
    for k, (c, g) in enumerate(series):
        s = d[(d.condition == c) & (d.group == g)].groupby("category").score.agg(["mean", "std", "count"]).reindex(cats)
        half = 1.96 * s["std"].to_numpy(float) / np.sqrt(s["count"].clip(lower=1).to_numpy(float))
        ax.bar(np.arange(len(cats)) + k * width, s["mean"].to_numpy(float), width, yerr=half,
               label=f"{c} · {g}", color=colormaps["tab20"](k % 20))
    ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2, cats, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=f"mean score (layer {layer})")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_trait_figures(scores: pd.DataFrame, toks: pd.DataFrame, comps: pd.DataFrame, factors: Sequence[str],
                        folder: Path) -> None:
    trajectories(toks, comps, [*factors, "variant", "group"], folder / "trajectories.png")
    distributions(scores, factors, folder / "distributions.png")
    categories(scores, folder / "categories.png")
