"""Figures of the representation kinds: ``experiment=lens`` (answer rank and probability by layer,
the SVD scree, the vector cosine heatmap, the PCA map with the steering direction) and
``experiment=similarity`` (layer x layer CKA heatmaps, projection correlation by layer).

Built on ``matplotlib.figure.Figure`` with the Agg canvas (``eas.report.figures.save_figure``),
never through pyplot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from eas.report.figures import save_figure


def _band(ax, x, mid, low, high, label, color=None, marker="o"):
    line = ax.plot(x, mid, marker=marker, ms=3, label=label, color=color)[0]
    ax.fill_between(x, low, high, alpha=0.2, color=line.get_color(), lw=0)
    return line


def lens_layers(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """The answer letter's rank (log scale: mean with its band, median) and probability by layer."""
    t = table.sort_values("layer")
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    _band(ax1, t.layer, t.rank_mean + 1, t.rank_low + 1, t.rank_high + 1, "mean rank + 1 (95% CI)")
    ax1.plot(t.layer, t.rank_median + 1, ls="--", label="median rank + 1")
    ax1.set_yscale("log")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("rank of the answer letter + 1")
    ax1.legend(fontsize=8)
    _band(ax2, t.layer, t.prob_mean, t.prob_low, t.prob_high, "P(answer letter) (95% CI)")
    ax2.plot(t.layer, t.top1_rate, ls="--", label="top-1 rate")
    ax2.plot(t.layer, t.letter_accuracy, ls=":", label="lens letter accuracy")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("layer")
    ax2.legend(fontsize=8)
    fig.suptitle("logit lens at the last position")
    return save_figure(fig, path)


