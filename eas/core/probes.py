"""Linear probes on activations, and the checks that keep their numbers honest.

- ``fit_logistic``: L2 logistic regression on standardised features, its ``C`` chosen by
  inner cross-validation (log loss); ``fit_mean_diff``: projection onto
  ``mean(pos) - mean(neg)``, thresholded at the midpoint of the class means.
- ``cross_validate``: out-of-fold scores over stratified (optionally grouped) k folds,
  so every item is scored by a probe that never saw it.
- ``evaluate``: AUROC with a stratified bootstrap 95% CI and accuracy with a Wilson CI.
- ``fit_ccs``: contrast-consistent search (Burns et al. 2022), unsupervised, on pairs.
- ``random_direction_baseline``: AUROC of N random unit directions, the null a probe
  direction must beat (one matmul for all directions).
- ``accuracy_coverage`` / ``abstain``: selective prediction from a confidence score.

Pure functions: arrays (numpy or CPU tensors) in, arrays and frozen dataclasses out.
Shapes: ``x`` is ``[n, d_model]`` activations of one layer; ``labels`` is ``[n]`` with
1 for the positive class (the behaviour-matching text, or "the model answered right").
Scores are logits: higher means more likely positive, 0 is the decision threshold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import ArrayLike

from eas.core import stats

DEFAULT_CS: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 2, 7))
"""Inverse L2 strengths searched by the inner cross-validation of ``fit_logistic``."""

_EPS = 1e-6


def _x(x: ArrayLike, name: str = "x") -> np.ndarray:
    arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [n, d_model]; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or inf values")
    return arr.astype(np.float64, copy=False)


def _y(labels: ArrayLike, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},); got {y.shape}")
    if not np.isin(np.unique(y), [0, 1]).all():
        raise ValueError(f"labels must be 0/1 or bool; got values {np.unique(y)[:10].tolist()}")
    y = y.astype(int)
    if y.min() == y.max():
        raise ValueError(f"labels need both classes; got only {int(y[0])} (n={n})")
    return y


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class LinearProbe:
    """``score(x) = x @ weight + bias``, in the units of the raw activations.

    Attributes:
        kind: ``"logreg"`` or ``"mean_diff"``.
        weight: ``[d_model]``.
        bias: Scalar; ``score > 0`` predicts the positive class.
        c: The inverse L2 strength chosen by inner CV (logreg only).
    """

    kind: str
    weight: np.ndarray
    bias: float
    c: float | None = None

    def score(self, x: ArrayLike) -> np.ndarray:
        """``[n, d_model] -> [n]`` logits."""
        return _x(x) @ self.weight + self.bias

    @property
    def direction(self) -> np.ndarray:
        """The unit vector of ``weight`` (``[d_model]``), pointing to the positive class."""
        norm = float(np.linalg.norm(self.weight))
        return self.weight / norm if norm > 0 else self.weight


def fold_indices(
    labels: ArrayLike, folds: int, groups: ArrayLike | None = None, seed: int = 0,
    strata: ArrayLike | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold splits; with ``groups`` (e.g. the item of each text of a contrast
    pair) rows of a group always land in the same fold, so a pair never straddles train
    and test.

    ``strata`` (one value per row, constant within a group) replaces the labels as what is
    balanced across folds. Contrast pairs need it: each pair holds one positive and one
    negative, so the labels balance by themselves, while a nuisance such as which answer
    letter is the positive one does not; if a train fold leans to "A is positive", its
    held-out fold leans the other way, and a probe that only reads the letter scores
    *below* chance instead of at it.

    Returns:
        ``folds`` pairs of ``(train_index, test_index)``.

    Raises:
        ValueError: ``folds < 2`` or more folds than the smaller class has members (groups).
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels).astype(int)
    if folds < 2:
        raise ValueError(f"folds={folds}: need at least 2")
    smallest = _smallest_class(y, groups)
    if folds > smallest:
        raise ValueError(f"folds={folds} but the smaller class has only {smallest} "
                         f"{'groups' if groups is not None else 'members'}; use folds<={smallest}")
    target = y if strata is None else np.asarray(strata)
    with warnings.catch_warnings():  # a stratum smaller than `folds` is balanced as well as it can be
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        if groups is None:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
            return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), target)]
        splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), target, np.asarray(groups))]


def _smallest_class(y: np.ndarray, groups: ArrayLike | None) -> int:
    if groups is None:
        return int(min((y == 0).sum(), (y == 1).sum()))
    g = np.asarray(groups)
    return int(min(len(np.unique(g[y == 0])), len(np.unique(g[y == 1]))))


def fit_logistic(
    x: ArrayLike,
    labels: ArrayLike,
    cs: Sequence[float] = DEFAULT_CS,
    inner_folds: int = 3,
    groups: ArrayLike | None = None,
    seed: int = 0,
    max_iter: int = 2000,
) -> LinearProbe:
    """L2 logistic regression on standardised features; ``C`` by inner CV (log loss).

    Features are standardised with the training mean and sd, and the weights mapped back,
    so the probe applies to raw activations. With fewer members (or groups) in the smaller
    class than ``inner_folds`` the inner folds shrink; below 2 folds (or a single candidate)
    the middle value of ``cs`` is used without CV.

    Args:
        x: ``[n, d_model]`` training activations.
        labels: ``[n]`` 0/1.
        cs: Candidate inverse regularisation strengths.
        inner_folds: Folds of the inner CV that picks ``C``.
        groups: Optional ``[n]`` group ids kept together in inner folds.
        seed: Seeds the inner fold assignment.
        max_iter: lbfgs iterations.

    Returns:
        ``LinearProbe(kind="logreg")`` with the chosen ``c``.
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    xa = _x(x)
    y = _y(labels, len(xa))
    mu, sd = xa.mean(0), xa.std(0) + _EPS
    z = (xa - mu) / sd
    cs = [float(c) for c in cs]
    k = min(inner_folds, _smallest_class(y, groups))
    if len(cs) > 1 and k >= 2:
        splits = fold_indices(y, k, groups, seed)
        clf = LogisticRegressionCV(Cs=cs, cv=splits, l1_ratios=(0.0,), scoring="neg_log_loss",
                                   max_iter=max_iter, use_legacy_attributes=False).fit(z, y)
        c = float(np.ravel(clf.C_)[0])
    else:
        c = cs[len(cs) // 2]
        clf = LogisticRegression(C=c, max_iter=max_iter).fit(z, y)
    coef = clf.coef_[0] / sd
    bias = float(clf.intercept_[0] - coef @ mu)
    return LinearProbe("logreg", coef, bias, c)


def fit_mean_diff(x: ArrayLike, labels: ArrayLike) -> LinearProbe:
    """Projection onto ``mean(pos) - mean(neg)``, 0 at the midpoint of the two means."""
    xa = _x(x)
    y = _y(labels, len(xa))
    mu_pos, mu_neg = xa[y == 1].mean(0), xa[y == 0].mean(0)
    w = mu_pos - mu_neg
    return LinearProbe("mean_diff", w, float(-w @ (mu_pos + mu_neg) / 2))


Fit = Callable[[np.ndarray, np.ndarray, np.ndarray | None], LinearProbe]


@dataclass(frozen=True)
class CrossValidated:
    """Out-of-fold scores of one probe kind.

    Attributes:
        scores: ``[n]``: each row scored by the probe of the fold that held it out (NaN
            for a row in no test fold).
        fold: ``[n]`` fold index of each row (-1: in no test fold).
        probes: The probe fitted in each fold.
    """

    scores: np.ndarray
    fold: np.ndarray
    probes: tuple[LinearProbe, ...]


def cross_validate(
    x: ArrayLike, labels: ArrayLike, fit: Fit, splits: Sequence[tuple[np.ndarray, np.ndarray]],
    groups: ArrayLike | None = None,
) -> CrossValidated:
    """Fit on each split's train rows, score its test rows (``fit(x, y, groups)``).

    With ``fold_indices`` every row is in exactly one test fold. A single train/test split
    is also a valid ``splits``: rows in no test fold get a NaN score and fold -1.
    """
    xa = _x(x)
    y = _y(labels, len(xa))
    g = None if groups is None else np.asarray(groups)
    scores = np.full(len(y), np.nan)
    fold = np.full(len(y), -1)
    probes = []
    for i, (tr, te) in enumerate(splits):
        probe = fit(xa[tr], y[tr], None if g is None else g[tr])
        scores[te] = probe.score(xa[te])
        fold[te] = i
        probes.append(probe)
    return CrossValidated(scores, fold, tuple(probes))


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ProbeMetrics:
    """AUROC and accuracy of scores against labels.

    Attributes:
        auroc: Point and stratified percentile-bootstrap interval.
        accuracy: ``mean((score > threshold) == label)`` with a Wilson interval.
        n: Rows evaluated.
        n_pos: Positive rows.
    """

    auroc: stats.Interval
    accuracy: stats.Interval
    n: int
    n_pos: int


def evaluate(
    labels: ArrayLike, scores: ArrayLike, threshold: float = 0.0, n_resamples: int = 10_000,
    ci: float = 0.95, seed: int = 0,
) -> ProbeMetrics:
    """AUROC (``stats.bootstrap_auroc_ci``) and accuracy (``stats.accuracy_with_ci``)."""
    s = np.asarray(scores, np.float64)
    y = _y(labels, len(s))
    auc = stats.bootstrap_auroc_ci(y, s, n_resamples=n_resamples, ci=ci, seed=seed)
    acc = stats.accuracy_with_ci((s > threshold) == (y == 1), ci=ci)
    return ProbeMetrics(auc, acc, len(y), int(y.sum()))


def auroc_columns(labels: ArrayLike, scores: ArrayLike) -> np.ndarray:
    """AUROC of every column of ``scores`` (``[n, k] -> [k]``), ties counting one half.

    Mann-Whitney: ``(sum of positive ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with
    average ranks per column, so all columns cost one ``rankdata`` call.
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be [n, k]; got shape {s.shape}")
    y = _y(labels, s.shape[0]).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = rankdata(s, axis=0)
    return (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# --------------------------------------------------------------------------- random directions


@dataclass(frozen=True)
class RandomBaseline:
    """AUROC of random unit directions: the null distribution a probe direction must beat.

    Each random direction's AUROC is taken as ``max(auc, 1 - auc)``: its sign is chosen
    after seeing the evaluation labels, which favours the null, so p-values against it
    are conservative.

    Attributes:
        null: ``[n_directions]`` AUROCs.
        best: The highest random AUROC.
        low: 2.5th percentile of ``null``.
        high: 97.5th percentile of ``null``.
        mean: Mean of ``null``.
    """

    null: np.ndarray = field(repr=False)
    best: float
    low: float
    high: float
    mean: float

    def p_value(self, observed: float) -> float:
        """Empirical p of ``observed`` AUROC: ``(1 + #null >= observed) / (1 + N)``."""
        return stats.empirical_p_value(observed, self.null, alternative="greater")


def random_directions(d_model: int, n_directions: int, seed: int = 0) -> np.ndarray:
    """``[n_directions, d_model]`` unit vectors, uniform on the sphere (seeded)."""
    g = np.random.default_rng(seed).standard_normal((n_directions, d_model))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def random_direction_baseline(
    x: ArrayLike, labels: ArrayLike, n_directions: int = 1000, seed: int = 0
) -> RandomBaseline:
    """AUROC of ``n_directions`` random unit directions on ``x`` (one matmul for all).

    Args:
        x: ``[n, d_model]`` the rows the probe is evaluated on.
        labels: ``[n]`` 0/1.
        n_directions: Size of the null (>= 1).
        seed: Seeds the directions.
    """
    if n_directions < 1:
        raise ValueError(f"n_directions={n_directions}: need at least 1")
    xa = _x(x)
    y = _y(labels, len(xa))
    proj = xa @ random_directions(xa.shape[1], n_directions, seed).T  # [n, n_directions]
    auc = auroc_columns(y, proj)
    null = np.maximum(auc, 1.0 - auc)
    return RandomBaseline(null, float(null.max()), float(np.quantile(null, 0.025)),
                          float(np.quantile(null, 0.975)), float(null.mean()))


# --------------------------------------------------------------------------- CCS


@dataclass(frozen=True)
class CCSProbe:
    """A contrast-consistent search probe (Burns et al. 2022).

    ``p(x) = sigmoid(((x - mean) / sd) @ weight + bias)`` is applied to both members of a
    pair, each normalised with its own member's training mean and sd (which removes what
    the members differ in by construction, e.g. the answer letter). The pair's
    probability that its *first* member is the positive one is
    ``0.5 * (p(first) + 1 - p(second))``, flipped when ``sign == -1``.

    Attributes:
        weight: ``[d_model]`` on normalised inputs.
        bias: Scalar.
        mean_first, sd_first, mean_second, sd_second: ``[d_model]`` normalisation.
        sign: +1, or -1 when the unsupervised solution came out reversed against the
            training labels (CCS cannot know which end is "true").
        loss: Consistency + confidence loss of the chosen restart.
        restart_losses: Final loss of every restart.
    """

    weight: np.ndarray
    bias: float
    mean_first: np.ndarray = field(repr=False)
    sd_first: np.ndarray = field(repr=False)
    mean_second: np.ndarray = field(repr=False)
    sd_second: np.ndarray = field(repr=False)
    sign: int
    loss: float
    restart_losses: tuple[float, ...]

    def _p(self, x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(((x - mean) / sd) @ self.weight + self.bias)))

    def predict_proba(self, x_first: ArrayLike, x_second: ArrayLike) -> np.ndarray:
        """``[n]`` probability that the first member of each pair is the positive one."""
        a = self._p(_x(x_first, "x_first"), self.mean_first, self.sd_first)
        b = self._p(_x(x_second, "x_second"), self.mean_second, self.sd_second)
        p = 0.5 * (a + 1.0 - b)
        return p if self.sign > 0 else 1.0 - p

    @property
    def direction(self) -> np.ndarray:
        """Unit ``[d_model]`` direction in raw activation units (of the first member)."""
        w = self.weight / self.sd_first * self.sign
        return w / (np.linalg.norm(w) or 1.0)


def fit_ccs(
    x_first: ArrayLike,
    x_second: ArrayLike,
    labels: ArrayLike | None = None,
    n_restarts: int = 10,
    epochs: int = 1000,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> CCSProbe:
    """Train CCS on the contrast pairs of one layer; keep the restart with the lowest loss.

    Loss per pair: ``(p(first) - (1 - p(second)))**2 + min(p(first), p(second))**2``
    (consistency + confidence), averaged over pairs; full-batch AdamW as in the paper.

    Args:
        x_first: ``[n, d_model]`` first member of each pair.
        x_second: ``[n, d_model]`` second member.
        labels: Optional ``[n]``, 1 where the first member is the positive one; used only
            to choose the sign (reporting convention), never in training.
        n_restarts: Random initialisations.
        epochs: Optimiser steps.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        seed: Seeds the initialisations.
    """
    a, b = _x(x_first, "x_first"), _x(x_second, "x_second")
    return fit_ccs_layers(a[None], b[None], labels, n_restarts, epochs, lr, weight_decay, seed)[0]


def fit_ccs_layers(
    x_first: ArrayLike,
    x_second: ArrayLike,
    labels: ArrayLike | None = None,
    n_restarts: int = 10,
    epochs: int = 1000,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> list[CCSProbe]:
    """``fit_ccs`` for many layers at once: ``x_first``/``x_second`` are
    ``[layer, n, d_model]``; returns one probe per layer.

    Every (layer, restart) is an independent optimisation, but all run in one batched
    loop (the weight is ``[layer, d_model, restart]``), so the per-step overhead is paid
    once rather than per layer and restart.
    """
    a = np.asarray(x_first.detach().cpu() if isinstance(x_first, torch.Tensor) else x_first, np.float64)
    b = np.asarray(x_second.detach().cpu() if isinstance(x_second, torch.Tensor) else x_second, np.float64)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(f"x_first and x_second must both be [layer, n, d_model]; got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("x_first or x_second holds NaN or inf values")
    n_layers, n, d = a.shape
    if n < 2:
        raise ValueError(f"CCS needs at least 2 pairs; got {n}")
    if n_restarts < 1 or epochs < 1:
        raise ValueError(f"n_restarts={n_restarts}, epochs={epochs}: both must be >= 1")
    ma, sa = a.mean(1, keepdims=True), a.std(1, keepdims=True) + _EPS
    mb, sb = b.mean(1, keepdims=True), b.std(1, keepdims=True) + _EPS
    ta = torch.as_tensor((a - ma) / sa, dtype=torch.float32)  # [layer, n, d]
    tb = torch.as_tensor((b - mb) / sb, dtype=torch.float32)
    # every layer starts from the same seeded restarts, so a layer's probe does not depend
    # on which other layers share the batch
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / np.sqrt(d)  # nn.Linear's default initialisation
    w0 = (torch.rand(d, n_restarts, generator=gen) * 2 - 1) * bound
    b0 = (torch.rand(1, n_restarts, generator=gen) * 2 - 1) * bound
    w = w0.repeat(n_layers, 1, 1).requires_grad_()
    bias = b0.repeat(n_layers, 1, 1).requires_grad_()
    opt = torch.optim.AdamW([w, bias], lr=lr, weight_decay=weight_decay)

    def losses() -> torch.Tensor:  # [layer, restart]
        pa, pb = torch.sigmoid(ta @ w + bias), torch.sigmoid(tb @ w + bias)  # [layer, n, restart]
        return ((pa - (1 - pb)) ** 2).mean(1) + (torch.minimum(pa, pb) ** 2).mean(1)

    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            losses().sum().backward()  # no shared parameters: the optimisations stay independent
            opt.step()
    with torch.no_grad():
        final = losses().numpy().astype(np.float64)
    y = None
    if labels is not None:
        y = np.asarray(labels).astype(int)
        if y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},); got {y.shape}")
    out = []
    for layer in range(n_layers):
        best = int(np.argmin(final[layer]))
        probe = CCSProbe(w.detach()[layer, :, best].numpy().astype(np.float64),
                         float(bias.detach()[layer, 0, best]), ma[layer, 0], sa[layer, 0], mb[layer, 0],
                         sb[layer, 0], 1, float(final[layer, best]), tuple(float(v) for v in final[layer]))
        if y is not None and np.mean((probe.predict_proba(a[layer], b[layer]) > 0.5) == (y == 1)) < 0.5:
            probe = CCSProbe(**{**probe.__dict__, "sign": -1})
        out.append(probe)
    return out


# --------------------------------------------------------------------------- abstention


@dataclass(frozen=True)
class AccuracyCoverage:
    """Selective prediction: answer only the items whose confidence is at least a threshold.

    One point per distinct confidence value, from the most confident down, so ties are
    answered or abstained together.

    Attributes:
        threshold: ``[k]`` confidences, decreasing.
        coverage: ``[k]`` fraction of items answered at each threshold, increasing to 1.
        accuracy: ``[k]`` accuracy on the answered items.
    """

    threshold: np.ndarray
    coverage: np.ndarray
    accuracy: np.ndarray

    @property
    def area(self) -> float:
        """Area under the accuracy-coverage curve (step-wise; full-coverage accuracy for a
        constant score, 1 for a perfect ranking with any errors last)."""
        widths = np.diff(np.r_[0.0, self.coverage])
        return float((widths * self.accuracy).sum())

    def accuracy_at(self, coverage: float) -> float:
        """Accuracy at the largest coverage ``<= coverage`` (NaN if even the first point is
        above it)."""
        ok = self.coverage <= coverage + 1e-12
        return float(self.accuracy[ok][-1]) if ok.any() else float("nan")


def accuracy_coverage(correct: ArrayLike, confidence: ArrayLike) -> AccuracyCoverage:
    """The accuracy-coverage curve of ``confidence`` (``[n]``) for ``correct`` (``[n]`` bool)."""
    c = np.asarray(correct).astype(bool)
    s = np.asarray(confidence, np.float64)
    if c.shape != s.shape or c.ndim != 1 or c.size == 0:
        raise ValueError(f"correct and confidence must be equal-length, non-empty 1-D; got {c.shape}, {s.shape}")
    order = np.argsort(-s, kind="stable")
    s_sorted, c_sorted = s[order], c[order]
    last_of_tie = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    answered = np.arange(1, len(s) + 1)[last_of_tie]
    hits = np.cumsum(c_sorted)[last_of_tie]
    return AccuracyCoverage(s_sorted[last_of_tie], answered / len(s), hits / answered)


@dataclass(frozen=True)
class Abstention:
    """Answer when ``confidence >= threshold``, abstain otherwise.

    Attributes:
        threshold: The confidence threshold.
        coverage: Fraction answered.
        n_answered: Items answered.
        accuracy: Accuracy on the answered items (the effective accuracy of a system that
            may abstain; NaN when it answers nothing), with a Wilson interval.
        accuracy_all: Accuracy with every item answered (no abstention), for comparison.
    """

    threshold: float
    coverage: float
    n_answered: int
    accuracy: stats.Interval | None
    accuracy_all: float


def abstain(correct: ArrayLike, confidence: ArrayLike, threshold: float) -> Abstention:
    """Selective accuracy at ``threshold`` (``correct``/``confidence``: ``[n]``)."""
    c = np.asarray(correct).astype(bool)
    s = np.asarray(confidence, np.float64)
    if c.shape != s.shape or c.size == 0:
        raise ValueError(f"correct and confidence must be equal-length and non-empty; got {c.shape}, {s.shape}")
    keep = s >= threshold
    acc = stats.accuracy_with_ci(c[keep]) if keep.any() else None
    return Abstention(float(threshold), float(keep.mean()), int(keep.sum()), acc, float(c.mean()))
