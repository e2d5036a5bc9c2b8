"""Statistics across seeds: ``eas -m seed=range(15) ...`` reported as mean +- sd, 95% CI and a
paired test against the unsteered model, per benchmark and method.

Each seed is one replicate of the whole protocol (its own train/val/test split and its own
val-selected cell), so the unit of the test is the seed, not the item:

- per (model, benchmark, method, steer_target) and seed: the val-selected cell's test
  accuracy and the same seed's unsteered test accuracy (``tables.select_best``);
- across seeds: mean +- sd and the 95% t-interval of each, of their difference, the paired
  t-test and Wilcoxon signed-rank test of steered vs unsteered, Cohen's d_z;
- the paired t-test p-values of all groups adjusted together with a named correction
  (Holm by default: family-wise error; ``bh``: Benjamini-Hochberg false discovery rate).

When the paired differences are one value in every seed (zero variance, e.g. two seeds that
both gain exactly 0.1), the t statistic is undefined: ``eas.core.stats`` gives NaN for its
p-value, the difference's t-interval and Cohen's d_z (``zero_variance`` is true) and tables
print "undefined (zero variance)", never p = 0 (nor the ~1e-16 that float rounding of the
differences would give). Groups also split by ``setup`` (``eas.report.setups``): seeds of
different setups are never paired into one test.

Probe runs (``probe_results.parquet``) aggregate the same way per (pooling, layer, probe):
AUROC mean +- sd and 95% CI across seeds, paired against the best random direction of each
seed.

``headline_table`` renders any of these in the seed-000 summary-table format: experiment,
metric, value, 95% CI, p-value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from eas.core import stats
from eas.report.setups import SETUP, with_setup
from eas.report.tables import load_results_files, read_results_file, select_best, to_markdown

SEED_BY: tuple[str, ...] = ("model", "benchmark", "method", "steer_target", "position", SETUP)
"""Groups aggregated over seeds (one row each)."""

PROBE_BY: tuple[str, ...] = ("model", "benchmark", "target", "steer_target", "pooling", "layer", "probe", SETUP)
"""Probe groups aggregated over seeds (one row each)."""
PROBE_FILE = "probe_results.parquet"
PROBE_COLUMNS: tuple[str, ...] = (*(c for c in PROBE_BY if c != SETUP), "seed", "auroc", "random_best")
"""Columns a ``probe_results.parquet`` must have to be reported."""
HEADLINE_COLUMNS: tuple[str, ...] = ("experiment", "metric", "value", "95% CI", "p-value")
CORRECTION_NAMES = {"holm": "Holm-Bonferroni (family-wise error)",
                    "bh": "Benjamini-Hochberg (false discovery rate)", "none": "none"}
UNDEFINED_P = "undefined (zero variance)"
"""What tables print for the p-value of a paired test whose differences have zero variance."""


# --------------------------------------------------------------------------- steering


def per_seed(results: pd.DataFrame, by: Sequence[str] = SEED_BY) -> pd.DataFrame:
    """One row per (group, seed): the val-selected cell on test and the unsteered baseline.

    Args:
        results: Rows in the ``results.parquet`` format (``tables.load_runs``).
        by: Group columns (``seed`` is added).

    Returns:
        Columns ``by``, ``seed``, ``cell``, ``test_accuracy``, ``unsteered_test_accuracy``,
        ``delta`` and ``test_n``; seeds whose selected cell was never scored on test are
        dropped.
    """
    best = select_best(results, [*by, "seed"])
    if best.empty:
        return best
    best = best[~best["test_missing"]]
    return best[[*by, "seed", "cell", "test_accuracy", "unsteered_test_accuracy", "delta", "test_n"]] \
        .sort_values([*by, "seed"]).reset_index(drop=True)


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired tests of ``a - b`` over seeds; NaN where fewer than 2 seeds, and for the t-test,
    its interval and d_z where the differences have zero variance (``zero_variance``)."""
    nan = math.nan
    if len(a) < 2:
        return {"t": nan, "p_ttest": nan, "p_wilcoxon": nan, "cohens_dz": nan,
                "delta_ci_low": nan, "delta_ci_high": nan, "zero_variance": False}
    t = stats.paired_ttest(a, b)
    return {"t": t.statistic, "p_ttest": t.p_value, "p_wilcoxon": stats.wilcoxon(a, b).p_value,
            "cohens_dz": stats.cohens_d_paired(a, b), "delta_ci_low": t.ci95[0], "delta_ci_high": t.ci95[1],
            "zero_variance": bool(np.isnan(t.p_value))}


