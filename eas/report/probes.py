"""Figures and tables of a probe run (``experiment=probe``).

- ``auroc_by_layer``: AUROC per layer of each probe with its 95% CI band, the band of the
  random-direction null (2.5-97.5th percentile) and its best direction, CCS and the lexical
  ablation where present; one panel per pooling.
- ``roc_curves``: ROC curves of the probes at the best layer.
- ``accuracy_coverage_figure``: the error probe's accuracy-coverage curve against the
  model's own max letter probability.
- ``summary_markdown``: the run's ``summary_table.md`` (headline rows in the format
  experiment | metric | value | 95% CI | p-value, then one row per layer).

Figures use ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot state), like
``eas.report.figures``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from eas.report.figures import save_figure
from eas.report.seeds import (
    HEADLINE_COLUMNS,
    fmt_ci,
    fmt_p,
    headline_table,
    probe_headline,
    probe_seed_table,
)
from eas.report.tables import to_markdown

_COLORS = {"logreg": "#2166ac", "mean_diff": "#d6604d", "ccs": "#1b7837", "logreg_lexical": "#762a83",
           "random": "#9e9e9e", "max_prob": "#9e9e9e", "probe": "#2166ac"}
_NAMES = {"logreg": "logistic regression", "mean_diff": "mean difference", "ccs": "CCS (pairs)",
          "logreg_lexical": "logistic, lexical ablation", "max_prob": "model max letter prob.",
          "probe": "error probe P(right)"}


def auroc_by_layer(df: pd.DataFrame, best: tuple[str, int] | None = None, title: str = "",
                   path: str | Path | None = None) -> Figure:
    """AUROC by layer with CI bands and the random-direction band (``probe_results`` rows)."""
    pools = list(dict.fromkeys(df["pooling"]))
    fig = Figure(figsize=(6.2 * len(pools), 4.2))
    axes = fig.subplots(1, len(pools), squeeze=False)[0]
    for ax, pool in zip(axes, pools):
        d = df[df["pooling"] == pool]
        rnd = d[d["probe"] == "random"].sort_values("layer")
        if not rnd.empty and rnd["auroc_low"].notna().any():
            ax.fill_between(rnd["layer"], rnd["auroc_low"], rnd["auroc_high"], color=_COLORS["random"], alpha=0.3,
                            lw=0, label="random directions (95% band)")
            ax.plot(rnd["layer"], rnd["random_best"], ":", color="#616161", lw=1, label="best random direction")
        for probe in ("logreg", "mean_diff", "ccs", "logreg_lexical"):
            p = d[d["probe"] == probe].sort_values("layer")
            if p.empty or p["auroc"].isna().all():
                continue
            style = "--" if probe in ("ccs", "logreg_lexical") else "-"
            ax.plot(p["layer"], p["auroc"], style, marker="o", ms=3, color=_COLORS[probe], label=_NAMES[probe])
            if probe != "logreg_lexical":
                ax.fill_between(p["layer"], p["auroc_low"], p["auroc_high"], color=_COLORS[probe], alpha=0.15, lw=0)
        ax.axhline(0.5, color="black", lw=0.6)
        if best is not None and best[0] == pool:
            ax.axvline(best[1], color="black", lw=0.6, ls="--")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("AUROC (held out)")
        low = np.nanmin(d[["auroc", "auroc_low"]].to_numpy(float)) if d["auroc"].notna().any() else 0.3
        ax.set_ylim(min(0.3, low - 0.03), 1.02)
        ax.set_title(f"pooling: {pool}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=130)


def roc_curves(labels: np.ndarray, scores: dict[str, np.ndarray], title: str = "",
               path: str | Path | None = None) -> Figure:
    """ROC curves of ``scores`` (``{probe: [n]}``) against ``labels`` (``[n]``)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.subplots()
    for name, s in scores.items():
        ok = np.isfinite(s)
        fpr, tpr, _ = roc_curve(labels[ok], s[ok])
        ax.plot(fpr, tpr, color=_COLORS.get(name), label=f"{_NAMES.get(name, name)} "
                                                         f"(AUROC {roc_auc_score(labels[ok], s[ok]):.3f})")
    ax.plot([0, 1], [0, 1], color="black", lw=0.6, ls="--")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=130)


def accuracy_coverage_figure(curves: dict[str, Any], threshold: float, title: str = "",
                             path: str | Path | None = None) -> Figure:
    """Accuracy on answered items vs coverage, for the probe and the max-probability baseline."""
    fig = Figure(figsize=(5.0, 4.2))
    ax = fig.subplots()
    for name in ("probe", "max_prob"):
        c = curves[name]
        ax.step(np.r_[0.0, c.coverage], np.r_[c.accuracy[0], c.accuracy], where="pre", color=_COLORS[name],
                label=f"{_NAMES[name]} (area {c.area:.3f})")
    cov, acc = curves["threshold_point"]
    if acc is not None:
        ax.plot([cov], [acc], "o", color=_COLORS["probe"], label=f"P(right) >= {threshold:g}")
    full = curves["probe"].accuracy[-1]
    ax.axhline(full, color="black", lw=0.6, ls="--", label=f"no abstention ({full:.3f})")
    ax.set_xlabel("coverage (fraction answered)")
    ax.set_ylabel("accuracy on answered items")
    ax.set_xlim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=130)


