"""Cross-model representational similarity: linear CKA, linear maps between spaces, and
their uncertainty over texts.

Two activation matrices are compared row by row: row ``i`` of ``X [n, d1]`` and of
``Y [n, d2]`` are the same text read in two places (two layers, two models). Nothing here
needs ``d1 == d2``.

- ``linear_cka``: the linear centred kernel alignment of Kornblith et al. (2019),
  ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``;
  invariant to orthogonal transforms and isotropic scaling of either side, 1 for
  ``Y = X R`` with orthogonal ``R``. With ``debiased=True`` every HSIC is the unbiased
  estimator of Song et al. (2012), as Nguyen et al. (2021) use it, which removes the
  upward bias plain CKA has when ``d`` is large against ``n`` (independent data then
  reads near 0 rather than near ``d / (n + d)``).
- ``cka_matrix``: CKA of every layer of one model against every layer of another, each
  layer's Gram matrix formed once.
- ``projection_correlation``: how well a ridge-regression linear map predicts ``Y`` from
  ``X`` on held-out texts, and the map itself (``LinearMap``), which carries a steering
  vector from one model's space into another's.
- ``bootstrap_texts`` and ``permutation_null``: resampling over texts for any of these
  statistics; both call one ``stat_fn(rows_x, rows_y)``.

Inputs are numpy arrays or tensors (any dtype, any device); all arithmetic is float64
numpy. Inputs must be 2-D and finite; a bad input raises ``ValueError`` naming the
argument and the value seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eas.core import stats

StatFn = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------- validation


def _as_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array; tensors of any dtype or device are copied to the CPU."""
    if hasattr(x, "detach"):  # torch.Tensor (bf16 has no numpy dtype: go through float64)
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(
            f"{name} must be finite; got {int(bad.sum())} NaN/inf value(s), "
            f"first at index {tuple(int(i) for i in np.argwhere(bad)[0])}"
        )
    return arr


def _as_2d(x: Any, name: str, min_n: int = 2) -> np.ndarray:
    arr = _as_array(x, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, d]; got shape {arr.shape}")
    if arr.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} rows (texts); got n={arr.shape[0]}")
    return arr


def _as_pair(X: Any, Y: Any, debiased: bool, x_name: str = "X", y_name: str = "Y"):
    min_n = 4 if debiased else 2
    x = _as_2d(X, x_name, min_n)
    y = _as_2d(Y, y_name, min_n)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x_name} and {y_name} must have the same number of rows (one per text, paired); "
            f"got {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


# --------------------------------------------------------------------------- CKA


def _centred_gram(x: np.ndarray, debiased: bool) -> np.ndarray:
    """``[n, d] -> [n, n]``: the centred linear Gram matrix, scaled to unit Frobenius norm.

    CKA is then the Frobenius inner product of two of these. Plain: ``Xc Xc^T``, whose inner
    product with another is ``||Yc^T Xc||_F^2``. Debiased: the "unbiased centring" of
    Kornblith et al.'s reference code, under which the inner product of two Grams is
    ``n (n - 3)`` times the unbiased HSIC of Song et al. (2012), so self-products are
    squared norms (never negative) and debiased CKA stays within [-1, 1].
    A constant ``x`` (zero Gram) stays zero, and its CKA with anything is NaN.
    """
    xc = x - x.mean(axis=0)
    k = xc @ xc.T
    if debiased:
        n = k.shape[0]
        np.fill_diagonal(k, 0.0)
        means = k.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        k -= means[:, None]
        k -= means[None, :]
        np.fill_diagonal(k, 0.0)
    norm = np.linalg.norm(k)
    return k / norm if norm > 0 else k


