"""Tests for eas.core.probes on synthetic activations with known structure.

A planted direction must give a high held-out AUROC and a small empirical p-value against
random directions; shuffled labels must give AUROC near 0.5 and a large p; CCS must find a
planted contrast without labels; abstention curves must behave as coverage grows; the inner
CV must pick C the way a hand-written grid search does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from eas.core import probes, stats


def planted(n: int = 200, d: int = 32, signal: float = 1.5, seed: int = 0):
    """``x = noise + (2y - 1) * signal * v`` with a unit ``v``; also returns ``v``."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(d)
    v /= np.linalg.norm(v)
    y = np.r_[np.ones(n // 2, int), np.zeros(n - n // 2, int)]
    rng.shuffle(y)
    x = rng.standard_normal((n, d)) + np.outer(2 * y - 1, v) * signal
    return x, y, v


def out_of_fold(x, y, kind="logreg", folds=5, seed=0):
    fit = (lambda a, b, g: probes.fit_logistic(a, b, cs=[0.01, 0.1, 1.0], seed=seed)) if kind == "logreg" \
        else (lambda a, b, g: probes.fit_mean_diff(a, b))
    return probes.cross_validate(x, y, fit, probes.fold_indices(y, folds, seed=seed))


# --------------------------------------------------------------------------- probes


@pytest.mark.parametrize("kind", ["logreg", "mean_diff"])
def test_planted_direction_gives_high_auroc_and_small_p(kind):
    x, y, v = planted()
    cv = out_of_fold(x, y, kind)
    assert not np.isnan(cv.scores).any() and set(cv.fold.tolist()) == set(range(5))
    m = probes.evaluate(y, cv.scores, n_resamples=2000)
    assert m.auroc.point > 0.9 and m.auroc.low > 0.8 and m.accuracy.point > 0.8
    null = probes.random_direction_baseline(x, y, n_directions=500, seed=1)
    assert null.best < m.auroc.point
    assert null.p_value(m.auroc.point) == pytest.approx(1 / 501)  # beats every random direction
    # the learned direction is the planted one
    for p in cv.probes:
        assert abs(p.direction @ v) > 0.8


@pytest.mark.parametrize("kind", ["logreg", "mean_diff"])
def test_random_labels_give_chance_auroc_and_large_p(kind):
    x, _, _ = planted(signal=0.0)
    y = np.random.default_rng(5).permutation(np.r_[np.ones(100, int), np.zeros(100, int)])
    cv = out_of_fold(x, y, kind)
    m = probes.evaluate(y, cv.scores, n_resamples=2000)
    assert m.auroc.contains(0.5) and abs(m.auroc.point - 0.5) < 0.12
    null = probes.random_direction_baseline(x, y, n_directions=500, seed=1)
    assert null.p_value(m.auroc.point) > 0.2


def test_logistic_probe_applies_to_raw_activations():
    """Weights mapped back from standardised space give sklearn's decision function."""
    x, y, _ = planted(n=120, d=16)
    x = x * np.linspace(0.1, 10, 16) + 3.0  # very different scales and a mean offset
    p = probes.fit_logistic(x, y, cs=[0.5])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    ref = LogisticRegression(C=0.5, max_iter=2000).fit((x - mu) / sd, y)
    np.testing.assert_allclose(p.score(x), ref.decision_function((x - mu) / sd), rtol=1e-6, atol=1e-6)
    assert p.c == 0.5


def test_mean_diff_threshold_is_the_midpoint():
    x, y, _ = planted(n=60, d=8)
    p = probes.fit_mean_diff(x, y)
    mid = (x[y == 1].mean(0) + x[y == 0].mean(0)) / 2
    assert p.score(mid[None])[0] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(p.weight, x[y == 1].mean(0) - x[y == 0].mean(0))


def test_inner_cv_picks_c_like_a_grid_search():
    cs = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    folds = 3

    def grid_search(x, y):
        splits = probes.fold_indices(y, folds, seed=0)
        mu, sd = x.mean(0), x.std(0) + 1e-6
        z = (x - mu) / sd
        loss = [np.mean([log_loss(y[te], LogisticRegression(C=c, max_iter=5000).fit(z[tr], y[tr])
                                  .predict_proba(z[te])[:, 1], labels=[0, 1]) for tr, te in splits]) for c in cs]
        return cs[int(np.argmin(loss))]

    # weak signal in many dimensions, few items: strong regularisation wins
    noisy_x, noisy_y, _ = planted(n=40, d=60, signal=0.4, seed=3)
    # a clean signal with many items: weak regularisation wins
    clean_x, clean_y, _ = planted(n=300, d=5, signal=1.5, seed=4)
    noisy = probes.fit_logistic(noisy_x, noisy_y, cs=cs, inner_folds=folds, seed=0)
    clean = probes.fit_logistic(clean_x, clean_y, cs=cs, inner_folds=folds, seed=0)
    assert noisy.c == grid_search(noisy_x, noisy_y)
    assert clean.c == grid_search(clean_x, clean_y)
    assert noisy.c < clean.c


def test_tiny_classes_skip_the_inner_cv():
    x = np.random.default_rng(0).standard_normal((5, 4))
    p = probes.fit_logistic(x, np.array([1, 0, 0, 0, 0]), cs=[0.1, 1.0, 10.0], inner_folds=3)
    assert p.c == 1.0  # one positive: no inner folds possible, the middle of the grid


def test_fold_indices_keep_groups_together_and_stratify():
    n = 40
    groups = np.r_[np.arange(n), np.arange(n)]  # a contrast pair per item
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    splits = probes.fold_indices(y, 5, groups, seed=0)
    seen = np.concatenate([te for _, te in splits])
    assert sorted(seen.tolist()) == list(range(2 * n))
    for tr, te in splits:
        assert not set(groups[tr]) & set(groups[te])
        assert y[te].mean() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="folds=41 but the smaller class has only 40 groups"):
        probes.fold_indices(y, 41, groups)
    with pytest.raises(ValueError, match="need at least 2"):
        probes.fold_indices(y, 1)


def test_single_split_scores_only_its_test_rows():
    x, y, _ = planted(n=50, d=6)
    tr, te = np.arange(30), np.arange(30, 50)
    cv = probes.cross_validate(x, y, lambda a, b, g: probes.fit_mean_diff(a, b), [(tr, te)])
    assert np.isnan(cv.scores[tr]).all() and not np.isnan(cv.scores[te]).any()
    assert (cv.fold[tr] == -1).all() and (cv.fold[te] == 0).all()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"x must be \[n, d_model\]"):
        probes.fit_mean_diff(np.zeros(5), np.array([0, 1, 0, 1, 0]))
    with pytest.raises(ValueError, match="need both classes"):
        probes.fit_mean_diff(np.zeros((4, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        probes.fit_mean_diff(np.full((4, 2), np.nan), np.array([0, 1, 0, 1]))


# --------------------------------------------------------------------------- AUROC null


def test_auroc_columns_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    s = np.round(rng.standard_normal((50, 7)), 1)  # many ties
    ref = [roc_auc_score(y, s[:, j]) for j in range(7)]
    np.testing.assert_allclose(probes.auroc_columns(y, s), ref, atol=1e-12)


def test_random_directions_are_unit_and_seeded():
    r = probes.random_directions(16, 100, seed=3)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0)
    np.testing.assert_array_equal(r, probes.random_directions(16, 100, seed=3))
    assert not np.array_equal(r, probes.random_directions(16, 100, seed=4))


def test_random_baseline_is_one_matmul_and_matches_a_loop():
    x, y, _ = planted(n=60, d=10)
    null = probes.random_direction_baseline(x, y, n_directions=40, seed=2)
    dirs = probes.random_directions(10, 40, seed=2)
    loop = np.array([max(a, 1 - a) for a in (roc_auc_score(y, x @ d) for d in dirs)])
    np.testing.assert_allclose(null.null, loop, atol=1e-12)
    assert null.best == loop.max() and null.low <= null.mean <= null.high
    assert null.p_value(null.best) == pytest.approx((1 + 1) / 41)
    assert null.p_value(0.0) == 1.0


# --------------------------------------------------------------------------- CCS


def contrast_pairs(n: int = 160, d: int = 24, seed: int = 0):
    """Pairs whose members differ by a big "which letter" offset (removed by CCS's
    normalisation) and by +-v depending on which member is true."""
    rng = np.random.default_rng(seed)
    v, u = rng.standard_normal(d), rng.standard_normal(d)
    v, u = v / np.linalg.norm(v), u / np.linalg.norm(u)
    truth = rng.integers(0, 2, n)  # 1: the first member is the true one
    sign = (2 * truth - 1)[:, None]
    h = rng.standard_normal((n, d))
    first = h + 4 * u + 2 * sign * v + 0.3 * rng.standard_normal((n, d))
    second = h - 4 * u - 2 * sign * v + 0.3 * rng.standard_normal((n, d))
    return first, second, truth, v


def test_ccs_recovers_a_planted_contrast_without_labels():
    first, second, truth, v = contrast_pairs()
    tr, te = slice(0, 100), slice(100, None)
    p = probes.fit_ccs(first[tr], second[tr], truth[tr], n_restarts=4, epochs=300, lr=1e-2, seed=0)
    acc = np.mean((p.predict_proba(first[te], second[te]) > 0.5) == (truth[te] == 1))
    assert acc > 0.9
    assert abs(p.direction @ v) > 0.5
    assert p.loss == min(p.restart_losses) and len(p.restart_losses) == 4


def test_ccs_sign_is_set_by_train_labels_only():
    first, second, truth, _ = contrast_pairs()
    kw = {"n_restarts": 2, "epochs": 200, "lr": 1e-2, "seed": 0}
    a = probes.fit_ccs(first, second, truth, **kw)
    b = probes.fit_ccs(first, second, 1 - truth, **kw)
    np.testing.assert_allclose(a.weight, b.weight)  # training never sees the labels
    assert a.sign == -b.sign
    np.testing.assert_allclose(a.predict_proba(first, second), 1 - b.predict_proba(first, second))


def test_ccs_layers_equal_one_layer_at_a_time():
    first, second, truth, _ = contrast_pairs(n=60, d=8)
    stack_a = np.stack([first, first[:, ::-1]])
    stack_b = np.stack([second, second[:, ::-1]])
    both = probes.fit_ccs_layers(stack_a, stack_b, truth, n_restarts=3, epochs=50, seed=1)
    assert len(both) == 2
    for layer, p in enumerate(both):
        alone = probes.fit_ccs(stack_a[layer], stack_b[layer], truth, n_restarts=3, epochs=50, seed=1)
        np.testing.assert_allclose(p.weight, alone.weight, rtol=1e-4, atol=1e-5)
        assert p.restart_losses == pytest.approx(alone.restart_losses, rel=1e-4)
    with pytest.raises(ValueError, match=r"\[layer, n, d_model\]"):
        probes.fit_ccs_layers(first, second)
    # tensors are accepted too
    one = probes.fit_ccs(torch.as_tensor(first), torch.as_tensor(second), truth, n_restarts=3, epochs=50, seed=1)
    assert one.weight.shape == (8,)


# --------------------------------------------------------------------------- abstention


def test_accuracy_coverage_is_monotone_in_coverage():
    rng = np.random.default_rng(0)
    correct = rng.random(200) < 0.6
    conf = np.where(correct, 0.3, 0.0) + rng.random(200)  # informative, not perfect
    c = probes.accuracy_coverage(correct, conf)
    assert (np.diff(c.coverage) > 0).all() and c.coverage[-1] == 1.0
    assert (np.diff(c.threshold) < 0).all()
    assert c.accuracy[-1] == pytest.approx(correct.mean())
    assert c.accuracy_at(0.25) > correct.mean()  # the confident quarter is more accurate
    # a perfect score: accuracy never rises as coverage grows
    perfect = probes.accuracy_coverage(correct, correct.astype(float) + rng.random(200) * 0.1)
    assert (np.diff(perfect.accuracy) <= 1e-12).all()
    assert perfect.area > c.area > probes.accuracy_coverage(correct, -conf).area


def test_ties_are_answered_together_and_constant_score_is_flat():
    correct = np.array([1, 0, 1, 1, 0, 0], bool)
    c = probes.accuracy_coverage(correct, np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.1]))
    np.testing.assert_allclose(c.coverage, [2 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(c.accuracy, [1 / 2, 3 / 5, 3 / 6])
    flat = probes.accuracy_coverage(correct, np.zeros(6))
    assert flat.coverage.tolist() == [1.0] and flat.area == pytest.approx(0.5)


def test_abstain_at_threshold():
    correct = np.array([1, 1, 0, 1, 0, 0], bool)
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    a = probes.abstain(correct, conf, 0.6)
    assert a.n_answered == 4 and a.coverage == pytest.approx(4 / 6)
    assert a.accuracy.point == pytest.approx(3 / 4) and a.accuracy_all == pytest.approx(0.5)
    assert a.accuracy == stats.accuracy_with_ci(correct[:4])
    none = probes.abstain(correct, conf, 0.95)
    assert none.n_answered == 0 and none.accuracy is None


def test_letter_strata_stop_a_letter_only_probe_from_scoring_below_chance():
    """Contrast pairs whose features carry only the appended letter: folds balanced on the
    labels alone anti-learn (AUROC well below 0.5); folds balanced on the positive's letter
    keep the letter-only probe near chance."""
    rng = np.random.default_rng(0)
    n, d = 48, 16
    letter_of_positive = rng.permutation(np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)])
    letter_vec = rng.standard_normal(d) * 3
    letters = np.r_[letter_of_positive, 1 - letter_of_positive]  # pos rows, then neg rows
    x = np.outer(letters, letter_vec) + 0.1 * rng.standard_normal((2 * n, d))
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    groups = np.r_[np.arange(n), np.arange(n)]
    strata = np.r_[letter_of_positive, letter_of_positive]

    def oof_auroc(splits):
        cv = probes.cross_validate(x, y, lambda a, b, g: probes.fit_mean_diff(a, b), splits, groups)
        return stats.auroc(y, cv.scores)

    plain = np.mean([oof_auroc(probes.fold_indices(y, 6, groups, seed=s)) for s in range(5)])
    balanced = np.mean([oof_auroc(probes.fold_indices(y, 6, groups, seed=s, strata=strata)) for s in range(5)])
    assert plain < 0.4
    assert abs(balanced - 0.5) < 0.1
