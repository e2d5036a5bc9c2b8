"""Tests for eas.core.stats: every function against scipy/statsmodels, plus properties.

References are always computed here with scipy or statsmodels (the formulas written out
where a reference is a library call itself); no expected number is hard-coded.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats import contingency_tables, multitest, proportion

from eas.core import stats

# Small fixed inputs (paired: per-item scores with and without steering).
A = np.array([0.62, 0.71, 0.55, 0.80, 0.67, 0.74, 0.59, 0.69, 0.77, 0.64, 0.70, 0.58])
B = np.array([0.60, 0.65, 0.57, 0.72, 0.61, 0.70, 0.60, 0.62, 0.71, 0.66, 0.63, 0.55])
# Paired with A, all |A - C_PAIRED| distinct and nonzero (scipy's exact path).
C_PAIRED = np.array([0.51, 0.74, 0.50, 0.66, 0.71, 0.52, 0.60, 0.56, 0.62, 0.48, 0.77, 0.49])
C = np.array([0.41, 0.52, 0.47, 0.39, 0.58, 0.44, 0.50, 0.46, 0.43])
P_RAW = np.array([0.01, 0.04, 0.03, 0.20, 0.005, 0.04, 0.5, 0.9, 0.0001, 0.049])
LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1])
SCORES = np.array(
    [0.9, 0.3, 0.7, 0.6, 0.4, 0.2, 0.8, 0.6, 0.55, 0.1, 0.5, 0.5, 0.95, 0.35, 0.3, 0.45, 0.6,
     0.75, 0.2, 0.65]
)  # fmt: skip
# Item-level correctness before/after steering: 3 right->wrong, 8 wrong->right.
BEFORE = np.array([1] * 10 + [1, 1, 1] + [0] * 8 + [0] * 5, dtype=bool)
AFTER = np.array([1] * 10 + [0, 0, 0] + [1] * 8 + [0] * 5, dtype=bool)


def _statsmodels_mcnemar(before, after, exact):
    table = np.array(
        [
            [np.sum(before & after), np.sum(before & ~after)],
            [np.sum(~before & after), np.sum(~before & ~after)],
        ]
    )
    return contingency_tables.mcnemar(table, exact=exact, correction=True)


# --------------------------------------------------------------------------- paired tests


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_ttest_matches_scipy(alternative):
    res = stats.paired_ttest(A, B, alternative=alternative)
    ref = sps.ttest_rel(A, B, alternative=alternative)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert res.df == A.size - 1
    assert res.n == A.size
    assert res.mean_diff == pytest.approx(np.mean(A - B))
    ref_ci = sps.ttest_rel(A, B).confidence_interval(0.95)
    assert res.ci95 == pytest.approx((ref_ci.low, ref_ci.high), rel=1e-10)
    assert res.ci95[0] <= res.mean_diff <= res.ci95[1]


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_paired_ttest_zero_variance_is_undefined(alternative):
    base = np.arange(6.0)
    for a, b in [(A, A), (base + 2.0, base), (np.array([0.4, 0.5]), np.array([0.3, 0.4]))]:
        # no change; a constant shift (scipy: t = inf, p = 0); a shift equal up to rounding
        res = stats.paired_ttest(a, b, alternative=alternative)
        assert np.isnan(res.statistic) and np.isnan(res.p_value) and all(np.isnan(res.ci95))
        assert res.mean_diff == pytest.approx(np.mean(a - b)) and res.df == a.size - 1
        assert np.isnan(stats.cohens_d_paired(a, b))
    # the smallest real spread of accuracies (1/n of items) is variance, not rounding
    res = stats.paired_ttest([0.4, 0.5, 0.525], [0.3, 0.4, 0.4], alternative=alternative)
    assert 0 < res.p_value < 1


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_wilcoxon_matches_scipy(alternative):
    res = stats.wilcoxon(A, C_PAIRED, alternative=alternative)
    ref = sps.wilcoxon(A, C_PAIRED, alternative=alternative)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert res.df is None and res.ci95 is None
    assert res.mean_diff == pytest.approx(np.mean(A - C_PAIRED))


@pytest.mark.parametrize("zero_method", ["wilcox", "pratt", "zsplit"])
def test_wilcoxon_with_ties_and_zeros_matches_scipy(zero_method):
    # A - B has tied differences; n=8 keeps scipy's exhaustive permutation path fast.
    a, b = A[:8], np.r_[B[:7], A[7]]
    res = stats.wilcoxon(a, b, zero_method=zero_method)
    ref = sps.wilcoxon(a, b, zero_method=zero_method)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert res.df is None and res.ci95 is None


def test_wilcoxon_large_sample_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=80), rng.normal(0.2, size=80)
    assert stats.wilcoxon(a, b).p_value == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-10)


def test_wilcoxon_all_zero_differences_gives_p_one():
    res = stats.wilcoxon(A, A)
    assert res.p_value == 1.0 and res.statistic == 0.0 and res.mean_diff == 0.0


@pytest.mark.parametrize("fn", [stats.paired_ttest, stats.wilcoxon, stats.cohens_d_paired])
def test_paired_functions_reject_bad_input(fn):
    with pytest.raises(ValueError, match=r"same length.*12 and 11"):
        fn(A, B[:-1])
    with pytest.raises(ValueError, match=r"at least 2.*n=1"):
        fn(A[:1], B[:1])
    with pytest.raises(ValueError, match="finite"):
        fn(np.r_[A[:-1], np.nan], B)


# --------------------------------------------------------------------------- effect sizes


def test_cohens_d_paired_is_t_over_sqrt_n():
    t = sps.ttest_rel(A, B).statistic
    assert stats.cohens_d_paired(A, B) == pytest.approx(t / np.sqrt(A.size), rel=1e-12)
    assert np.isnan(stats.cohens_d_paired(A, A))  # zero variance, like t


def test_cohens_d_independent_matches_pooled_t():
    # Student's t with pooled variance is d / sqrt(1/n_a + 1/n_b).
    t = sps.ttest_ind(A, C, equal_var=True).statistic
    expected = t * np.sqrt(1 / A.size + 1 / C.size)
    assert stats.cohens_d_independent(A, C) == pytest.approx(expected, rel=1e-12)
    assert stats.cohens_d_independent(C, A) == pytest.approx(-expected, rel=1e-12)


def test_hedges_g_shrinks_d_by_usual_approximation():
    d = stats.cohens_d_independent(A, C)
    g = stats.hedges_g(A, C)
    df = A.size + C.size - 2
    assert abs(g) < abs(d)
    assert g == pytest.approx(d * (1 - 3 / (4 * df - 1)), rel=1e-3)


# --------------------------------------------------------------------------- intervals


def test_mean_ci_matches_scipy_t_interval():
    for level in (0.9, 0.95, 0.99):
        res = stats.mean_ci(A, ci=level)
        low, high = sps.t.interval(level, A.size - 1, loc=A.mean(), scale=sps.sem(A))
        assert (res.low, res.high) == pytest.approx((low, high), rel=1e-12)
        assert res.contains(res.point) and res.level == level
    with pytest.raises(ValueError, match="n=1"):
        stats.mean_ci([1.0])
    with pytest.raises(ValueError, match="ci must be"):
        stats.mean_ci(A, ci=95)


def test_summarize_seeds():
    s = stats.summarize_seeds(A)
    low, high = sps.t.interval(0.95, A.size - 1, loc=A.mean(), scale=sps.sem(A))
    assert s.mean == pytest.approx(A.mean())
    assert s.std == pytest.approx(np.std(A, ddof=1))
    assert s.n == A.size
    assert (s.ci95_low, s.ci95_high) == pytest.approx((low, high))
    one = stats.summarize_seeds([0.7])
    assert one.mean == 0.7 and one.n == 1 and np.isnan(one.std) and np.isnan(one.ci95_low)
    assert dataclasses.is_dataclass(s)


def test_accuracy_with_ci_matches_scipy_wilson():
    correct = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1], dtype=bool)
    for level in (0.9, 0.95):
        res = stats.accuracy_with_ci(correct, ci=level)
        ref = sps.binomtest(int(correct.sum()), correct.size).proportion_ci(level, "wilson")
        assert (res.low, res.high) == pytest.approx((ref.low, ref.high), rel=1e-10)
        assert res.point == pytest.approx(correct.mean())
    all_right = stats.accuracy_with_ci(np.ones(10, dtype=bool))
    assert all_right.high == pytest.approx(1.0) and all_right.low < 1.0
    with pytest.raises(ValueError, match="0/1"):
        stats.accuracy_with_ci([0, 1, 2])


def test_accuracy_with_ci_matches_statsmodels():
    correct = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    res = stats.accuracy_with_ci(correct)
    low, high = proportion.proportion_confint(correct.sum(), correct.size, 0.05, "wilson")
    assert (res.low, res.high) == pytest.approx((low, high), rel=1e-10)


def test_wilson_interval_from_counts():
    z, p, n = sps.norm.ppf(0.975), 0.75, 20
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    res = stats.wilson_interval(15, 20)
    assert (res.low, res.high, res.point) == pytest.approx((center - half, center + half, p), rel=1e-12)
    assert res == stats.accuracy_with_ci(np.arange(20) < 15)
    assert stats.wilson_interval(0, 10).low == 0.0 and stats.wilson_interval(10, 10).high == 1.0
    with pytest.raises(ValueError, match=r"n must be a whole number >= 1; got 0"):
        stats.wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"n_correct .* \[0, n=10\]; got 11"):
        stats.wilson_interval(11, 10)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_ci_matches_scipy(method):
    res = stats.bootstrap_ci(A, n_resamples=2000, seed=3, method=method)
    ref = sps.bootstrap(
        (A,), np.mean, n_resamples=2000, method=method, rng=np.random.default_rng(3)
    ).confidence_interval
    assert (res.low, res.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert res.point == pytest.approx(A.mean())
    assert res.contains(res.point)


def test_bootstrap_ci_close_to_t_interval_for_normal_data():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    boot = stats.bootstrap_ci(x, n_resamples=2000)
    t = stats.mean_ci(x)
    assert boot.low == pytest.approx(t.low, abs=0.05)
    assert boot.high == pytest.approx(t.high, abs=0.05)


def test_bootstrap_ci_deterministic_given_seed():
    first = stats.bootstrap_ci(A, n_resamples=2000, seed=7)
    assert stats.bootstrap_ci(A, n_resamples=2000, seed=7) == first
    assert stats.bootstrap_ci(A, n_resamples=2000, seed=8) != first
    low, high, point = first
    assert (low, high, point) == (first.low, first.high, first.point)


def test_bootstrap_ci_non_vectorised_stat_matches_vectorised():
    vec = stats.bootstrap_ci(A, stat=np.median, n_resamples=2000, seed=1)
    loop = stats.bootstrap_ci(A, stat=lambda x: float(np.median(x)), n_resamples=2000, seed=1)
    assert (loop.low, loop.high, loop.point) == pytest.approx((vec.low, vec.high, vec.point))


def test_bootstrap_ci_paired_is_interval_of_difference():
    res = stats.bootstrap_ci(A, n_resamples=2000, seed=2, paired_with=B)
    assert res.point == pytest.approx(np.mean(A) - np.mean(B))
    ref = sps.bootstrap(
        (A, B),
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert (res.low, res.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    # Jointly resampled pairs: the mean difference equals the mean of differences.
    diffs = stats.bootstrap_ci(A - B, n_resamples=2000, seed=2)
    assert (res.low, res.high) == pytest.approx((diffs.low, diffs.high), rel=1e-9)
    with pytest.raises(ValueError, match="same length"):
        stats.bootstrap_ci(A, paired_with=B[:3])


# --------------------------------------------------------------------------- AUROC


def test_auroc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    assert stats.auroc(LABELS, SCORES) == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert stats.auroc(LABELS.astype(bool), SCORES) == stats.auroc(LABELS, SCORES)
    with pytest.raises(ValueError, match=r"both classes.*0 positive"):
        stats.auroc(np.zeros(4), [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="same length"):
        stats.auroc(LABELS, SCORES[:-1])


def test_bootstrap_auroc_ci_matches_naive_stratified_bootstrap():
    # Reference: stratified resampling with its own random draws and AUROC from its
    # definition, P(pos > neg) + P(pos == neg) / 2 (ties in SCORES exercise the midranks
    # of the fast path).
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(123)
    pos, neg = SCORES[LABELS == 1], SCORES[LABELS == 0]
    pos_b = rng.choice(pos, size=(2000, pos.size))[:, :, None]
    neg_b = rng.choice(neg, size=(2000, neg.size))[:, None, :]
    ref = ((pos_b > neg_b) + 0.5 * (pos_b == neg_b)).mean(axis=(1, 2))
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    sample = np.r_[pos_b[0, :, 0], neg_b[0, 0, :]]
    assert ref[0] == pytest.approx(roc_auc_score(y, sample))  # the definition is sklearn's
    res = stats.bootstrap_auroc_ci(LABELS, SCORES, n_resamples=2000)
    assert res.point == pytest.approx(roc_auc_score(LABELS, SCORES))
    assert res.low == pytest.approx(np.quantile(ref, 0.025), abs=0.03)
    assert res.high == pytest.approx(np.quantile(ref, 0.975), abs=0.03)
    assert res.contains(res.point)


def test_bootstrap_auroc_ci_properties():
    first = stats.bootstrap_auroc_ci(LABELS, SCORES, n_resamples=2000, seed=5)
    assert stats.bootstrap_auroc_ci(LABELS, SCORES, n_resamples=2000, seed=5) == first
    separated = stats.bootstrap_auroc_ci(LABELS, LABELS + 0.1 * SCORES, n_resamples=500)
    assert (separated.low, separated.high, separated.point) == (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------- corrections


def test_holm_and_bh_match_statsmodels():
    for p in (P_RAW, P_RAW[:1], np.array([0.5, 0.5, 0.5]), np.array([0.0, 1.0, 0.3])):
        np.testing.assert_allclose(
            stats.holm(p), multitest.multipletests(p, method="holm")[1], rtol=1e-12
        )
        np.testing.assert_allclose(
            stats.benjamini_hochberg(p), multitest.multipletests(p, method="fdr_bh")[1], rtol=1e-12
        )


def test_holm_matches_its_step_down_formula():
    order = np.argsort(P_RAW, kind="stable")
    m = P_RAW.size
    stepped = np.minimum(np.maximum.accumulate((m - np.arange(m)) * P_RAW[order]), 1.0)
    expected = np.empty(m)
    expected[order] = stepped
    np.testing.assert_allclose(stats.holm(P_RAW), expected, rtol=1e-15)


def test_bh_matches_scipy():
    np.testing.assert_allclose(
        stats.benjamini_hochberg(P_RAW), sps.false_discovery_control(P_RAW, method="bh")
    )


def test_correction_properties():
    h, q = stats.holm(P_RAW), stats.benjamini_hochberg(P_RAW)
    assert np.all(h >= P_RAW) and np.all(q >= P_RAW)
    assert np.all(h <= 1) and np.all(q <= 1)
    assert np.all(q <= h + 1e-15)  # BH is never stricter than Holm
    order = np.argsort(P_RAW)
    assert np.all(np.diff(q[order]) >= 0) and np.all(np.diff(h[order]) >= 0)
    assert stats.holm([]).size == 0


def test_correct_dispatches_and_rejects():
    np.testing.assert_array_equal(stats.correct(P_RAW, "holm"), stats.holm(P_RAW))
    np.testing.assert_array_equal(stats.correct(P_RAW, "bh"), stats.benjamini_hochberg(P_RAW))
    np.testing.assert_array_equal(stats.correct(P_RAW, "none"), P_RAW)
    with pytest.raises(ValueError, match=r"method must be one of.*'fdr'"):
        stats.correct(P_RAW, "fdr")
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
        stats.holm([0.1, 1.5])
    with pytest.raises(ValueError, match="nan"):
        stats.benjamini_hochberg([0.1, np.nan])


# --------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize("exact", [None, True, False])
def test_mcnemar_matches_statsmodels(exact):
    res = stats.mcnemar(BEFORE, AFTER, exact=exact)
    assert (res.b, res.c) == (3, 8)
    ref = _statsmodels_mcnemar(BEFORE, AFTER, exact=exact is not False)
    assert res.exact == (exact is not False)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)


def test_mcnemar_large_discordance_uses_chi_square():
    rng = np.random.default_rng(4)
    before = rng.random(300) < 0.6
    after = np.where(rng.random(300) < 0.25, ~before, before)
    res = stats.mcnemar(before, after)
    assert res.b + res.c >= 25 and not res.exact
    ref = _statsmodels_mcnemar(before, after, exact=False)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    chi2 = (abs(res.b - res.c) - 1) ** 2 / (res.b + res.c)  # continuity-corrected
    assert res.statistic == pytest.approx(chi2) and res.p_value == pytest.approx(sps.chi2.sf(chi2, 1))


def test_mcnemar_exact_matches_scipy_binomtest():
    res = stats.mcnemar(BEFORE, AFTER, exact=True)
    assert res.p_value == pytest.approx(sps.binomtest(res.b, res.b + res.c).pvalue)


def test_mcnemar_one_sided_is_the_binomial_tail_of_the_gains():
    # 3 items right -> wrong, 8 wrong -> right: "greater" asks whether gains outnumber losses
    greater = stats.mcnemar(BEFORE, AFTER, alternative="greater")
    less = stats.mcnemar(BEFORE, AFTER, alternative="less")
    assert greater.p_value == pytest.approx(sps.binom.sf(8 - 1, 11, 0.5), rel=1e-12)
    assert less.p_value == pytest.approx(sps.binom.cdf(8, 11, 0.5), rel=1e-12)
    assert greater.p_value < stats.mcnemar(BEFORE, AFTER, exact=True).p_value < less.p_value
    assert stats.mcnemar(AFTER, BEFORE, alternative="less").p_value == greater.p_value
    assert stats.mcnemar(BEFORE, BEFORE, alternative="greater").p_value == 1.0
    with pytest.raises(ValueError, match="alternative"):
        stats.mcnemar(BEFORE, AFTER, alternative="bigger")


def test_mcnemar_properties():
    forward, backward = stats.mcnemar(BEFORE, AFTER), stats.mcnemar(AFTER, BEFORE)
    assert (forward.b, forward.c) == (backward.c, backward.b)
    assert forward.p_value == backward.p_value and forward.statistic == backward.statistic
    for exact in (None, True, False):
        assert stats.mcnemar(BEFORE, BEFORE, exact=exact).p_value == 1.0
    with pytest.raises(ValueError, match=r"same length.*26 and 25"):
        stats.mcnemar(BEFORE, AFTER[:-1])


# --------------------------------------------------------------------------- permutation p


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_empirical_p_value_matches_scipy_permutation_test(alternative):
    res = sps.permutation_test(
        (A - B,),
        np.mean,
        permutation_type="samples",
        n_resamples=999,
        alternative=alternative,
        rng=np.random.default_rng(0),
    )
    p = stats.empirical_p_value(res.statistic, res.null_distribution, alternative=alternative)
    assert p == pytest.approx(res.pvalue, rel=1e-12)


def test_empirical_p_value_convention():
    null = np.arange(99.0)
    assert stats.empirical_p_value(1000.0, null) == pytest.approx(1 / 100)
    assert stats.empirical_p_value(-1.0, null) == 1.0
    assert stats.empirical_p_value(-1.0, null, alternative="less") == pytest.approx(1 / 100)
    assert 0 < stats.empirical_p_value(49.0, null, alternative="two-sided") <= 1
    with pytest.raises(ValueError, match="alternative must be one of"):
        stats.empirical_p_value(1.0, null, alternative="both")


def test_balanced_accuracy_ci_is_sklearns_with_a_stratified_interval():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.2  # imbalanced: "always negative" is 80% accurate, 0.5 balanced
    p = np.where(rng.random(200) < 0.7, y, ~y)
    ci = stats.balanced_accuracy_ci(y, p, n_resamples=2000, seed=1)
    assert ci.point == pytest.approx(balanced_accuracy_score(y, p))
    assert ci.low < ci.point < ci.high
    assert stats.balanced_accuracy_ci(y, np.zeros(200, bool)).point == 0.5
    with pytest.raises(ValueError, match="both classes"):
        stats.balanced_accuracy_ci(np.ones(5, bool), np.ones(5, bool))