def _adjust(p: pd.Series, correction: str) -> pd.Series:
    """Adjust the finite p-values of ``p`` together; NaN stays NaN."""
    out = pd.Series(np.nan, index=p.index)
    ok = p.notna().to_numpy()
    if ok.any():
        out[ok] = stats.correct(p[ok].to_numpy(dtype=float), correction)
    return out


def seed_table(results: pd.DataFrame, by: Sequence[str] = SEED_BY, correction: str = "holm") -> pd.DataFrame:
    """Across seeds, per group: steered and unsteered test accuracy, their difference, the
    paired tests, and p-values adjusted over all groups.

    Args:
        results: Rows in the ``results.parquet`` format from runs with different ``seed``.
        by: Group columns.
        correction: ``holm``, ``bh`` or ``none`` (``eas.core.stats.correct``).

    Returns:
        One row per group: ``by``, ``n_seeds``, ``test_mean``, ``test_std``,
        ``test_ci_low``/``high`` (95% t-interval), ``unsteered_mean``, ``unsteered_std``,
        ``unsteered_ci_low``/``high``, ``delta_mean``, ``delta_std``, ``delta_ci_low``/``high``,
        ``t``, ``p_ttest`` (paired t-test, two-sided), ``p_wilcoxon``, ``cohens_dz``,
        ``zero_variance`` (the differences are one value: ``t``, ``p_ttest``, ``cohens_dz`` and
        the delta interval are NaN), ``p_adjusted`` (``p_ttest`` adjusted over the groups that
        have one) and ``correction`` (its name). Statistics that need two seeds are NaN with one.
    """
    seeds = per_seed(results, by)
    rows = []
    if seeds.empty:
        return pd.DataFrame(columns=[*by, "n_seeds", "p_adjusted", "correction"])
    for keys, g in seeds.groupby(list(by), sort=True, dropna=False):
        a = g["test_accuracy"].to_numpy(float)
        b = g["unsteered_test_accuracy"].to_numpy(float)
        sa, sb, sd = stats.summarize_seeds(a), stats.summarize_seeds(b), stats.summarize_seeds(a - b)
        rows.append({
            **dict(zip(by, keys if isinstance(keys, tuple) else (keys,))), "n_seeds": len(g),
            "test_mean": sa.mean, "test_std": sa.std, "test_ci_low": sa.ci95_low, "test_ci_high": sa.ci95_high,
            "unsteered_mean": sb.mean, "unsteered_std": sb.std, "unsteered_ci_low": sb.ci95_low,
            "unsteered_ci_high": sb.ci95_high, "delta_mean": sd.mean, "delta_std": sd.std, **_paired(a, b),
        })
    table = pd.DataFrame(rows)
    table["p_adjusted"] = _adjust(table["p_ttest"], correction)
    table["correction"] = correction
    return table


# --------------------------------------------------------------------------- probes


def load_probe_runs(paths: Iterable[str | Path], skipped: list[str] | None = None) -> pd.DataFrame:
    """Concatenate every ``probe_results.parquet`` under ``paths``, each tagged with its setup.

    Args:
        paths: Run dirs, folders holding them (searched recursively), or the files.
        skipped: As for ``tables.load_runs``: given a list, each file that cannot be read or
            lacks a column of ``PROBE_COLUMNS`` is left out and its ``"<file>: <reason>"``
            appended; ``None`` raises.

    Returns:
        The rows with ``run_dir``, ``setup`` and the differing ``setup.<field>`` columns
        (``eas.report.setups.tag_setups``).

    Raises:
        NoResultsError: A path holds no ``probe_results.parquet``, or none is usable.
        BadResultsError: A file is unusable and ``skipped`` is ``None``.
    """
    return load_results_files(paths, PROBE_FILE, lambda f: read_results_file(f, PROBE_COLUMNS), skipped)