def write_probe_figures(out: str | Path, df: pd.DataFrame, summary: dict, labels: np.ndarray,
                        best_scores: dict[str, np.ndarray], curves: dict | None) -> list[Path]:
    """The run's figures into ``out/figures``; returns the paths written."""
    fig_dir = Path(out) / "figures"
    b = summary["best"]
    what = f"{summary['model']} · {summary['benchmark']} · {summary['target']} · {summary['steer_target']}"
    paths = [fig_dir / "auroc_by_layer.png", fig_dir / "roc_best_layer.png"]
    auroc_by_layer(df, (b["pooling"], b["layer"]), f"{what} ({summary['evaluation']})", paths[0])
    roc_curves(labels, best_scores, f"{what}\nbest layer L{b['layer']} ({b['pooling']})", paths[1])
    if curves is not None:
        paths.append(fig_dir / "accuracy_coverage.png")
        accuracy_coverage_figure(curves, summary["abstention"]["threshold"],
                                 f"{what}\nerror probe at L{b['layer']} ({b['pooling']})", paths[-1])
    return paths


# --------------------------------------------------------------------------- tables


def _v(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def headline_rows(summary: dict) -> pd.DataFrame:
    """The run's headline numbers at its best layer, as ``HEADLINE_COLUMNS`` rows."""
    b = summary["best"]
    exp = (f"probe {summary['target']} on {summary['benchmark']} ({summary['model']}) "
           f"{summary['steer_target']}/{b['pooling']} L{b['layer']}")
    rnd = b.get("random") or {}
    n_rnd = rnd.get("n_directions", "N")
    rows = []
    for name in ("logreg", "mean_diff"):
        r = b[name]
        rows.append({"experiment": exp, "metric": f"{name} AUROC; p: vs {n_rnd} random directions, "
                                                  f"holm over {b.get('n_compared', 1)} layer(s)",
                     "value": _v(r["auroc"]), "95% CI": fmt_ci(r["auroc_low"], r["auroc_high"]),
                     "p-value": fmt_p(r["p_random"], r.get("p_random_holm"), "holm")})
        rows.append({"experiment": exp, "metric": f"{name} accuracy", "value": _v(r["accuracy"]),
                     "95% CI": fmt_ci(r["accuracy_low"], r["accuracy_high"]), "p-value": ""})
    if rnd:
        rows.append({"experiment": exp, "metric": f"random directions AUROC: best of {n_rnd} (95% band)",
                     "value": _v(rnd["best"]), "95% CI": fmt_ci(rnd["low"], rnd["high"]), "p-value": ""})
    if "ccs" in b:
        c = b["ccs"]
        rows.append({"experiment": exp, "metric": "CCS pair accuracy (unsupervised)", "value": _v(c["accuracy"]),
                     "95% CI": fmt_ci(c["accuracy_low"], c["accuracy_high"]), "p-value": ""})
        rows.append({"experiment": exp, "metric": "CCS accuracy / logreg pair accuracy",
                     "value": f"{_v(c['fraction_of_supervised'])} (logreg {_v(c['logreg_pair_accuracy'])})",
                     "95% CI": "", "p-value": ""})
    if "lexical" in summary:
        lx = summary["lexical"]
        rows.append({"experiment": exp, "metric": f"logreg AUROC without {lx['words']}",
                     "value": f"{_v(lx['auroc'])} (drop {lx['auroc_drop']:+.3f})",
                     "95% CI": fmt_ci(lx["auroc_low"], lx["auroc_high"]), "p-value": ""})
    base = summary.get("baseline", {})
    if "letter_auroc" in base:
        rows.append({"experiment": exp, "metric": "letter identity alone AUROC (baseline)",
                     "value": _v(base["letter_auroc"]), "95% CI": "", "p-value": ""})
    if "max_prob_auroc" in base:
        rows.append({"experiment": exp, "metric": "model max letter prob. AUROC for right/wrong (baseline)",
                     "value": _v(base["max_prob_auroc"]),
                     "95% CI": fmt_ci(base["max_prob_auroc_low"], base["max_prob_auroc_high"]), "p-value": ""})
    if "abstention" in summary:
        a = summary["abstention"]
        p, m = a["probe"], a["max_prob"]
        rows.append({"experiment": exp, "metric": f"accuracy answering when P(right) >= {a['threshold']:g} "
                                                  f"(coverage {p['coverage']:.2f}; all items {a['accuracy_all']:.3f})",
                     "value": _v(p["accuracy"]), "95% CI": fmt_ci(p["accuracy_low"], p["accuracy_high"]),
                     "p-value": ""})
        rows.append({"experiment": exp, "metric": "max-prob baseline at the same coverage",
                     "value": _v(m["accuracy_at_probe_coverage"]), "95% CI": "", "p-value": ""})
        half = a.get("at_half_coverage")
        if half:
            rows.append({"experiment": exp, "metric": "accuracy at 50% coverage: probe vs max prob",
                         "value": f"{_v(half['probe'])} vs {_v(half['max_prob'])}", "95% CI": "", "p-value": ""})
        rows.append({"experiment": exp, "metric": "area under accuracy-coverage: probe vs max prob",
                     "value": f"{_v(p['area'])} vs {_v(m['area'])}", "95% CI": "", "p-value": ""})
    return pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))


