"""Tests for eas.core.similarity against computations written out here.

References: HSIC with an explicit centring matrix ``H`` (Kornblith et al. 2019, eq. 3),
the unbiased HSIC as the mean over ordered quadruples of distinct texts (Song et al. 2012,
Theorem 2), ridge regression by scikit-learn. No expected number is hard-coded.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group
from sklearn.linear_model import Ridge

from eas.core import similarity, stats


def _hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def _hsic_unbiased_loop(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al.'s U-statistic: over ordered distinct (i, j, q, r), the mean of
    ``k_ij l_ij + k_ij l_qr - 2 k_ij l_iq`` (averaging over all orderings symmetrises h)."""
    n = K.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q]
        count += 1
    return total / count


def _cka_reference(X, Y, hsic) -> float:
    K, L = X @ X.T, Y @ Y.T  # uncentred: the references centre (or need no centring) themselves
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def _related(n: int, d1: int, d2: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d1)) + 3.0  # an offset: centring must matter
    Y = X @ rng.normal(size=(d1, d2)) + noise * rng.normal(size=(n, d2)) - 1.0
    return X, Y


# --------------------------------------------------------------------------- linear CKA


@pytest.mark.parametrize("n,d1,d2", [(40, 3, 4), (12, 30, 20)])  # feature and Gram paths
def test_linear_cka_matches_centring_matrix_reference(n, d1, d2):
    X, Y = _related(n, d1, d2, noise=2.0, seed=n)
    expected = _cka_reference(X, Y, _hsic_biased)
    assert similarity.linear_cka(X, Y) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n,d1,d2", [(8, 2, 3), (7, 9, 6)])  # feature and Gram paths
def test_debiased_cka_matches_quadruple_loop(n, d1, d2):
    X, Y = _related(n, d1, d2, noise=1.5, seed=d1)
    expected = _cka_reference(X, Y, _hsic_unbiased_loop)
    assert similarity.linear_cka(X, Y, debiased=True) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,d", [(60, 5), (10, 16)])
def test_cka_invariances(debiased, n, d):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, d))
    R = ortho_group.rvs(d, random_state=2)
    assert similarity.linear_cka(X, X @ R, debiased) == pytest.approx(1.0, abs=1e-10)
    Y = np.tanh(X @ rng.normal(size=(d, d)))  # a nonlinear relation: CKA strictly inside (0, 1)
    base = similarity.linear_cka(X, Y, debiased)
    assert 0 < base < 1
    assert similarity.linear_cka(3.7 * X + 5.0, Y, debiased) == pytest.approx(base, rel=1e-10)
    assert similarity.linear_cka(X @ R, -0.2 * Y, debiased) == pytest.approx(base, rel=1e-10)
    assert similarity.linear_cka(Y, X, debiased) == pytest.approx(base, rel=1e-10)


def test_independent_high_n_is_near_zero():
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(4000, 5)), rng.normal(size=(4000, 5))
    assert similarity.linear_cka(X, Y) < 0.01
    assert abs(similarity.linear_cka(X, Y, debiased=True)) < 0.01


def test_debiased_removes_high_dimension_bias():
    # d >> n: plain CKA of independent data is far from 0, the debiased estimate is not
    rng = np.random.default_rng(4)
    X, Y = rng.normal(size=(50, 300)), rng.normal(size=(50, 200))
    biased = similarity.linear_cka(X, Y)
    debiased = similarity.linear_cka(X, Y, debiased=True)
    assert biased > 0.5
    assert abs(debiased) < 0.1
    assert debiased < biased


def test_linear_cka_accepts_tensors_of_any_dtype():
    X, Y = _related(20, 6, 5, noise=1.0, seed=5)
    expected = similarity.linear_cka(X, Y)
    assert similarity.linear_cka(torch.tensor(X), torch.tensor(Y)) == pytest.approx(
        expected, rel=1e-12
    )
    low = similarity.linear_cka(torch.tensor(X, dtype=torch.bfloat16), torch.tensor(Y).float())
    assert low == pytest.approx(expected, abs=0.02)


def test_constant_input_gives_nan():
    X, _ = _related(10, 3, 3, noise=1.0, seed=6)
    const = np.ones((10, 4))
    assert np.isnan(similarity.linear_cka(X, const))
    assert np.isnan(similarity.linear_cka(np.ones((10, 40)), X))  # Gram path
    assert np.isnan(similarity.cka_matrix([X], [const])).all()