def probe_seed_table(probe_results: pd.DataFrame, by: Sequence[str] = PROBE_BY,
                     correction: str = "holm") -> pd.DataFrame:
    """Probe AUROC across seeds, paired per seed against the best random direction.

    Args:
        probe_results: Rows of ``probe_results.parquet`` files (``load_probe_runs``).
        by: Group columns.
        correction: Adjustment of the paired p-values over all groups.

    Returns:
        One row per group of supervised probes (``logreg``, ``mean_diff``): ``by``,
        ``n_seeds``, ``auroc_mean``, ``auroc_std``, ``auroc_ci_low``/``high``,
        ``random_best_mean``, ``p_ttest`` (paired t-test of AUROC - best random AUROC,
        one-sided: greater; NaN when those differences have zero variance), ``zero_variance``,
        ``p_adjusted``, ``correction``. Rows without a ``setup`` column are one setup.
    """
    probe_results = with_setup(probe_results)
    df = probe_results[probe_results["probe"].isin(["logreg", "mean_diff"])]
    rnd = probe_results[probe_results["probe"] == "random"]
    keys = [c for c in by if c != "probe"]
    rnd = rnd[[*keys, "seed", "random_best"]].drop_duplicates([*keys, "seed"])
    df = df.drop(columns=["random_best"], errors="ignore").merge(rnd, on=[*keys, "seed"], how="left")
    rows = []
    for k, g in df.groupby(list(by), sort=True, dropna=False):
        g = g.drop_duplicates("seed")
        a, r = g["auroc"].to_numpy(float), g["random_best"].to_numpy(float)
        s = stats.summarize_seeds(a)
        ok = np.isfinite(r)
        p = stats.paired_ttest(a[ok], r[ok], alternative="greater").p_value if ok.sum() >= 2 else math.nan
        flat = ok.sum() >= 2 and bool(np.isnan(p))
        rows.append({**dict(zip(by, k)), "n_seeds": len(g), "auroc_mean": s.mean, "auroc_std": s.std,
                     "auroc_ci_low": s.ci95_low, "auroc_ci_high": s.ci95_high,
                     "random_best_mean": float(np.nanmean(r)) if ok.any() else math.nan, "p_ttest": p,
                     "zero_variance": flat})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_adjusted"] = _adjust(table["p_ttest"], correction)
    table["correction"] = correction
    return table


# --------------------------------------------------------------------------- the headline table


def fmt_ci(low: float, high: float, digits: int = 3) -> str:
    """``[low, high]``, or ``n/a`` when either end is missing."""
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return "n/a"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def fmt_p(p: float | None, adjusted: float | None = None, correction: str | None = None) -> str:
    """``0.012``, ``1.0e-03``, with ``(holm 0.036)`` when an adjusted value is given."""
    def one(v: float) -> str:
        return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"

    if p is None or not np.isfinite(p):
        return "n/a"
    out = one(p)
    if adjusted is not None and np.isfinite(adjusted) and correction and correction != "none":
        out += f" ({correction} {one(adjusted)})"
    return out


def _p_text(row: dict) -> str:
    """The p-value cell of a ``seed_table`` or ``probe_seed_table`` row."""
    if row.get("zero_variance"):
        return UNDEFINED_P
    return fmt_p(row["p_ttest"], row.get("p_adjusted"), row.get("correction"))