def _cka_features(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Linear CKA from ``d x d`` cross-products: ``O(n d1 d2)``, no ``n x n`` matrix.

    With centred features the unbiased HSIC terms of Song et al. (2012) reduce to sums
    over the Gram diagonals ``kd``, ``ld`` (the row sums of the off-diagonal Gram are
    ``-kd``): ``n (n - 3) HSIC_u = ||Y^T X||^2 - kd.ld + sum(kd) sum(ld) / ((n-1)(n-2))
    - 2 kd.ld / (n - 2)``.
    """
    xc = x - x.mean(axis=0)
    yc = y - y.mean(axis=0)
    n = x.shape[0]
    kd = np.einsum("ij,ij->i", xc, xc)
    ld = np.einsum("ij,ij->i", yc, yc)

    def hsic(a: np.ndarray, b: np.ndarray, ad: np.ndarray, bd: np.ndarray) -> float:
        cross = float(np.sum((a.T @ b) ** 2))
        if not debiased:
            return cross
        dot = float(ad @ bd)
        return cross - dot + float(ad.sum() * bd.sum()) / ((n - 1) * (n - 2)) - 2 * dot / (n - 2)

    xy, xx, yy = hsic(xc, yc, kd, ld), hsic(xc, xc, kd, kd), hsic(yc, yc, ld, ld)
    if xx <= 0 or yy <= 0:
        return float("nan")
    return xy / float(np.sqrt(xx * yy))


def linear_cka(X: Any, Y: Any, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same ``n`` texts.

    Args:
        X: ``[n, d1]``, one row per text (numpy or tensor).
        Y: ``[n, d2]``, the same texts in the same order.
        debiased: Use the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021).

    Returns:
        CKA, unitless: in [0, 1] plain; debiased it may be slightly negative (an unbiased
        estimate of a quantity near 0). NaN when ``X`` or ``Y`` has no variance (constant
        rows). Computed from ``n x n`` Gram matrices when ``n <= d1 + d2`` and from
        feature cross-products otherwise (the same number; the cheaper order).

    Raises:
        ValueError: Not 2-D, row counts differ, n < 2 (n < 4 debiased), or a value is
            not finite.
    """
    x, y = _as_pair(X, Y, debiased)
    if x.shape[0] > x.shape[1] + y.shape[1]:
        return _cka_features(x, y, debiased)
    kx, ky = _centred_gram(x, debiased), _centred_gram(y, debiased)
    if not (kx.any() and ky.any()):
        return float("nan")
    return float(np.sum(kx * ky))


def cka_matrix(
    layers_a: Sequence[Any], layers_b: Sequence[Any], debiased: bool = False
) -> np.ndarray:
    """Linear CKA of every layer of ``a`` against every layer of ``b``.

    Each layer's centred, normalised Gram matrix is formed once; entry ``[i, j]`` is then
    one inner product. Memory: ``len(layers_b)`` Gram matrices of ``n x n`` float64 are
    held (about 8 MB each at n = 1000).

    Args:
        layers_a: ``La`` arrays ``[n, d_a]`` (e.g. ``capture`` output ``[layer, text, d]``
            of one model, iterated over its first axis).
        layers_b: ``Lb`` arrays ``[n, d_b]``, the same ``n`` texts in the same order.
        debiased: As for ``linear_cka``.

    Returns:
        ``[La, Lb]`` float64; NaN where a layer has no variance.

    Raises:
        ValueError: An empty list, or as for ``linear_cka`` (naming the layer).
    """
    if len(layers_a) == 0 or len(layers_b) == 0:
        raise ValueError(
            f"cka_matrix needs at least one layer on each side; got {len(layers_a)} and "
            f"{len(layers_b)}"
        )
    min_n = 4 if debiased else 2
    b = [_as_2d(y, f"layers_b[{j}]", min_n) for j, y in enumerate(layers_b)]
    n = b[0].shape[0]
    grams_b = np.empty((len(b), n, n))
    for j, y in enumerate(b):
        if y.shape[0] != n:
            raise ValueError(
                f"every layer must have the same texts; layers_b[0] has n={n}, "
                f"layers_b[{j}] has n={y.shape[0]}"
            )
        grams_b[j] = _centred_gram(y, debiased)
    zero_b = ~grams_b.reshape(len(b), -1).any(axis=1)
    out = np.empty((len(layers_a), len(b)))
    for i, x in enumerate(layers_a):
        x = _as_2d(x, f"layers_a[{i}]", min_n)
        if x.shape[0] != n:
            raise ValueError(
                f"layers_a[{i}] and layers_b must have the same texts; got n={x.shape[0]} and n={n}"
            )
        kx = _centred_gram(x, debiased)
        out[i] = np.tensordot(grams_b, kx, axes=([1, 2], [0, 1]))
        out[i, zero_b] = np.nan
        if not kx.any():
            out[i] = np.nan
    return out


# --------------------------------------------------------------------------- linear maps


def _like(out: np.ndarray, x: Any) -> Any:
    """``out`` as a tensor of ``x``'s dtype and device when ``x`` is a tensor, else numpy."""
    if hasattr(x, "detach"):
        import torch

        return torch.as_tensor(out).to(device=x.device, dtype=x.dtype)
    return out


@dataclass(frozen=True)
class LinearMap:
    """An affine map from X's space (``d_x``) into Y's space (``d_y``) fitted on texts.

    ``apply(x) = ((x - x_mean) / x_scale) @ W + b``: ``x`` is standardised with the
    training texts' statistics, ``W`` acts on standardised features and ``b`` is the
    training mean of ``Y``.

    Attributes:
        W: ``[d_x, d_y]``, on standardised X features.
        b: ``[d_y]``, in Y's units.
        x_mean: ``[d_x]``, training mean of X.
        x_scale: ``[d_x]``, training standard deviation of X (1 where it is 0).
    """

    W: np.ndarray
    b: np.ndarray
    x_mean: np.ndarray
    x_scale: np.ndarray

    def apply(self, x: Any) -> Any:
        """Map states ``[..., d_x] -> [..., d_y]``; a tensor comes back a tensor (same
        dtype and device), anything else as float64 numpy."""
        arr = _as_array(x, "x")
        return _like(((arr - self.x_mean) / self.x_scale) @ self.W + self.b, x)

    def apply_direction(self, v: Any) -> Any:
        """Map a direction (a difference of two X states, e.g. a steering vector)
        ``[..., d_x] -> [..., d_y]``: the linear part only, ``(v / x_scale) @ W``, so
        ``apply(x + v) - apply(x) == apply_direction(v)``."""
        arr = _as_array(v, "v")
        return _like((arr / self.x_scale) @ self.W, v)


@dataclass(frozen=True)
class Projection:
    """Held-out fit of a linear map from X to Y.

    Attributes:
        correlation: Mean over Y's dimensions of the Pearson correlation, across test
            texts, between predicted and true values (NaN dimensions left out; NaN if all).
        per_dim: ``[d_y]``, that correlation per dimension; NaN where the true or the
            predicted test values are constant.
        map: The fitted ``LinearMap``.
    """

    correlation: float
    per_dim: np.ndarray
    map: LinearMap


def fit_linear_map(X: Any, Y: Any, ridge: float = 1.0) -> LinearMap:
    """Ridge regression of ``Y`` on standardised ``X``, in closed form.

    Minimises ``||Xs W - (Y - mean(Y))||_F^2 + ridge ||W||_F^2`` with ``Xs`` the
    column-standardised ``X`` (mean 0, population sd 1); the same objective as
    ``sklearn.linear_model.Ridge(alpha=ridge)`` on ``Xs``. Solved in the primal
    (``d_x x d_x``) or dual (``n x n``) form, whichever is smaller.

    Args:
        X: ``[n, d_x]`` training texts.
        Y: ``[n, d_y]`` the same texts in the target space.
        ridge: Penalty, >= 0 (0 only when the normal equations are non-singular).

    Returns:
        The ``LinearMap``.

    Raises:
        ValueError: As for ``linear_cka``, or ``ridge < 0``.
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0; got {ridge!r}")
    x, y = _as_pair(X, Y, debiased=False)
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    x_scale = x.std(axis=0)
    x_scale[x_scale == 0] = 1.0  # constant features are 0 after centring; any scale will do
    xs = (x - x_mean) / x_scale
    yc = y - y_mean
    n, d = xs.shape
    if d <= n:
        w = np.linalg.solve(xs.T @ xs + ridge * np.eye(d), xs.T @ yc)
    else:
        w = xs.T @ np.linalg.solve(xs @ xs.T + ridge * np.eye(n), yc)
    return LinearMap(W=w, b=y_mean, x_mean=x_mean, x_scale=x_scale)


def _column_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b``; NaN where
    either column is constant."""
    ac = a - a.mean(axis=0)
    bc = b - b.mean(axis=0)
    denom = np.sqrt(np.sum(ac**2, axis=0) * np.sum(bc**2, axis=0))
    num = np.sum(ac * bc, axis=0)
    out = np.full(a.shape[1], np.nan)
    ok = denom > 0
    out[ok] = num[ok] / denom[ok]
    return out


def projection_correlation(
    X_train: Any, Y_train: Any, X_test: Any, Y_test: Any, ridge: float = 1.0
) -> Projection:
    """How well a linear map from X's space predicts Y's on held-out texts.

    The "average correlation" criterion: fit ``fit_linear_map(X_train, Y_train, ridge)``,
    predict ``Y_hat = map.apply(X_test)``, and for each dimension ``j`` of Y take the
    Pearson correlation across test texts between ``Y_hat[:, j]`` and ``Y_test[:, j]``;
    the criterion is the mean of these over ``j``. It is 1 when every dimension is
    predicted up to a positive affine rescaling, about 0 for unrelated data, and not
    symmetric in X and Y.

    Args:
        X_train: ``[n_train, d_x]``.
        Y_train: ``[n_train, d_y]``, paired with ``X_train``.
        X_test: ``[n_test, d_x]``, texts not in the training set.
        Y_test: ``[n_test, d_y]``, paired with ``X_test``.
        ridge: Penalty of the ridge regression (see ``fit_linear_map``).

    Returns:
        ``Projection`` (criterion, per-dimension correlations, the fitted map).

    Raises:
        ValueError: As for ``fit_linear_map``; dimensions that differ between train and
            test.
    """
    fitted = fit_linear_map(X_train, Y_train, ridge)
    x_test, y_test = _as_pair(X_test, Y_test, debiased=False, x_name="X_test", y_name="Y_test")
    if x_test.shape[1] != fitted.W.shape[0] or y_test.shape[1] != fitted.W.shape[1]:
        raise ValueError(
            f"test dimensions must match training: X {fitted.W.shape[0]} and Y "
            f"{fitted.W.shape[1]} in training, X {x_test.shape[1]} and Y {y_test.shape[1]} in test"
        )
    per_dim = _column_correlations(fitted.apply(x_test), y_test)
    finite = per_dim[np.isfinite(per_dim)]
    mean = float(finite.mean()) if finite.size else float("nan")
    return Projection(correlation=mean, per_dim=per_dim, map=fitted)


# --------------------------------------------------------------------------- resampling over texts


@dataclass(frozen=True)
class PermutationNull:
    """A statistic against its null under shuffled pairing of texts.

    Attributes:
        observed: The statistic with the true pairing.
        null: ``[n_perm]``, the statistic with Y's rows permuted.
        p_value: ``stats.empirical_p_value(observed, null, "greater")``: the fraction of
            draws (the observed one included) at least as large; never 0.
    """

    observed: float
    null: np.ndarray
    p_value: float


def _check_n(n: int, count: int, count_name: str) -> None:
    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"n (the number of texts) must be a whole number >= 2; got {n!r}")
    if not (isinstance(count, (int, np.integer)) and count >= 1):
        raise ValueError(f"{count_name} must be a whole number >= 1; got {count!r}")