def headline_markdown(summary: dict) -> str:
    return headline_table(headline_rows(summary))


def layer_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (pooling, layer): each probe's AUROC [95% CI], p vs random, CCS, lexical."""
    rows = []
    for (pool, layer), d in df.groupby(["pooling", "layer"], sort=True):
        by = {r["probe"]: r for r in d.to_dict("records")}
        row = {"pooling": pool, "layer": int(layer)}
        for name in ("logreg", "mean_diff"):
            r = by[name]
            row[f"{name} AUROC [95% CI]"] = f"{r['auroc']:.3f} {fmt_ci(r['auroc_low'], r['auroc_high'])}"
            row[f"{name} p_random (holm)"] = fmt_p(r["p_random"], r.get("p_random_holm"), "holm").replace("holm ", "")
        r = by["logreg"]
        row["logreg acc [95% CI]"] = f"{r['accuracy']:.3f} {fmt_ci(r['accuracy_low'], r['accuracy_high'])}"
        rnd = by.get("random")
        if rnd is not None:
            row["random 95% band (best)"] = f"{fmt_ci(rnd['auroc_low'], rnd['auroc_high'])} ({_v(rnd['random_best'])})"
        if "ccs" in by:
            c = by["ccs"]
            row["CCS acc (of logreg)"] = f"{_v(c['accuracy'])} ({_v(c['ccs_fraction'], 2)})"
        if "logreg_lexical" in by:
            lx = by["logreg_lexical"]
            row["lexical AUROC (drop)"] = f"{_v(lx['auroc'])} ({lx['auroc_drop']:+.3f})"
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: dict, df: pd.DataFrame) -> str:
    """The run's ``summary_table.md``."""
    b = summary["best"]
    lines = [
        f"# probe: {summary['target']} on {summary['benchmark']} ({summary['model']}, {summary['steer_target']})",
        "",
        (f"{summary['n_items']} items, {summary['n_rows']} rows ({summary['n_pos']} positive); evaluation: "
         f"{summary['evaluation']}; best layer chosen on {b['selected_on']}. AUROC CIs: stratified "
         f"bootstrap; accuracy CIs: Wilson; p_random: empirical p-value of the probe's AUROC among "
         f"random unit directions (each signed in its favour, so conservative), in brackets Holm-adjusted "
         f"over the {b.get('n_compared', 1)} (pooling, layer) cells compared. Without signal, "
         f"out-of-fold AUROC drifts below 0.5 (a held-out item is missing from its own class's "
         f"training mean), so values under 0.5 read as no signal, not an inverted one."),
        "",
        headline_table(headline_rows(summary)),
        "",
        "## By layer",
        "",
        to_markdown(layer_table(df)),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- many runs


def probe_summaries(run_dirs: Sequence[str | Path]) -> list[dict]:
    """The ``summary.json`` of every probe run dir that has one, each with its ``run_dir``."""
    out = []
    for d in run_dirs:
        s = Path(d) / "summary.json"
        if s.exists():
            out.append({**json.loads(s.read_text()), "run_dir": str(d)})
    return out


def merged_probe_markdown(summaries: list[dict], results: pd.DataFrame) -> str:
    """``probe_table.md`` over many probe runs: each run's headline rows at its own selected layer,
    then, for groups with two or more seeds, AUROC across seeds against the best random direction."""
    lines = ["# eas probe report", "",
             (f"{len(summaries)} probe run(s). Each run's layer (and pooling) was selected by its own protocol "
             "(inner folds or val); AUROC with its bootstrap 95% CI; p-values against the run's random "
             "directions, Holm-adjusted over the layers it compared."), ""]
    if summaries:
        lines.append(headline_table(pd.concat([headline_rows(s) for s in summaries], ignore_index=True)))
    table = probe_seed_table(results)
    if not table.empty and (table["n_seeds"] >= 2).any():
        lines += ["", "## Across seeds", "",
                  ("Per (pooling, layer, probe): mean ± sd of AUROC over seeds, 95% t-interval, paired t-test "
                  "(one-sided) of AUROC over the seed's best random direction, Holm over the rows."), "",
                  headline_table(probe_headline(table[table["n_seeds"] >= 2]))]
    return "\n".join(lines) + "\n"
