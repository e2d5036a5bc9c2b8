"""Figures of the causal kinds: the patching effect by layer (and layer x position), mediation by layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eas.report.figures import save_figure


def _band(ax, x, mid, low, high, label, color=None):
    line = ax.plot(x, mid, marker="o", label=label, color=color)[0]
    ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())


def write_patch_figures(table: pd.DataFrame, heat: pd.DataFrame | None, out_dir: str | Path) -> list[Path]:
    """``patch_layers.png`` (effect and change rate per layer, 95% bands) and, for a layer x position
    grid, ``patch_heatmap.png`` (mean effect per layer and position counted from the end)."""
    out = Path(out_dir)
    written = []
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    t = table.sort_values("layer")
    _band(ax, t.layer, t.effect, t.effect_low, t.effect_high, "effect (fraction of the gap)")
    _band(ax, t.layer, t.change_rate, t.change_low, t.change_high, "change rate")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_title("activation patching: clean -> corrupted, every aligned position")
    ax.legend()
    save_figure(fig, out / "patch_layers.png")
    written.append(out / "patch_layers.png")
    if heat is not None and len(heat):
        grid = heat.assign(pos=heat.patch_position.astype(int)).pivot(index="layer", columns="pos", values="effect")
        fig = Figure(figsize=(max(6, 0.25 * grid.shape[1]), max(3, 0.25 * grid.shape[0])))
        ax = fig.add_subplot(1, 1, 1)
        lim = float(np.nanmax(np.abs(grid.to_numpy()))) if np.isfinite(grid.to_numpy()).any() else 1.0
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
        ax.set_yticks(range(len(grid.index)), [str(i) for i in grid.index])
        step = max(1, grid.shape[1] // 16)
        ax.set_xticks(range(0, grid.shape[1], step), [str(c) for c in grid.columns[::step]])
        ax.set_xlabel("position (from the end)")
        ax.set_ylabel("layer")
        ax.set_title("patching effect per (layer, position)")
        fig.colorbar(im, ax=ax)
        save_figure(fig, out / "patch_heatmap.png")
        written.append(out / "patch_heatmap.png")
    return written


def write_mediation_figures(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``mediation.png``: per layer, the indirect effect of the direction and of the whole site, the
    direct effect and each steering strength, against the total effect (prompting)."""
    out = Path(out_dir)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    for effect, g in table.groupby("effect", sort=False):
        if effect == "total":
            ax.axhline(float(g.value.mean()), color="black", ls="--", label="total (prompting)")
            continue
        g = g.sort_values("layer")
        _band(ax, g.layer, g.value, g.low, g.high, effect)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("change of the logit difference")
    ax.set_title("causal mediation by layer")
    ax.legend(fontsize=7)
    save_figure(fig, out / "mediation.png")
    return [out / "mediation.png"]