def bootstrap_texts(
    stat_fn: StatFn, n: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> stats.Interval:
    """Percentile-bootstrap interval of a statistic over texts (``stats.bootstrap_ci`` on
    the text indices).

    Each resample draws ``n`` texts with replacement and evaluates
    ``stat_fn(rows, rows)``: the same texts on both sides, so pairs stay paired. Repeated
    texts enter the debiased CKA as distinct samples, which biases it slightly upward; the
    plain statistic has no such issue.

    Args:
        stat_fn: ``(rows_x, rows_y) -> float``: the statistic on ``X[rows_x]`` paired
            with ``Y[rows_y]`` (int index arrays of length ``n``), e.g.
            ``lambda ix, iy: linear_cka(X[ix], Y[iy])``.
        n: Number of texts.
        n_boot: Number of resamples.
        seed: Seed of the resampling.
        alpha: The interval covers ``1 - alpha``.

    Returns:
        ``stats.Interval`` whose ``point`` is ``stat_fn(arange(n), arange(n))``.

    Raises:
        ValueError: ``n < 2``, ``n_boot < 1`` or ``alpha`` outside (0, 1).
    """
    _check_n(n, n_boot, "n_boot")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a fraction in (0, 1), e.g. 0.05; got {alpha!r}")

    def on_rows(rows: np.ndarray) -> float:
        idx = rows.astype(np.intp)
        return float(stat_fn(idx, idx))

    return stats.bootstrap_ci(
        np.arange(n), stat=on_rows, n_resamples=n_boot, ci=1.0 - alpha, seed=seed
    )


def permutation_null(stat_fn: StatFn, n: int, n_perm: int = 1000, seed: int = 0) -> PermutationNull:
    """Null distribution of a statistic when Y's texts are shuffled against X's.

    Each draw evaluates ``stat_fn(arange(n), perm)`` for a uniform random permutation
    ``perm``: X's rows stay in place and Y's are re-paired at random, which keeps each
    side's own structure and breaks only the correspondence between them.

    Args:
        stat_fn: ``(rows_x, rows_y) -> float``, as for ``bootstrap_texts``.
        n: Number of texts.
        n_perm: Number of permutations.
        seed: Seed of the permutations.

    Returns:
        ``PermutationNull`` with the observed statistic, the null draws and the one-sided
        (greater) p-value.

    Raises:
        ValueError: ``n < 2``, ``n_perm < 1``, or a non-finite statistic.
    """
    _check_n(n, n_perm, "n_perm")
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    observed = float(stat_fn(rows, rows))
    null = np.array([float(stat_fn(rows, rng.permutation(n))) for _ in range(n_perm)])
    return PermutationNull(observed, null, stats.empirical_p_value(observed, null, "greater"))
