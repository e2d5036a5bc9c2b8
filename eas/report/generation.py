"""What experiment=generate shows a reader: the sample sheet and the curves.

- ``sample_sheet``: markdown, one section per prompt, every (condition, cell) of that prompt
  side by side in one table with its scores, because researchers read samples before they
  trust a curve;
- ``write_generation_figures``: the success rate against strength, one line per layer with
  its Wilson band (one panel per condition and prompt group), the fluency cost (the
  unsteered model's perplexity of the steered text) against strength, and the success
  heatmap over layer x strength.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from eas.report.figures import save_figure


def _cell(text: str) -> str:
    """A text as one markdown table cell: pipes escaped, line breaks kept as <br>."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "*(empty)*"


def _order(df: pd.DataFrame) -> pd.DataFrame:
    """Unsteered first, then by layer and strength."""
    return df.assign(_u=df.cell != "unsteered").sort_values(["condition", "_u", "layer", "strength", "sample"]).drop(
        columns="_u")


def sample_sheet(gens: pd.DataFrame, prompts: Sequence, n_prompts: int, score_cols: Sequence[str]) -> str:
    """Markdown: the first ``n_prompts`` prompts, each with every generation made for it.

    Args:
        gens: ``generations.parquet``'s rows (prompt_id, condition, cell, sample, text, scores).
        prompts: the prompt set's prompts, in order (their ids, texts and system prompts).
        n_prompts: how many prompts to show.
        score_cols: the score columns shown beside each text.
    """
    lines = ["# Sample sheet", "",
             (f"{min(n_prompts, len(prompts))} of {len(prompts)} prompts; every condition and cell side by side "
              f"(all of them: generations.parquet)."), ""]
    cols = [c for c in score_cols if c in gens.columns]
    for p in list(prompts)[:n_prompts]:
        head = f"## {p.id}" + (f" ({p.category})" if p.category else "")
        lines += [head, ""]
        if p.system:
            lines += [f"**system:** {_cell(p.system)}", ""]
        lines += [f"> {_cell(p.text)}", ""]
        rows = _order(gens[gens.prompt_id == p.id])
        lines.append("| condition | cell | sample | response | " + " | ".join(cols) + (" |" if cols else ""))
        lines.append("|---|---|---|---|" + "---|" * len(cols))
        for _, r in rows.iterrows():
            scores = " | ".join(f"{r[c]:.3g}" for c in cols)
            lines.append(f"| {r.condition} | {r.cell} | {r['sample']} | {_cell(r.text)} | {scores}" + (" |" if cols else ""))
        lines.append("")
    return "\n".join(lines)


def _panels(curves: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return [(f"condition {c}" + ("" if g == "all" else f" · prompts {g}"), d)
            for (c, g), d in curves.groupby(["condition", "group"], sort=True)]


def _lines(curves: pd.DataFrame, y: str, band: tuple[str, str] | None, ylabel: str, title: str) -> Figure:
    panels = _panels(curves)
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    cmap = colormaps["viridis"]
    layers = sorted(curves.layer.unique())
    for k, (name, d) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for j, L in enumerate(layers):
            r = d[d.layer == L].sort_values("strength")
            color = cmap(j / max(1, len(layers) - 1))
            ax.plot(r.strength, r[y], marker="o", color=color, label=f"layer {L}")
            if band is not None:
                ax.fill_between(r.strength, r[band[0]], r[band[1]], color=color, alpha=0.15, linewidth=0)
            elbow = r[r.elbow] if "elbow" in r else r.iloc[:0]
            if len(elbow):
                ax.scatter(elbow.strength, elbow[y], s=120, facecolors="none", edgecolors=color, linewidths=2)
        ax.set_xlabel("strength")
        ax.set_title(name, fontsize=9)
        if k == 0:
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def _heatmap(curves: pd.DataFrame) -> Figure:
    panels = _panels(curves)
    fig = Figure(figsize=(4.2 * len(panels), 3.4))
    for k, (name, d) in enumerate(panels):
        grid = d.pivot_table(index="layer", columns="strength", values="success_rate")
        ax = fig.add_subplot(1, len(panels), k + 1)
        im = ax.imshow(grid.to_numpy(float), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(np.arange(grid.shape[1]), [f"{s:g}" for s in grid.columns], fontsize=7)
        ax.set_yticks(np.arange(grid.shape[0]), [str(L) for L in grid.index], fontsize=7)
        ax.set_xlabel("strength")
        ax.set_ylabel("layer")
        ax.set_title(name, fontsize=9)
        fig.colorbar(im, ax=ax, label="success rate")
    return fig


def write_generation_figures(curves: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``success_curve.png``, ``success_heatmap.png`` and, with a perplexity scorer,
    ``fluency.png`` under ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    written = [out / "success_curve.png", out / "success_heatmap.png"]
    save_figure(_lines(curves, "success_rate", ("success_low", "success_high"), "success rate",
                       "success against strength (95% Wilson band; circle: the elbow)"), written[0])
    save_figure(_heatmap(curves), written[1])
    if "mean_perplexity" in curves.columns:
        written.append(out / "fluency.png")
        save_figure(_lines(curves, "mean_perplexity", None, "perplexity (unsteered model)",
                           "fluency cost of steering"), written[-1])
    return written
