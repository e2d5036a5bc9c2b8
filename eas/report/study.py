"""The PAS study's tables over runs: steering across benchmarks, its flips, the sample-size
sweep, the in-context and SFT baselines, and side effects on other benchmarks.

``study_tables(runs)`` returns every table the runs given support (an empty dict when none):

- ``cross_benchmark`` (steer runs): per (model, benchmark, method, steer_target, setup) the mean
  test change over seeds with its 95% interval (the t-interval over seeds; with one seed, that
  run's paired item bootstrap), the paired test against unsteered (the paired t-test over seeds;
  with one seed, the exact McNemar test of its items) and that p Holm-adjusted over the
  benchmarks of each (model, method, steer_target);
- ``flips`` (steer runs): per seed the test items steering fixed and broke
  (``eas.report.tables.cross_benchmark_table``);
- ``sample_size`` (steer runs of two or more train sizes of one benchmark and method): the
  ``cross_benchmark`` rows with their split sizes, by train size;
- ``icl`` (``icl.parquet``), ``side_effects`` (``side_effects.parquet``): those files merged;
- ``sft`` (finetune runs with ``experiment.data=benchmark``, and steer runs of the same model,
  benchmark, seed and split): unsteered | steered (the selected cell) | SFT test accuracy, each
  with its Wilson 95% interval.

Selection is ``eas.report.tables.select_best``'s and the seed statistics ``eas.report.seeds``';
nothing here selects or tests differently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from eas.core import stats
from eas.report.figures import save_figure
from eas.report.seeds import SEED_BY, seed_table
from eas.report.setups import MANIFEST_FILE, SETUP
from eas.report.tables import RESULTS_FILE, SUMMARY_FILE, NoResultsError, cross_benchmark_table, load_runs

ICL_FILE = "icl.parquet"
SIDE_EFFECTS_FILE = "side_effects.parquet"
FAMILY: tuple[str, ...] = ("model", "method", "steer_target", "position")
"""The benchmarks of one family are Holm-adjusted together in ``cross_benchmark``."""
SPLIT_FIELDS: tuple[str, ...] = ("n_train_proportion", "n_val_proportion", "n_test_proportion", "max_sample_size",
                                 "split_rule")
"""The config fields an SFT run and a steer run must share to be compared on one test split."""


def _config(run: Path) -> dict:
    try:
        return json.loads((run / MANIFEST_FILE).read_text()).get("config") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def _summary(run: Path) -> dict:
    try:
        return json.loads((run / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _concat(runs: Sequence[Path], name: str) -> pd.DataFrame:
    frames = [pd.read_parquet(r / name).assign(run_dir=str(r)) for r in runs if (r / name).is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def exact_mcnemar(wrong_to_right: int, right_to_wrong: int) -> float:
    """The exact two-sided McNemar p of ``wrong_to_right`` against ``right_to_wrong`` flips;
    NaN when either count is missing (a run without predictions files)."""
    if pd.isna(wrong_to_right) or pd.isna(right_to_wrong):
        return math.nan
    c, b = int(wrong_to_right), int(right_to_wrong)
    before = np.r_[np.ones(b, bool), np.zeros(c, bool)]
    return stats.mcnemar(before, ~before, exact=True).p_value if b + c else 1.0


def _holm(table: pd.DataFrame, p: str, family: Sequence[str]) -> pd.Series:
    """``table[p]`` Holm-adjusted within each ``family`` group; NaN stays NaN."""
    out = pd.Series(np.nan, index=table.index)
    for _, g in table.groupby(list(family), dropna=False):
        ok = g[p].notna()
        if ok.any():
            out[g.index[ok]] = stats.holm(g.loc[ok, p].to_numpy(float))
    return out


# --------------------------------------------------------------------------- steering


def _split_sizes(results: pd.DataFrame) -> pd.DataFrame:
    """``run_dir -> n_train, n_val, n_test``: the sizes of its unsteered rows."""
    base = results[results["method"] == "unsteered"]
    sizes = base.pivot_table(index="run_dir", columns="split", values="n", aggfunc="first")
    return sizes.rename(columns={s: f"n_{s}" for s in sizes.columns}).reset_index()


def cross_benchmark(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's table and the flips table of steer results (``tables.load_runs``).

    Returns:
        ``(table, flips)``: ``table`` has one row per (model, benchmark, method, steer_target,
        setup): ``n_seeds``, ``n_train``/``n_val``/``n_test``, ``unsteered_mean``,
        ``test_mean``, ``delta_mean``, ``delta_ci_low``/``high``, ``ci`` (how it was made),
        ``wrong_to_right``/``right_to_wrong`` (summed over seeds), ``test`` (the paired test),
        ``p``, ``p_holm`` (over the benchmarks of each ``FAMILY``); ``flips`` has one row per
        seed: the selected cell, its test items fixed and broken, the exact McNemar p.
    """
    per_seed = cross_benchmark_table(results)
    if per_seed.empty:
        return pd.DataFrame(), pd.DataFrame()
    per_seed = per_seed[per_seed["test"].notna()].copy()
    per_seed["run_dir"] = [_test_run(results, r) for r in per_seed.itertuples()]
    per_seed = per_seed.drop(columns="n_test").merge(_split_sizes(results), on="run_dir", how="left")
    per_seed["p_exact"] = [exact_mcnemar(a, b) for a, b in zip(per_seed["wrong_to_right"], per_seed["right_to_wrong"])]
    flips = per_seed[[*SEED_BY[:-1], "seed", SETUP, "best_cell", "n_test", "wrong_to_right", "right_to_wrong",
                      "p_exact"]].rename(columns={"p_exact": "mcnemar_p"})
    seeds = seed_table(results)
    rows = []
    for r in seeds.to_dict("records"):
        g = per_seed[np.logical_and.reduce([per_seed[k] == r[k] for k in SEED_BY])]
        one = g.iloc[0] if len(g) else None
        row = {k: r[k] for k in SEED_BY}
        row.update(n_seeds=int(r["n_seeds"]), **{k: (one[k] if one is not None else math.nan)
                                                 for k in ("n_train", "n_val", "n_test")},
                   unsteered_mean=r["unsteered_mean"], test_mean=r["test_mean"], delta_mean=r["delta_mean"],
                   **{k: (int(g[k].sum()) if g[k].notna().any() else math.nan)
                      for k in ("wrong_to_right", "right_to_wrong")})
        if r["n_seeds"] >= 2:
            row.update(delta_ci_low=r["delta_ci_low"], delta_ci_high=r["delta_ci_high"], ci="t over seeds",
                       test="paired t over seeds", p=r["p_ttest"])
        else:
            low, high = _bootstrap_ci(one)
            row.update(delta_ci_low=low, delta_ci_high=high, ci="paired item bootstrap",
                       test="exact McNemar (items)", p=float(one["p_exact"]) if one is not None else math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = _holm(table, "p", FAMILY)
    return table, flips.reset_index(drop=True)


def _test_run(results: pd.DataFrame, row) -> str:
    """The run dir that scored the selected cell on test (``cross_benchmark_table`` drops it)."""
    hit = results[(results["cell"] == row.best_cell) & (results["split"] == "test") & (results["seed"] == row.seed)
                  & (results["benchmark"] == row.benchmark) & (results["model"] == row.model)
                  & (results[SETUP] == getattr(row, SETUP))]
    return str(hit["run_dir"].iloc[0]) if len(hit) else ""


def _bootstrap_ci(row: pd.Series | None) -> tuple[float, float]:
    """The paired item-bootstrap interval the run's summary gives its own selected cell."""
    if row is None or not row["run_dir"]:
        return math.nan, math.nan
    s = _summary(Path(row["run_dir"]))
    test, best = s.get("test") or {}, s.get("best") or {}
    if best.get("cell") != row["best_cell"]:
        return math.nan, math.nan
    return float(test.get("delta_low", math.nan)), float(test.get("delta_high", math.nan))


def sample_size(table: pd.DataFrame) -> pd.DataFrame:
    """The ``cross_benchmark`` rows of every (model, benchmark, method, steer_target) scored at two
    or more train sizes, ordered by train size (empty when there is none)."""
    if table.empty or "n_train" not in table:
        return pd.DataFrame()
    keys = ["model", "benchmark", "method", "steer_target"]
    many = table.groupby(keys)["n_train"].transform("nunique") > 1
    return table[many].sort_values([*keys, "n_train"]).reset_index(drop=True)


# --------------------------------------------------------------------------- baselines


def _wilson(acc: float, n: int) -> tuple[float, float]:
    if not n or not math.isfinite(acc):
        return math.nan, math.nan
    ci = stats.wilson_interval(round(acc * n), int(n))
    return ci.low, ci.high


def _same_split(a: dict, b: dict) -> bool:
    keys = [("model", "name"), ("benchmark", "name"), ("benchmark", "item_rules"), ("seed",),
            *((f,) for f in SPLIT_FIELDS), ("prompt",)]

    def get(cfg, path):
        for p in path:
            cfg = cfg.get(p) if isinstance(cfg, dict) else None
        return cfg
    return all(get(a, k) == get(b, k) for k in keys)


def sft(runs: Sequence[Path]) -> pd.DataFrame:
    """Unsteered | steered | SFT test accuracy, with Wilson intervals, one row per (SFT run, steer
    run) pair of the same model, benchmark, seed, split fields and prompt (steer runs with
    ``experiment.split_sizes`` never match: the SFT job splits by proportions)."""
    sft_runs = [r for r in runs if (_summary(r).get("sft"))]
    steer_runs = [r for r in runs if (r / RESULTS_FILE).is_file() and (_summary(r).get("test"))]
    rows = []
    for f in sft_runs:
        fs, fc = _summary(f)["sft"], _config(f)
        for s in steer_runs:
            sc = _config(s)
            if not _same_split(fc, sc) or (sc.get("experiment") or {}).get("split_sizes"):
                continue
            ss = _summary(s)
            t, n = ss["test"], int(ss["test"]["n"])
            row = {"model": ss["model"], "benchmark": ss["benchmark"], "seed": ss["seed"], "method": ss["method"],
                   "steer_target": ss["steer_target"], "cell": ss["best"]["cell"], "n_test": n}
            for name, acc in (("unsteered", t["unsteered_accuracy"]), ("steered", t["accuracy"]),
                              ("sft", fs["after"]["test"])):
                low, high = _wilson(acc, n)
                row.update({f"{name}_test": acc, f"{name}_ci_low": low, f"{name}_ci_high": high})
            row.update(steered_delta=t["delta"], sft_delta=fs["after"]["test"] - fs["before"]["test"],
                       sft_before_test=fs["before"]["test"], sft_n_train=fs["n_train"], sft_run=str(f),
                       steer_run=str(s))
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- all of it


def study_tables(runs: Sequence[Path]) -> dict[str, pd.DataFrame]:
    """Every table of the module docstring that ``runs`` (run dirs of any kind) support;
    tables without rows are left out, so runs with none give ``{}``."""
    runs = [Path(r) for r in runs]
    out: dict[str, pd.DataFrame] = {}
    # steer runs only: other kinds write a results file of their own columns
    steer = [r for r in runs if (r / RESULTS_FILE).is_file() and _summary(r).get("experiment", "steer") == "steer"]
    try:  # unusable results files are left out: eas-report has listed them already
        results = load_runs(steer, skipped=[]) if steer else None
    except NoResultsError:
        results = None
    if results is not None:
        out["cross_benchmark"], out["flips"] = cross_benchmark(results)
        out["sample_size"] = sample_size(out["cross_benchmark"])
    out["icl"] = _concat(runs, ICL_FILE)
    out["side_effects"] = _concat(runs, SIDE_EFFECTS_FILE)
    out["sft"] = sft(runs)
    return {k: v for k, v in out.items() if not v.empty}


# --------------------------------------------------------------------------- figures


def side_effects_heatmap(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Test change (steered - unsteered) of each benchmark (columns) under the vector selected on
    each source (rows: model, source benchmark, cell, seed); ``*`` marks Holm p < 0.05, the
    target's own cell is outlined."""
    t = table.assign(source=[f"{m} · {b} · {c} · seed {s}" for m, b, c, s in
                             zip(table["model"], table["source_benchmark"], table["cell"], table["seed"])])
    grid = t.pivot_table(index="source", columns="benchmark", values="delta", aggfunc="mean")
    p = t.pivot_table(index="source", columns="benchmark", values="p_holm", aggfunc="mean", dropna=False)
    p = p.reindex(index=grid.index, columns=grid.columns).to_numpy(float)
    values = grid.to_numpy(float)
    half = max(0.02, float(np.nanmax(np.abs(values)))) if np.isfinite(values).any() else 0.05
    fig = Figure(figsize=(1.6 + 1.3 * grid.shape[1], 1.0 + 0.6 * grid.shape[0]))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormaps["RdBu"].with_extremes(bad="#e0e0e0"),
                      norm=Normalize(-half, half), aspect="auto")
    for i, j in np.ndindex(values.shape):
        star = "*" if p[i, j] < 0.05 else ""
        ax.text(j, i, "n/a" if not np.isfinite(values[i, j]) else f"{values[i, j]:+.3f}{star}",
                ha="center", va="center", fontsize=9)
    for i, src in enumerate(grid.index):
        target = t.loc[t["source"] == src, "source_benchmark"].iloc[0]
        if target in grid.columns:
            j = grid.columns.get_loc(target)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(grid.shape[1]), list(grid.columns), rotation=30, ha="right")
    ax.set_yticks(range(grid.shape[0]), list(grid.index), fontsize=8)
    ax.set_title("side effects: test change under the selected vector")
    fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03).set_label("test delta")
    return save_figure(fig, path)


def sample_size_curve(table: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Test change against train size, one line per (model, benchmark, method, steer_target),
    with its 95% interval as error bars."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for keys, g in table.groupby(["model", "benchmark", "method", "steer_target"]):
        g = g.sort_values("n_train")
        y = g["delta_mean"].to_numpy(float)
        err = np.vstack([y - g["delta_ci_low"].to_numpy(float), g["delta_ci_high"].to_numpy(float) - y])
        ax.errorbar(g["n_train"], y, yerr=np.nan_to_num(err), marker="o", capsize=3, label=" · ".join(keys))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("train items")
    ax.set_ylabel("test accuracy change (steered - unsteered)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_study_figures(tables: dict[str, pd.DataFrame], folder: str | Path) -> list[Path]:
    """``side_effects.png`` and ``sample_size.png`` in ``folder`` for the tables that have rows;
    returns the paths written."""
    folder, written = Path(folder), []
    for name, draw in (("side_effects", side_effects_heatmap), ("sample_size", sample_size_curve)):
        if name in tables and not tables[name].empty:
            draw(tables[name], folder / f"{name}.png")
            written.append(folder / f"{name}.png")
    return written