def _mean_sd(mean: float, sd: float, digits: int = 3) -> str:
    return f"{mean:.{digits}f}" if not np.isfinite(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def seed_headline(table: pd.DataFrame, by: Sequence[str] = SEED_BY) -> pd.DataFrame:
    """``seed_table`` rows as headline rows (``HEADLINE_COLUMNS``): per group, the steered and
    unsteered test accuracy and their difference with the paired t-test's p-value."""
    rows = []
    several_setups = SETUP in table and table[SETUP].nunique() > 1
    for r in table.itertuples(index=False):
        d = r._asdict()
        exp = f"{d.get('method')} @ {d.get('steer_target')} on {d.get('benchmark')} ({d.get('model')})"
        if several_setups:
            exp += f" [setup {d[SETUP]}]"
        n = f"{d['n_seeds']} seeds"
        rows += [
            {"experiment": exp, "metric": f"test accuracy, mean ± sd ({n})",
             "value": _mean_sd(d["test_mean"], d["test_std"]), "95% CI": fmt_ci(d["test_ci_low"], d["test_ci_high"]),
             "p-value": ""},
            {"experiment": exp, "metric": "unsteered test accuracy",
             "value": _mean_sd(d["unsteered_mean"], d["unsteered_std"]),
             "95% CI": fmt_ci(d["unsteered_ci_low"], d["unsteered_ci_high"]), "p-value": ""},
            {"experiment": exp, "metric": "Δ vs unsteered (paired t over seeds)",
             "value": f"{d['delta_mean']:+.3f}", "95% CI": fmt_ci(d["delta_ci_low"], d["delta_ci_high"]),
             "p-value": _p_text(d)},
        ]
    return pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))


def probe_headline(table: pd.DataFrame) -> pd.DataFrame:
    """``probe_seed_table`` rows as headline rows."""
    rows = []
    several_setups = SETUP in table and table[SETUP].nunique() > 1
    for r in table.itertuples(index=False):
        d = r._asdict()
        rows.append({
            "experiment": f"probe {d['target']} on {d['benchmark']} ({d['model']}) {d['steer_target']}/"
                          f"{d['pooling']} L{d['layer']}" + (f" [setup {d[SETUP]}]" if several_setups else ""),
            "metric": f"{d['probe']} AUROC, mean ± sd ({d['n_seeds']} seeds); p: > best random direction",
            "value": _mean_sd(d["auroc_mean"], d["auroc_std"]), "95% CI": fmt_ci(d["auroc_ci_low"], d["auroc_ci_high"]),
            "p-value": _p_text(d),
        })
    return pd.DataFrame(rows, columns=list(HEADLINE_COLUMNS))


def headline_table(rows: pd.DataFrame) -> str:
    """Markdown of headline rows: experiment | metric | value | 95% CI | p-value."""
    return to_markdown(rows[list(HEADLINE_COLUMNS)].astype(str))


def seed_markdown(results: pd.DataFrame, by: Sequence[str] = SEED_BY, correction: str = "holm") -> str | None:
    """The "across seeds" section of a report, or None when no group has two or more seeds.

    The text names the test (paired t-test over seeds, two-sided) and the correction.
    """
    table = seed_table(results, by, correction)
    if table.empty or not (table["n_seeds"] >= 2).any():
        return None
    flat = int(table["zero_variance"].sum())
    undefined = (f" {flat} group(s) had the same steered - unsteered difference in every seed: with zero "
                 f"variance the t-test is {UNDEFINED_P}, not p = 0.") if flat else ""
    return "\n".join([
        "## Across seeds",
        "",
        ("Each seed is a replicate of the protocol (own split, own val-selected cell). Values are "
         "mean ± sd over seeds with a 95% t-interval; p-values are from the paired t-test of test "
         "accuracy, steered vs unsteered, paired by seed (two-sided), adjusted for "
         f"{int(table['p_ttest'].notna().sum())} comparisons with {CORRECTION_NAMES[correction]}.{undefined}"),
        "",
        headline_table(seed_headline(table, by)),
    ]) + "\n"


def write_seed_report(results: pd.DataFrame, out: str | Path, by: Sequence[str] = SEED_BY,
                      correction: str = "holm") -> str | None:
    """Write ``seed_summary.csv`` (``seed_table``) and ``seed_summary_table.md`` into ``out``.

    Returns:
        The "across seeds" markdown section (for the report's ``summary_table.md``), or None
        (and nothing written) when no group has two or more seeds.
    """
    text = seed_markdown(results, by, correction)
    if text is None:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_table(results, by, correction).to_csv(out / "seed_summary.csv", index=False)
    (out / "seed_summary_table.md").write_text("# eas report: across seeds\n\n" + text)
    return text