def scree(svd_df: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Singular values and cumulative explained variance of one layer's activations."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    c = svd_df.component.to_numpy() + 1
    ax.bar(c, svd_df.explained, color="#2166ac", label="explained")
    ax.plot(c, svd_df.cumulative, color="#d6604d", marker=".", label="cumulative")
    ax.axhline(0.9, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("component")
    ax.set_ylabel("fraction of variance")
    ax.set_xlim(0.4, min(len(c), 50) + 0.6)
    layer = int(svd_df.layer.iloc[0]) if len(svd_df) else -1
    ax.set_title(f"SVD scree, layer {layer}")
    ax.legend()
    return save_figure(fig, path)


def cosine_heatmap(labels: list[str], cos: np.ndarray, path: str | Path | None = None,
                   title: str = "cosine between vectors") -> Figure:
    n = len(labels)
    fig = Figure(figsize=(max(4, 0.45 * n + 2), max(3.5, 0.45 * n + 1)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(cos, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    if n <= 16:
        for i, j in np.ndindex(cos.shape):
            ax.text(j, i, f"{cos[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if abs(cos[i, j]) > 0.6 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, path)


def pca_map(df: pd.DataFrame, info: dict[str, Any], path: str | Path | None = None) -> Figure:
    """Texts in the plane of one layer's top two principal components, coloured by their label, with
    the steering direction's projection drawn from the centre (scaled to the cloud)."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for label, g in df.groupby("label", sort=True):
        ax.scatter(g.pc1, g.pc2, s=12, alpha=0.75, label=f"answer {label}")
    arrow = info.get("arrow")
    if arrow is not None and np.linalg.norm(arrow) > 0:
        spread = float(np.max(np.linalg.norm(df[["pc1", "pc2"]].to_numpy(), axis=1))) or 1.0
        a = np.asarray(arrow) / np.linalg.norm(arrow) * 0.6 * spread
        ax.annotate("", xy=(a[0], a[1]), xytext=(0, 0), arrowprops={"arrowstyle": "->", "lw": 2, "color": "black"})
        ax.text(a[0], a[1], f" vector L{info['vector_layer']} ({info['in_plane']:.2f} in plane)", fontsize=8)
    ev = info.get("explained") or []
    ax.set_xlabel(f"PC1 ({ev[0]:.1%})" if ev else "PC1")
    ax.set_ylabel(f"PC2 ({ev[1]:.1%})" if len(ev) > 1 else "PC2")
    ax.set_title(f"PCA of layer {info['layer']}")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_lens_figures(out_dir: str | Path, table: pd.DataFrame, svd_df: pd.DataFrame, cos_labels: list[str],
                       cos: np.ndarray, pca_df: pd.DataFrame, pca_info: dict[str, Any]) -> list[Path]:
    """``lens_layers.png``, ``svd_scree.png``, ``vector_cosines.png`` (when there are vectors) and ``pca_map.png``."""
    out = Path(out_dir)
    written = [out / "lens_layers.png", out / "svd_scree.png"]
    lens_layers(table, written[0])
    scree(svd_df, written[1])
    if cos_labels:
        cosine_heatmap(cos_labels, cos, out / "vector_cosines.png")
        written.append(out / "vector_cosines.png")
    pca_map(pca_df, pca_info, out / "pca_map.png")
    written.append(out / "pca_map.png")
    return written


def cka_heatmap(cka: np.ndarray, name_a: str, name_b: str, layers_a: list[int], layers_b: list[int],
                title: str = "linear CKA", path: str | Path | None = None, marks: list[tuple[int, int]] | None = None
                ) -> Figure:
    """``[layer_a, layer_b]`` values, model a's layers as rows (bottom to top)."""
    fig = Figure(figsize=(max(4.5, 0.22 * len(layers_b) + 3), max(3.5, 0.22 * len(layers_a) + 1.5)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(cka), aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
    step_a, step_b = max(1, len(layers_a) // 16), max(1, len(layers_b) // 16)
    ax.set_yticks(range(0, len(layers_a), step_a), [str(v) for v in layers_a[::step_a]])
    ax.set_xticks(range(0, len(layers_b), step_b), [str(v) for v in layers_b[::step_b]])
    for i, j in marks or []:
        ax.plot(j, i, "r.", ms=4)
    ax.set_ylabel(f"{name_a} layer")
    ax.set_xlabel(f"{name_b} layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, path)


def projection_layers(proj: pd.DataFrame, threshold: float, name_a: str, name_b: str,
                      path: str | Path | None = None) -> Figure:
    """Per layer pair scored (ordered by model a's layer): the held-out projection correlation with
    its bootstrap band, the permutation null's 95th percentile and the threshold."""
    p = proj.sort_values(["layer_a", "layer_b"])
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(p))
    _band(ax, x, p.correlation, p.low, p.high, "projection correlation (95% CI)")
    ax.plot(x, p.null_q95, ls=":", color="grey", label="shuffled pairing, 95th pct")
    ax.plot(x, p.cka, ls="--", color="#1b7837", label="linear CKA")
    ax.axhline(threshold, color="#d6604d", lw=1, label=f"threshold {threshold:g}")
    step = max(1, len(p) // 16)
    ax.set_xticks(x[::step], [f"{a}->{b}" for a, b in zip(p.layer_a.iloc[::step], p.layer_b.iloc[::step])],
                  rotation=60, fontsize=7)
    ax.set_xlabel(f"{name_a} layer -> {name_b} layer")
    ax.set_title(f"linear map {name_a} -> {name_b}, held-out texts")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_similarity_figures(out_dir: str | Path, pairs: list[dict[str, Any]], threshold: float) -> list[Path]:
    """Per model pair: ``cka_<a>__<b>.png`` and, where layer pairs were scored,
    ``projection_<a>__<b>.png``. ``pairs``: ``{a, b, layers_a, layers_b, cka, projection}``."""
    out = Path(out_dir)
    written = []
    for p in pairs:
        stem = f"{p['a']}__{p['b']}"
        proj = p.get("projection")
        marks = list(zip(proj.ia, proj.ib)) if proj is not None and len(proj) else None
        cka_heatmap(np.asarray(p["cka"], float), p["a"], p["b"], p["layers_a"], p["layers_b"],
                    f"linear CKA{' (debiased)' if p.get('debiased') else ''}", out / f"cka_{stem}.png", marks)
        written.append(out / f"cka_{stem}.png")
        if proj is not None and len(proj):
            projection_layers(proj, threshold, p["a"], p["b"], out / f"projection_{stem}.png")
            written.append(out / f"projection_{stem}.png")
    return written