def test_linear_cka_errors():
    X = np.zeros((5, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        similarity.linear_cka(X, np.zeros((6, 3)))
    with pytest.raises(ValueError, match="at least 4 rows"):
        similarity.linear_cka(X[:3], X[:3], debiased=True)
    bad = np.ones((5, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        similarity.linear_cka(X, bad)
    with pytest.raises(ValueError, match="2-D"):
        similarity.linear_cka(np.zeros(5), X)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matrix_equals_pairwise_linear_cka(debiased):
    rng = np.random.default_rng(7)
    base = rng.normal(size=(15, 6))
    layers_a = [base @ rng.normal(size=(6, d)) + rng.normal(size=(15, d)) for d in (4, 8, 30)]
    layers_b = [np.tanh(base @ rng.normal(size=(6, d))) for d in (5, 25)]
    got = similarity.cka_matrix(layers_a, layers_b, debiased)
    assert got.shape == (3, 2)
    expected = [[similarity.linear_cka(a, b, debiased) for b in layers_b] for a in layers_a]
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    stacked = torch.tensor(np.stack([layers_a[0], layers_a[0]]))  # capture-style [layer, text, d]
    np.testing.assert_allclose(
        similarity.cka_matrix(stacked, layers_b, debiased)[1], got[0], rtol=1e-10
    )


def test_cka_matrix_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        similarity.cka_matrix([], [np.zeros((5, 2))])
    with pytest.raises(ValueError, match=r"layers_b\[1\]"):
        similarity.cka_matrix([np.zeros((5, 2))], [np.zeros((5, 2)), np.zeros((6, 2))])
    with pytest.raises(ValueError, match=r"layers_a\[0\]"):
        similarity.cka_matrix([np.zeros((4, 2))], [np.zeros((5, 2))])


# --------------------------------------------------------------------------- linear maps


def _standardised_ridge(X, Y, ridge):
    mean, sd = X.mean(0), X.std(0)
    model = Ridge(alpha=ridge, fit_intercept=True).fit((X - mean) / sd, Y)
    return lambda x: model.predict((x - mean) / sd)


@pytest.mark.parametrize("n,d", [(80, 10), (20, 50)])  # primal and dual forms
def test_fit_linear_map_matches_sklearn_ridge(n, d):
    X, Y = _related(n, d, 7, noise=0.5, seed=d)
    X = X * np.linspace(0.5, 4.0, d)  # features on different scales
    fitted = similarity.fit_linear_map(X, Y, ridge=2.5)
    X_new = _related(9, d, 7, noise=0.5, seed=100)[0]
    np.testing.assert_allclose(
        fitted.apply(X_new), _standardised_ridge(X, Y, 2.5)(X_new), rtol=1e-8, atol=1e-8
    )


def test_projection_correlation_related_and_independent():
    X, Y = _related(600, 8, 12, noise=0.05, seed=8)
    related = similarity.projection_correlation(X[:400], Y[:400], X[400:], Y[400:], ridge=1.0)
    assert related.correlation > 0.99
    assert related.per_dim.shape == (12,)
    rng = np.random.default_rng(9)
    Z = rng.normal(size=(600, 12))
    unrelated = similarity.projection_correlation(X[:400], Z[:400], X[400:], Z[400:])
    assert abs(unrelated.correlation) < 0.1


def test_projection_correlation_is_mean_column_pearson():
    X, Y = _related(50, 4, 3, noise=1.0, seed=10)
    res = similarity.projection_correlation(X[:30], Y[:30], X[30:], Y[30:], ridge=0.5)
    pred = res.map.apply(X[30:])
    per_dim = [np.corrcoef(pred[:, j], Y[30:, j])[0, 1] for j in range(3)]
    np.testing.assert_allclose(res.per_dim, per_dim, rtol=1e-10)
    assert res.correlation == pytest.approx(np.mean(per_dim))


def test_projection_correlation_skips_constant_dimensions():
    X, Y = _related(40, 4, 3, noise=0.1, seed=11)
    Y[:, 1] = 2.0
    res = similarity.projection_correlation(X[:25], Y[:25], X[25:], Y[25:])
    assert np.isnan(res.per_dim[1])
    assert res.correlation == pytest.approx(np.nanmean(res.per_dim))


def test_projection_correlation_errors():
    X, Y = _related(30, 4, 3, noise=0.1, seed=12)
    with pytest.raises(ValueError, match="test dimensions"):
        similarity.projection_correlation(X[:20], Y[:20], X[20:, :3], Y[20:])
    with pytest.raises(ValueError, match="ridge"):
        similarity.fit_linear_map(X, Y, ridge=-1.0)


def test_linear_map_directions_and_tensors():
    X, Y = _related(60, 5, 4, noise=0.3, seed=13)
    fitted = similarity.fit_linear_map(X, Y, ridge=1.0)
    x, v = X[:3], np.random.default_rng(14).normal(size=5)
    np.testing.assert_allclose(
        fitted.apply(x + v) - fitted.apply(x),
        fitted.apply_direction(v)[None].repeat(3, 0),
        rtol=1e-9,
    )
    out = fitted.apply_direction(torch.tensor(v, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (4,)
    np.testing.assert_allclose(out.numpy(), fitted.apply_direction(v), rtol=1e-5)


# --------------------------------------------------------------------------- resampling


def test_permutation_null_related_vs_unrelated():
    X, Y = _related(60, 4, 4, noise=1.0, seed=15)
    Z = np.random.default_rng(16).normal(size=(60, 4))

    def cka_with(B):
        return lambda ix, iy: similarity.linear_cka(X[ix], B[iy])

    related = similarity.permutation_null(cka_with(Y), 60, n_perm=200, seed=0)
    unrelated = similarity.permutation_null(cka_with(Z), 60, n_perm=200, seed=0)
    assert related.p_value == pytest.approx(1 / 201)
    assert related.observed == pytest.approx(similarity.linear_cka(X, Y))
    assert related.null.shape == (200,)
    assert related.null.max() < related.observed
    assert unrelated.p_value > 0.05
    assert unrelated.p_value == stats.empirical_p_value(
        unrelated.observed, unrelated.null, "greater"
    )


def test_permutation_null_keeps_x_and_permutes_y():
    seen = []

    def stat(ix, iy):
        seen.append((ix.copy(), iy.copy()))
        return 0.0

    similarity.permutation_null(stat, 6, n_perm=5, seed=1)
    assert all((ix == np.arange(6)).all() for ix, _ in seen)
    assert all(sorted(iy) == list(range(6)) for _, iy in seen)
    again = []
    similarity.permutation_null(lambda ix, iy: again.append(iy.copy()) or 0.0, 6, n_perm=5, seed=1)
    assert all((a == b).all() for a, b in zip(again, [iy for _, iy in seen], strict=True))


def test_bootstrap_ci_resamples_texts_jointly():
    values = np.random.default_rng(17).normal(size=25)

    def mean_of(ix, iy):
        assert (ix == iy).all()  # pairs resampled together
        return float(values[ix].mean())

    got = similarity.bootstrap_texts(mean_of, 25, n_boot=500, seed=3, alpha=0.1)
    expected = stats.bootstrap_ci(values, np.mean, n_resamples=500, ci=0.9, seed=3)
    assert got.level == pytest.approx(0.9)
    assert got.point == pytest.approx(values.mean())
    assert (got.low, got.high) == pytest.approx((expected.low, expected.high), rel=1e-10)


def test_bootstrap_ci_of_cka():
    X, Y = _related(40, 4, 4, noise=1.0, seed=18)
    ci = similarity.bootstrap_texts(
        lambda ix, iy: similarity.linear_cka(X[ix], Y[iy]), 40, n_boot=200, seed=0
    )
    assert 0 <= ci.low <= ci.point <= ci.high <= 1
    assert ci == similarity.bootstrap_texts(
        lambda ix, iy: similarity.linear_cka(X[ix], Y[iy]), 40, n_boot=200, seed=0
    )


def test_resampling_errors():
    with pytest.raises(ValueError, match="n_boot"):
        similarity.bootstrap_texts(lambda ix, iy: 0.0, 10, n_boot=0)
    with pytest.raises(ValueError, match="n "):
        similarity.permutation_null(lambda ix, iy: 0.0, 1)
    with pytest.raises(ValueError, match="alpha"):
        similarity.bootstrap_texts(lambda ix, iy: 0.0, 10, alpha=1.5)
