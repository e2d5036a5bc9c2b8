"""Statistics for eas reports: paired tests, effect sizes, confidence intervals, corrections.

Thin over scipy and statsmodels (t-test, Wilcoxon, bootstrap, Wilson, Holm, Benjamini-Hochberg,
McNemar); what no library has is written here: the stratified bootstrap of AUROC over
resampled class counts, and the conventions below.

Every function is pure: array-likes in (numpy arrays, lists, CPU tensors), plain floats or
frozen dataclasses out. Nothing here reads files, prints or keeps state; randomness comes
only from an explicit ``seed``.

Conventions:
    * Paired functions take ``a`` and ``b`` of equal length ``n``, one entry per item (or
      per seed), and report the difference ``a - b`` (for example steered minus baseline).
    * Confidence levels are fractions in (0, 1), e.g. ``0.95``.
    * Inputs must be 1-D and finite; a bad input raises ``ValueError`` naming the argument
      and the value seen.
    * A test whose statistic is undefined (paired differences with zero variance) gives NaN,
      never p = 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import special
from scipy import stats as sps
from statsmodels.stats import contingency_tables, multitest, proportion

Alternative = Literal["two-sided", "greater", "less"]
CorrectionMethod = Literal["holm", "bh", "none"]

_ALTERNATIVES = ("two-sided", "greater", "less")
_CORRECTIONS = ("holm", "bh", "none")
_BOOTSTRAP_METHODS = ("percentile", "bca")
# Cap on the floats materialised per bootstrap batch (about 32 MB of float64).
_BATCH_ELEMENTS = 4_000_000
# Paired differences closer than this many machine epsilons (relative to the inputs) are one
# value: 0.4 - 0.3 and 0.5 - 0.4 differ only by the rounding of their inputs.
_ROUNDING_EPS = 100


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TestResult:
    """Outcome of a paired two-sample test on ``a - b``.

    Attributes:
        test: Which test produced it: ``"paired_t"`` or ``"wilcoxon"``.
        statistic: The test statistic (t for the t-test; scipy's W for Wilcoxon).
        p_value: p-value for ``alternative``.
        n: Number of pairs.
        mean_diff: Mean of ``a - b``, in the units of the inputs.
        alternative: ``"two-sided"``, ``"greater"`` (a > b) or ``"less"`` (a < b).
        df: Degrees of freedom (``n - 1`` for the t-test; ``None`` for Wilcoxon).
        ci95: Two-sided 95% t-interval ``(low, high)`` of the mean difference (t-test
            only; ``None`` for Wilcoxon; NaN ends when the differences have zero variance).
    """

    __test__ = False  # not a pytest test class despite the name

    test: str
    statistic: float
    p_value: float
    n: int
    mean_diff: float
    alternative: str = "two-sided"
    df: float | None = None
    ci95: tuple[float, float] | None = None


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval.

    Unpacks as ``low, high, point = interval``.

    Attributes:
        low: Lower bound.
        high: Upper bound.
        point: The estimate on the full (not resampled) data.
        level: Confidence level of ``[low, high]``, e.g. 0.95.
    """

    low: float
    high: float
    point: float
    level: float = 0.95

    def __iter__(self) -> Iterator[float]:
        return iter((self.low, self.high, self.point))

    def contains(self, x: float) -> bool:
        """Whether ``low <= x <= high``."""
        return self.low <= x <= self.high


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on paired item-level correctness.

    Attributes:
        statistic: ``min(b, c)`` for the exact test; the continuity-corrected chi-square
            ``(|b - c| - 1)**2 / (b + c)`` otherwise (statsmodels' statistic).
        p_value: The p-value (two-sided unless ``mcnemar`` was asked for one side).
        b: Items right before and wrong after (right -> wrong).
        c: Items wrong before and right after (wrong -> right).
        exact: Whether the exact binomial test was used.
    """

    statistic: float
    p_value: float
    b: int
    c: int
    exact: bool


@dataclass(frozen=True)
class SeedSummary:
    """Mean over seeds with spread and a t-interval.

    Attributes:
        mean: Mean over seeds.
        std: Sample standard deviation (ddof=1); NaN when ``n == 1``.
        n: Number of seeds.
        ci95_low: Lower bound of the two-sided 95% t-interval of the mean; NaN when n == 1.
        ci95_high: Upper bound of that interval; NaN when n == 1.
    """

    mean: float
    std: float
    n: int
    ci95_low: float
    ci95_high: float


# --------------------------------------------------------------------------- validation


def _as_1d(x: ArrayLike, name: str, min_n: int = 1) -> np.ndarray:
    """Return ``x`` as a 1-D float64 array, or raise naming ``name`` and what was wrong."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.size < min_n:
        raise ValueError(f"{name} needs at least {min_n} values; got n={arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite; got {int(bad.sum())} NaN/inf value(s), "
            f"first at index {int(np.argmax(bad))}"
        )
    return arr


def _as_paired(a: ArrayLike, b: ArrayLike, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"a and b must have the same length (paired); got {x.size} and {y.size}")
    if x.size < min_n:
        raise ValueError(f"paired data needs at least {min_n} pairs; got n={x.size}")
    return x, y


def _as_bool(x: ArrayLike, name: str) -> np.ndarray:
    """Return ``x`` as a 1-D bool array; accepts bools or the numbers 0 and 1."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    if arr.dtype != np.bool_:
        values = np.unique(arr)
        if not np.isin(values, [0, 1]).all():
            raise ValueError(f"{name} must hold booleans or 0/1; got values {values[:10].tolist()}")
    return arr.astype(bool)


def _check_level(ci: float) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be a fraction in (0, 1), e.g. 0.95; got {ci!r}")


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}; got {alternative!r}")


# --------------------------------------------------------------------------- paired tests


def _zero_variance(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether every difference ``x - y`` is one value up to the float rounding of the inputs.

    Accuracies are ratios of small integers, so ``0.4 - 0.3`` and ``0.5 - 0.4`` are the same
    difference; unrounded, their spread of ~1e-17 would give a t of ~1e15 and p ~1e-16.
    """
    d = x - y
    scale = max(float(np.abs(x).max()), float(np.abs(y).max()))
    return float(np.ptp(d)) <= _ROUNDING_EPS * np.finfo(np.float64).eps * scale


def paired_ttest(a: ArrayLike, b: ArrayLike, alternative: Alternative = "two-sided") -> TestResult:
    """Paired t-test of ``mean(a - b) == 0`` (scipy.stats.ttest_rel).

    Args:
        a: Shape ``(n,)``; e.g. per-item score with steering.
        b: Shape ``(n,)``; the same items without it.
        alternative: ``"two-sided"``, ``"greater"`` (a > b) or ``"less"`` (a < b).

    Returns:
        ``TestResult`` with t, its p-value, ``df = n - 1``, the mean difference and its
        two-sided 95% t-interval. When every difference is the same value (zero variance,
        up to the float rounding of the inputs; e.g. two seeds that both gain exactly 0.1)
        the test is undefined: t, p and the interval are NaN. Never p = 0 from n values
        that happen to agree (scipy gives t = inf, p = 0 for a constant nonzero difference).

    Raises:
        ValueError: Lengths differ, n < 2, or a value is not finite.
    """
    x, y = _as_paired(a, b)
    _check_alternative(alternative)
    d = x - y
    n = d.size
    mean = float(d.mean())
    df = float(n - 1)
    if _zero_variance(x, y):
        nan = float("nan")
        return TestResult("paired_t", nan, nan, n, mean, alternative, df, (nan, nan))
    res = sps.ttest_rel(x, y, alternative=alternative)
    half = float(sps.t.ppf(0.975, df)) * float(d.std(ddof=1)) / np.sqrt(n)
    return TestResult(
        test="paired_t",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        n=n,
        mean_diff=mean,
        alternative=alternative,
        df=df,
        ci95=(float(mean - half), float(mean + half)),
    )


def welch_ttest(a: ArrayLike, b: ArrayLike, alternative: Alternative = "two-sided") -> TestResult:
    """Welch's t-test of ``mean(a) == mean(b)`` for two independent groups (scipy.stats.ttest_ind,
    ``equal_var=False``).

    Returns:
        ``TestResult`` (``test="welch_t"``) with t, its p-value, the Welch-Satterthwaite df and
        ``mean_diff = mean(a) - mean(b)`` with its two-sided 95% interval; ``n`` is
        ``n_a + n_b``. Both groups constant: t, p and the interval are NaN.

    Raises:
        ValueError: a group has fewer than 2 values or a value is not finite.
    """
    x = _as_1d(a, "a", min_n=2)
    y = _as_1d(b, "b", min_n=2)
    _check_alternative(alternative)
    mean = float(x.mean() - y.mean())
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    if va + vb == 0:
        nan = float("nan")
        return TestResult("welch_t", nan, nan, x.size + y.size, mean, alternative, nan, (nan, nan))
    res = sps.ttest_ind(x, y, equal_var=False, alternative=alternative)
    df = float((va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1)))
    half = float(sps.t.ppf(0.975, df)) * float(np.sqrt(va + vb))
    return TestResult("welch_t", float(res.statistic), float(res.pvalue), int(x.size + y.size), mean, alternative,
                      df, (mean - half, mean + half))


def wilcoxon(
    a: ArrayLike,
    b: ArrayLike,
    alternative: Alternative = "two-sided",
    zero_method: Literal["wilcox", "pratt", "zsplit"] = "wilcox",
) -> TestResult:
    """Wilcoxon signed-rank test of ``a - b`` (scipy.stats.wilcoxon, method "auto").

    scipy's "auto" is exact for n <= 50 without ties or zeros, an exhaustive permutation
    test for n <= 13 with ties or zeros (up to about 2 s), and the normal approximation
    otherwise.

    Args:
        a: Shape ``(n,)``.
        b: Shape ``(n,)``, paired with ``a``.
        alternative: ``"two-sided"``, ``"greater"`` (a > b) or ``"less"`` (a < b).
        zero_method: How zero differences are treated (scipy's options; ``"wilcox"``
            drops them).

    Returns:
        ``TestResult`` with scipy's statistic and p-value and the mean difference; ``df``
        and ``ci95`` are ``None``. When every difference is zero there is no evidence of
        a shift and the result is ``statistic=0.0, p_value=1.0`` (scipy would warn and
        return NaN).

    Raises:
        ValueError: Lengths differ, n < 2, or a value is not finite.
    """
    x, y = _as_paired(a, b)
    _check_alternative(alternative)
    d = x - y
    mean = float(d.mean())
    if not d.any():
        return TestResult("wilcoxon", 0.0, 1.0, d.size, mean, alternative)
    res = sps.wilcoxon(d, zero_method=zero_method, alternative=alternative)
    return TestResult(
        test="wilcoxon",
        statistic=float(res.statistic),
        p_value=float(res.pvalue),
        n=d.size,
        mean_diff=mean,
        alternative=alternative,
    )


# --------------------------------------------------------------------------- effect sizes


def cohens_d_paired(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's d_z: ``mean(a - b) / sd(a - b)`` with ddof=1 (equals ``t / sqrt(n)``).

    Args:
        a: Shape ``(n,)``.
        b: Shape ``(n,)``, paired with ``a``.

    Returns:
        d_z, unitless. NaN when the differences have zero variance (as ``paired_ttest``'s
        t is then undefined).

    Raises:
        ValueError: Lengths differ, n < 2, or a value is not finite.
    """
    x, y = _as_paired(a, b)
    if _zero_variance(x, y):
        return float("nan")
    d = x - y
    return float(d.mean()) / float(d.std(ddof=1))


def cohens_d_independent(a: ArrayLike, b: ArrayLike) -> float:
    """Cohen's d for two independent groups: ``(mean(a) - mean(b)) / pooled_sd``.

    The pooled sd is ``sqrt(((n_a - 1) var_a + (n_b - 1) var_b) / (n_a + n_b - 2))`` with
    ddof=1 variances.

    Args:
        a: Shape ``(n_a,)``, n_a >= 2.
        b: Shape ``(n_b,)``, n_b >= 2.

    Returns:
        d, unitless. 0.0 when both groups are constant and equal; +-inf when constant and
        different.

    Raises:
        ValueError: A group has fewer than 2 values or a value is not finite.
    """
    x = _as_1d(a, "a", min_n=2)
    y = _as_1d(b, "b", min_n=2)
    diff = float(x.mean() - y.mean())
    na, nb = x.size, y.size
    pooled = np.sqrt(((na - 1) * x.var(ddof=1) + (nb - 1) * y.var(ddof=1)) / (na + nb - 2))
    if pooled == 0.0:
        return 0.0 if diff == 0.0 else float(np.copysign(np.inf, diff))
    return diff / float(pooled)


def hedges_g(a: ArrayLike, b: ArrayLike) -> float:
    """Hedges' g: Cohen's d (independent groups) times the exact small-sample correction.

    The correction is ``J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2))`` with
    ``df = n_a + n_b - 2``; it tends to 1 for large samples.

    Args:
        a: Shape ``(n_a,)``, n_a >= 2.
        b: Shape ``(n_b,)``, n_b >= 2.

    Returns:
        g, unitless.

    Raises:
        ValueError: As for ``cohens_d_independent``.
    """
    d = cohens_d_independent(a, b)
    df = np.asarray(a).size + np.asarray(b).size - 2
    log_j = special.gammaln(df / 2) - 0.5 * np.log(df / 2) - special.gammaln((df - 1) / 2)
    return d * float(np.exp(log_j))


# --------------------------------------------------------------------------- intervals


def mean_ci(values: ArrayLike, ci: float = 0.95) -> Interval:
    """Two-sided t-interval of the mean.

    Args:
        values: Shape ``(n,)``, n >= 2.
        ci: Confidence level in (0, 1).

    Returns:
        ``Interval`` around the sample mean, in the units of ``values``.

    Raises:
        ValueError: n < 2, a value is not finite, or ``ci`` outside (0, 1).
    """
    x = _as_1d(values, "values", min_n=2)
    _check_level(ci)
    mean = float(x.mean())
    half = float(sps.t.ppf(0.5 + ci / 2, x.size - 1)) * float(x.std(ddof=1)) / np.sqrt(x.size)
    return Interval(float(mean - half), float(mean + half), mean, ci)


def summarize_seeds(values: ArrayLike) -> SeedSummary:
    """Mean, sd and 95% t-interval of one metric over seeds.

    A single seed is allowed (sweeps often start with one); its std and interval are NaN.

    Args:
        values: Shape ``(n_seeds,)``, n_seeds >= 1.

    Returns:
        ``SeedSummary``.

    Raises:
        ValueError: No values, or a value is not finite.
    """
    x = _as_1d(values, "values", min_n=1)
    if x.size == 1:
        return SeedSummary(float(x[0]), float("nan"), 1, float("nan"), float("nan"))
    interval = mean_ci(x, 0.95)
    return SeedSummary(interval.point, float(x.std(ddof=1)), x.size, interval.low, interval.high)


def accuracy_with_ci(correct: ArrayLike, ci: float = 0.95) -> Interval:
    """Accuracy with a Wilson score interval (no continuity correction).

    Args:
        correct: Shape ``(n,)``, bool or 0/1, one entry per item.
        ci: Confidence level in (0, 1).

    Returns:
        ``Interval`` with ``point = mean(correct)`` and Wilson bounds in [0, 1].

    Raises:
        ValueError: Empty input, values other than bool/0/1, or ``ci`` outside (0, 1).
    """
    hits = _as_bool(correct, "correct")
    if hits.size == 0:
        raise ValueError("correct needs at least 1 item; got n=0")
    return wilson_interval(int(hits.sum()), hits.size, ci)


def wilson_interval(n_correct: int, n: int, ci: float = 0.95) -> Interval:
    """Wilson score interval of the accuracy ``n_correct / n``
    (``statsmodels.stats.proportion.proportion_confint``, method ``"wilson"``).

    Args:
        n_correct: Items right, ``0 <= n_correct <= n``.
        n: Items scored, ``n >= 1``.
        ci: Confidence level in (0, 1).

    Returns:
        ``Interval`` with ``point = n_correct / n`` and bounds in [0, 1] (exactly 0 at
        ``n_correct = 0`` and 1 at ``n_correct = n``).

    Raises:
        ValueError: ``n < 1``, ``n_correct`` outside ``[0, n]``, or ``ci`` outside (0, 1).
    """
    _check_level(ci)
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n must be a whole number >= 1; got {n!r}")
    if not (isinstance(n_correct, (int, np.integer)) and 0 <= n_correct <= n):
        raise ValueError(f"n_correct must be a whole number in [0, n={n}]; got {n_correct!r}")
    k, n = int(n_correct), int(n)
    low, high = proportion.proportion_confint(k, n, alpha=1.0 - ci, method="wilson")
    # the Wilson bound at k = 0 (k = n) is exactly 0 (1); keep rounding from leaving 1e-16
    return Interval(0.0 if k == 0 else float(low), 1.0 if k == n else float(high), k / n, ci)


def _accepts_axis(func: Callable) -> bool:
    try:
        return "axis" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def bootstrap_ci(
    values: ArrayLike,
    stat: Callable[..., float] = np.mean,
    n_resamples: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    paired_with: ArrayLike | None = None,
    method: Literal["percentile", "bca"] = "percentile",
) -> Interval:
    """Bootstrap confidence interval of a statistic (scipy.stats.bootstrap).

    Without ``paired_with`` this is the interval of ``stat(values)``. With it, items are
    resampled jointly (the same indices for both arrays) and the interval is of
    ``stat(values) - stat(paired_with)``, e.g. the accuracy gain of steering over the
    baseline on the same items.

    Args:
        values: Shape ``(n,)``, n >= 2.
        stat: Maps a 1-D array to a number. If it accepts ``axis`` (as ``np.mean`` and
            ``np.median`` do) resamples are evaluated in vectorised batches.
        n_resamples: Number of bootstrap resamples.
        ci: Confidence level in (0, 1).
        seed: Seed of the resampling; equal seeds give equal intervals.
        paired_with: Optional shape ``(n,)`` array paired item-by-item with ``values``.
        method: ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated). BCa is
            NaN when every resample gives the same value (e.g. constant data).

    Returns:
        ``Interval`` whose ``point`` is the statistic on the full data.

    Raises:
        ValueError: n < 2, lengths differ, a value is not finite, or a bad ``ci``,
            ``method`` or ``n_resamples``.
    """
    _check_level(ci)
    if method not in _BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {_BOOTSTRAP_METHODS}; got {method!r}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples}")
    vectorized = _accepts_axis(stat)
    if paired_with is None:
        data: tuple[np.ndarray, ...] = (_as_1d(values, "values", min_n=2),)

        def statistic(x, axis=-1):
            return stat(x, axis=axis) if vectorized else stat(x)

    else:
        x, y = _as_paired(values, paired_with)
        data = (x, y)

        def statistic(x, y, axis=-1):
            if vectorized:
                return stat(x, axis=axis) - stat(y, axis=axis)
            return stat(x) - stat(y)

    n = data[0].size
    point = float(statistic(*data))
    res = sps.bootstrap(
        data,
        statistic,
        n_resamples=n_resamples,
        batch=max(1, _BATCH_ELEMENTS // n),
        vectorized=vectorized,
        paired=paired_with is not None,
        confidence_level=ci,
        method="BCa" if method == "bca" else "percentile",
        rng=np.random.default_rng(seed),
    )
    return Interval(
        float(res.confidence_interval.low), float(res.confidence_interval.high), point, ci
    )


# --------------------------------------------------------------------------- AUROC


def _labels_and_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _as_bool(labels, "labels")
    s = _as_1d(scores, "scores")
    if y.size != s.size:
        raise ValueError(f"labels and scores must have the same length; got {y.size} and {s.size}")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"AUROC needs both classes; got {n_pos} positive and {y.size - n_pos} negative labels"
        )
    return y, s


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (sklearn.metrics.roc_auc_score); ties count one half.

    Args:
        labels: Shape ``(n,)``, bool or 0/1; 1 is the positive class.
        scores: Shape ``(n,)``; higher means more likely positive.

    Returns:
        AUROC in [0, 1].

    Raises:
        ValueError: Lengths differ, only one class is present, or labels are not 0/1.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _labels_and_scores(labels, scores)
    return float(roc_auc_score(y, s))


def _auroc_from_counts(pos_counts: np.ndarray, neg_counts: np.ndarray) -> np.ndarray:
    """AUROC of each row from how often each distinct score is drawn per class.

    A resample is fully described by these counts, so AUROC follows without sorting:
    each positive beats the negatives at lower scores and ties half of those at its own.

    Args:
        pos_counts: Shape ``(k, u)``, draws of positives at each of the ``u`` distinct
            scores (in increasing score order).
        neg_counts: Shape ``(k, u)``, the same for negatives.

    Returns:
        Shape ``(k,)``.
    """
    below = np.cumsum(neg_counts, axis=1) - neg_counts
    wins = (pos_counts * (below + 0.5 * neg_counts)).sum(axis=1)
    return wins / (pos_counts.sum(axis=1) * neg_counts.sum(axis=1))


def _row_counts(codes: np.ndarray, n_codes: int) -> np.ndarray:
    """Shape ``(k, m)`` codes in ``[0, n_codes)`` -> shape ``(k, n_codes)`` counts per row."""
    k = codes.shape[0]
    flat = (codes + n_codes * np.arange(k)[:, None]).ravel()
    return np.bincount(flat, minlength=k * n_codes).reshape(k, n_codes).astype(np.float64)


def balanced_accuracy_ci(
    labels: ArrayLike,
    preds: ArrayLike,
    n_resamples: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Balanced accuracy (the mean of the two classes' recalls, 0.5 at chance whatever the class
    sizes) with a stratified percentile-bootstrap interval: each class's items are resampled
    separately, so every resample keeps the class counts.

    Raises:
        ValueError: lengths differ, a class is missing, labels or predictions are not 0/1.
    """
    y, p = _as_bool(labels, "labels"), _as_bool(preds, "preds")
    if y.shape != p.shape:
        raise ValueError(f"labels and preds differ in length: {y.size} vs {p.size}")
    if y.all() or not y.any():
        raise ValueError("balanced accuracy needs both classes in labels")
    _check_level(ci)
    hit_pos, hit_neg = p[y], ~p[~y]  # each class's correct calls
    point = 0.5 * (hit_pos.mean() + hit_neg.mean())
    rng = np.random.default_rng(seed)
    rp = rng.binomial(hit_pos.size, hit_pos.mean(), n_resamples) / hit_pos.size
    rn = rng.binomial(hit_neg.size, hit_neg.mean(), n_resamples) / hit_neg.size
    draws = 0.5 * (rp + rn)  # a class's resampled recall is binomial in its own count
    lo, hi = np.quantile(draws, [(1 - ci) / 2, (1 + ci) / 2])
    return Interval(float(lo), float(hi), float(point), ci)


