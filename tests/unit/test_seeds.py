"""Tests for eas.report.seeds: aggregation of ``eas -m seed=range(n)`` runs.

Synthetic results follow the steering job's ``results.parquet`` contract; every expected
number is recomputed here with scipy/statsmodels from the per-seed values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from eas.report import seeds
from eas.report.tables import load_runs

N_TEST = 40


def _row(seed, benchmark, method, layer, strength, split, acc, selected=False):
    unsteered = method == "unsteered"
    return {
        "experiment": "steer", "model": "tiny", "benchmark": benchmark, "method": method,
        "steer_target": "residual", "position": "last", "layer": -1 if unsteered else layer,
        "strength": 0.0 if unsteered else strength, "seed": seed, "split": split, "accuracy": acc,
        "n": N_TEST, "n_correct": round(acc * N_TEST), "vector_norm": np.nan if unsteered else 2.0,
        "cell": "unsteered" if unsteered else f"{method}/L{layer}_s{strength:g}", "selected": selected,
    }


def make_results(n_seeds: int, effects: dict[tuple[str, str], float], seed: int = 0):
    """Per seed and (benchmark, method): the unsteered rows, two val cells (L4 better than L8 on
    val) and the test row of L4. Returns the results and the expected per-seed test accuracies."""
    rng = np.random.default_rng(seed)
    rows, expected = [], {}
    for s in range(n_seeds):
        base = {b: float(rng.integers(12, 28)) / N_TEST for b in {b for b, _ in effects}}
        for b, acc in base.items():
            rows += [_row(s, b, "unsteered", -1, 0, split, acc) for split in ("train", "val", "test")]
        for (b, m), effect in effects.items():
            test = min(1.0, base[b] + (effect + float(rng.normal(0, 0.03))))
            test = round(test * N_TEST) / N_TEST
            rows += [_row(s, b, m, 4, 2.0, "val", 0.7, True), _row(s, b, m, 8, 2.0, "val", 0.6),
                     _row(s, b, m, 4, 2.0, "test", test, True)]
            expected.setdefault((b, m), []).append((test, base[b]))
    return pd.DataFrame(rows), expected


EFFECTS = {("eas_facts", "pasf"): 0.10, ("eas_facts", "mean_diff"): 0.0, ("eas_reasoning", "pasf"): 0.05}


def test_seed_table_matches_scipy_and_statsmodels():
    results, expected = make_results(15, EFFECTS)
    table = seeds.seed_table(results)
    assert len(table) == 3 and (table["n_seeds"] == 15).all() and (table["correction"] == "holm").all()
    for row in table.itertuples():
        a, b = map(np.asarray, zip(*expected[(row.benchmark, row.method)]))
        assert row.test_mean == pytest.approx(a.mean()) and row.test_std == pytest.approx(a.std(ddof=1))
        assert row.unsteered_mean == pytest.approx(b.mean())
        assert row.delta_mean == pytest.approx((a - b).mean())
        low, high = sps.t.interval(0.95, len(a) - 1, loc=a.mean(), scale=sps.sem(a))
        assert (row.test_ci_low, row.test_ci_high) == pytest.approx((low, high))
        ref = sps.ttest_rel(a, b)
        assert row.t == pytest.approx(ref.statistic) and row.p_ttest == pytest.approx(ref.pvalue)
        assert row.p_wilcoxon == pytest.approx(sps.wilcoxon(a - b).pvalue)
        low, high = sps.t.interval(0.95, len(a) - 1, loc=(a - b).mean(), scale=sps.sem(a - b))
        assert (row.delta_ci_low, row.delta_ci_high) == pytest.approx((low, high))
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    for method, name in (("holm", "holm"), ("bh", "fdr_bh")):
        t = seeds.seed_table(results, correction=method)
        np.testing.assert_allclose(t["p_adjusted"], multitest.multipletests(t["p_ttest"], method=name)[1])
    # a real effect is found, a null one is not
    by = table.set_index(["benchmark", "method"])
    assert by.loc[("eas_facts", "pasf"), "p_adjusted"] < 0.001
    assert by.loc[("eas_facts", "mean_diff"), "p_adjusted"] > 0.01


def test_one_seed_gives_nan_statistics_and_no_section():
    results, _ = make_results(1, EFFECTS)
    table = seeds.seed_table(results)
    assert (table["n_seeds"] == 1).all()
    assert table[["test_std", "test_ci_low", "p_ttest", "p_adjusted"]].isna().all().all()
    assert seeds.seed_markdown(results) is None
    assert seeds.write_seed_report(results, "/nonexistent/never/written") is None


def test_seed_markdown_names_test_and_correction(tmp_path):
    results, _ = make_results(5, EFFECTS)
    text = seeds.seed_markdown(results, correction="bh")
    assert "Benjamini-Hochberg" in text and "paired t-test" in text and "3 comparisons" in text
    header = text.splitlines()[4]
    assert [c.strip() for c in header.strip("|").split("|")] == list(seeds.HEADLINE_COLUMNS)
    assert "pasf @ residual on eas_facts (tiny)" in text and "(bh " in text
    section = seeds.write_seed_report(results, tmp_path / "report")
    written = (tmp_path / "report" / "seed_summary_table.md").read_text()
    assert written.startswith("# eas report: across seeds") and written.endswith(section)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "report" / "seed_summary.csv"), seeds.seed_table(results),
                                  check_dtype=False)


def test_seed_table_reads_run_dirs_like_the_report(tmp_path):
    results, _ = make_results(3, {("eas_facts", "pasf"): 0.1})
    for s, part in results.groupby("seed"):
        d = tmp_path / "multirun" / f"{s}-seed={s}"
        d.mkdir(parents=True)
        part.to_parquet(d / "results.parquet", index=False)
    table = seeds.seed_table(load_runs([tmp_path / "multirun"]))
    assert table["n_seeds"].tolist() == [3]


def test_per_seed_drops_cells_never_scored_on_test():
    results, _ = make_results(3, {("eas_facts", "pasf"): 0.1})
    results = results[~((results["seed"] == 1) & (results["split"] == "test") & (results["method"] == "pasf"))]
    assert seeds.per_seed(results)["seed"].tolist() == [0, 2]


def _probe_rows(seed, auroc, random_best):
    base = {"experiment": "probe", "model": "tiny", "benchmark": "eas_sycophancy", "target": "trait",
            "steer_target": "residual", "pooling": "last", "layer": 4, "seed": seed}
    return [{**base, "probe": "logreg", "auroc": auroc, "random_best": np.nan},
            {**base, "probe": "mean_diff", "auroc": auroc - 0.05, "random_best": np.nan},
            {**base, "probe": "random", "auroc": 0.55, "random_best": random_best}]


def test_probe_seed_table_pairs_auroc_with_the_best_random_direction(tmp_path):
    rng = np.random.default_rng(0)
    au, rb = 0.9 + rng.normal(0, 0.02, 6), 0.7 + rng.normal(0, 0.02, 6)
    rows = [r for s in range(6) for r in _probe_rows(s, au[s], rb[s])]
    for s in range(6):
        d = tmp_path / str(s)
        d.mkdir()
        pd.DataFrame([r for r in rows if r["seed"] == s]).to_parquet(d / "probe_results.parquet")
    df = seeds.load_probe_runs([tmp_path])
    table = seeds.probe_seed_table(df)
    assert table["probe"].tolist() == ["logreg", "mean_diff"]
    lr = table.iloc[0]
    assert lr["auroc_mean"] == pytest.approx(au.mean()) and lr["random_best_mean"] == pytest.approx(rb.mean())
    assert lr["p_ttest"] == pytest.approx(sps.ttest_rel(au, rb, alternative="greater").pvalue)
    md = seeds.headline_table(seeds.probe_headline(table))
    assert "logreg AUROC" in md and "6 seeds" in md


def test_formatting():
    assert seeds.fmt_ci(0.1, 0.25) == "[0.100, 0.250]" and seeds.fmt_ci(np.nan, 1) == "n/a"
    assert seeds.fmt_p(0.0123) == "0.012" and seeds.fmt_p(0.0004) == "4.0e-04"
    assert seeds.fmt_p(0.01, 0.03, "holm") == "0.010 (holm 0.030)" and seeds.fmt_p(np.nan) == "n/a"


def test_eas_report_appends_the_seed_section(tmp_path):
    from eas.report.cli import main

    results, _ = make_results(4, {("eas_facts", "pasf"): 0.1})
    for s, part in results.groupby("seed"):
        d = tmp_path / "multirun" / f"{s}-seed={s}"
        d.mkdir(parents=True)
        part.to_parquet(d / "results.parquet", index=False)
    assert main([str(tmp_path / "multirun"), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "summary_table.md").read_text()
    assert text.startswith("# eas report") and "## Across seeds" in text and "Holm-Bonferroni" in text
    assert (tmp_path / "report" / "seed_summary.csv").exists()