def bootstrap_auroc_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    n_resamples: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Stratified percentile-bootstrap interval of AUROC.

    Positives and negatives are resampled separately, so every resample keeps the class
    counts of the data (and AUROC is always defined).

    Args:
        labels: Shape ``(n,)``, bool or 0/1.
        scores: Shape ``(n,)``.
        n_resamples: Number of bootstrap resamples.
        ci: Confidence level in (0, 1).
        seed: Seed of the resampling.

    Returns:
        ``Interval`` whose ``point`` is ``auroc(labels, scores)``.

    Raises:
        ValueError: As for ``auroc``, or a bad ``ci`` or ``n_resamples``.
    """
    _check_level(ci)
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1; got {n_resamples}")
    y, s = _labels_and_scores(labels, scores)
    point = auroc(y, s)
    # Scores enter only through their order, so code them as ranks of distinct values.
    distinct, codes = np.unique(s, return_inverse=True)
    pos, neg = codes[y], codes[~y]
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples)
    batch = max(1, _BATCH_ELEMENTS // (s.size + 3 * distinct.size))
    for start in range(0, n_resamples, batch):
        k = min(batch, n_resamples - start)
        pos_k = pos[rng.integers(0, pos.size, size=(k, pos.size))]
        neg_k = neg[rng.integers(0, neg.size, size=(k, neg.size))]
        boot[start : start + k] = _auroc_from_counts(
            _row_counts(pos_k, distinct.size), _row_counts(neg_k, distinct.size)
        )
    low, high = np.quantile(boot, [0.5 - ci / 2, 0.5 + ci / 2])
    return Interval(float(low), float(high), point, ci)


# --------------------------------------------------------------------------- multiple tests


def _as_pvalues(pvalues: ArrayLike | Sequence[float]) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D; got shape {p.shape}")
    bad = ~((p >= 0.0) & (p <= 1.0))  # also catches NaN
    if bad.any():
        raise ValueError(
            f"pvalues must lie in [0, 1]; got {p[bad][:5].tolist()} "
            f"at indices {np.flatnonzero(bad)[:5].tolist()}"
        )
    return p


def _adjusted(pvalues: ArrayLike, method: str) -> np.ndarray:
    """``statsmodels.stats.multitest.multipletests`` adjusted p-values, in the input order."""
    p = _as_pvalues(pvalues)
    if p.size == 0:
        return p.copy()
    return multitest.multipletests(p, method=method)[1]


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error; statsmodels ``"holm"``).

    Args:
        pvalues: Shape ``(m,)``, raw p-values in [0, 1].

    Returns:
        Shape ``(m,)``, adjusted p-values in the input order; reject where ``<= alpha``.

    Raises:
        ValueError: Not 1-D, or a value outside [0, 1] (including NaN).
    """
    return _adjusted(pvalues, "holm")


def benjamini_hochberg(pvalues: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate; statsmodels ``"fdr_bh"``).

    Args:
        pvalues: Shape ``(m,)``, raw p-values in [0, 1].

    Returns:
        Shape ``(m,)``, adjusted p-values (q-values) in the input order.

    Raises:
        ValueError: Not 1-D, or a value outside [0, 1] (including NaN).
    """
    return _adjusted(pvalues, "fdr_bh")


def correct(pvalues: ArrayLike, method: CorrectionMethod = "holm") -> np.ndarray:
    """Adjust p-values for multiple comparisons.

    Args:
        pvalues: Shape ``(m,)``, raw p-values in [0, 1].
        method: ``"holm"`` (family-wise error), ``"bh"`` (Benjamini-Hochberg false
            discovery rate) or ``"none"`` (a copy of the input).

    Returns:
        Shape ``(m,)``, adjusted p-values in the input order.

    Raises:
        ValueError: Unknown ``method`` or invalid p-values.
    """
    if method == "holm":
        return holm(pvalues)
    if method == "bh":
        return benjamini_hochberg(pvalues)
    if method == "none":
        return _as_pvalues(pvalues).copy()
    raise ValueError(f"method must be one of {_CORRECTIONS}; got {method!r}")


# --------------------------------------------------------------------------- paired accuracy


def mcnemar(
    before_correct: ArrayLike,
    after_correct: ArrayLike,
    exact: bool | None = None,
    alternative: Alternative = "two-sided",
) -> McNemarResult:
    """McNemar's test of whether an intervention changes item-level accuracy.

    Only discordant items count: ``b`` went right -> wrong, ``c`` went wrong -> right.
    The test is ``statsmodels.stats.contingency_tables.mcnemar`` (``correction=True``).

    Args:
        before_correct: Shape ``(n,)``, bool or 0/1: item right before the intervention.
        after_correct: Shape ``(n,)``, the same items after it.
        exact: ``True`` for the exact binomial test, ``False`` for the chi-square test
            with continuity correction, ``None`` to pick exact when ``b + c < 25``.
        alternative: ``"two-sided"``; ``"greater"``: more items go wrong -> right than
            right -> wrong (``c > b``); ``"less"``: the reverse. A one-sided test is the exact
            binomial test of ``c`` out of ``b + c`` (``scipy.stats.binomtest``), whatever ``exact``.

    Returns:
        ``McNemarResult``. With no discordant items p is 1.

    Raises:
        ValueError: Lengths differ, an array is empty, or values are not bool/0/1.
    """
    _check_alternative(alternative)
    before = _as_bool(before_correct, "before_correct")
    after = _as_bool(after_correct, "after_correct")
    if before.size != after.size:
        raise ValueError(
            "before_correct and after_correct must have the same length (paired items); "
            f"got {before.size} and {after.size}"
        )
    if before.size == 0:
        raise ValueError("mcnemar needs at least 1 item; got n=0")
    b = int(np.sum(before & ~after))
    c = int(np.sum(~before & after))
    use_exact = (b + c < 25) if exact is None else bool(exact)
    if b + c == 0:  # no discordant item: no evidence (statsmodels' chi-square would divide by 0)
        return McNemarResult(0.0, 1.0, b, c, use_exact or alternative != "two-sided")
    if alternative != "two-sided":
        res = sps.binomtest(c, b + c, 0.5, alternative=alternative)
        return McNemarResult(float(min(b, c)), float(res.pvalue), b, c, True)
    table = [[int(np.sum(before & after)), b], [c, int(np.sum(~before & ~after))]]
    res = contingency_tables.mcnemar(table, exact=use_exact, correction=True)
    return McNemarResult(float(res.statistic), float(res.pvalue), b, c, use_exact)


# --------------------------------------------------------------------------- permutation nulls


def empirical_p_value(
    observed: float, null_samples: ArrayLike, alternative: Alternative = "greater"
) -> float:
    """p-value of an observed statistic against sampled null statistics.

    Uses ``(1 + count) / (1 + n)``, so it is never 0 (the observed statistic counts as
    one draw from the null). Comparisons allow a relative tolerance of 100 machine
    epsilons so that null draws equal to ``observed`` up to rounding count as ties, as
    ``scipy.stats.permutation_test`` does; the result matches its randomized p-value.

    Args:
        observed: The statistic on the real data.
        null_samples: Shape ``(n,)``, the statistic under the null (permutations,
            random directions, shuffled labels, ...).
        alternative: ``"greater"`` counts null >= observed, ``"less"`` counts
            null <= observed, ``"two-sided"`` is twice the smaller of the two, capped at 1.

    Returns:
        p-value in (0, 1].

    Raises:
        ValueError: Empty or non-finite null samples, non-finite observed, or a bad
            ``alternative``.
    """
    _check_alternative(alternative)
    null = _as_1d(null_samples, "null_samples", min_n=1)
    if not np.isfinite(observed):
        raise ValueError(f"observed must be finite; got {observed!r}")
    gamma = abs(100 * np.finfo(np.float64).eps * observed)
    n = null.size
    p_greater = (1 + int(np.sum(null >= observed - gamma))) / (1 + n)
    p_less = (1 + int(np.sum(null <= observed + gamma))) / (1 + n)
    if alternative == "greater":
        return p_greater
    if alternative == "less":
        return p_less
    return min(1.0, 2.0 * min(p_greater, p_less))
