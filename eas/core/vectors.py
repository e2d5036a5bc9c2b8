"""Steering vectors from positive and negative activations.

All functions take ``Float[Tensor, "n d_model"]`` activations (one layer) and
return a ``Float[Tensor, "d_model"]`` direction in the same units as the
activations (unnormalised unless said otherwise).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def mean_difference(positives: Tensor, negatives: Tensor) -> Tensor:
    """mean(positives) - mean(negatives): CAA, and the PAS family given their contrasts."""
    return positives.float().mean(0) - negatives.float().mean(0)


def pca_direction(positives: Tensor, negatives: Tensor) -> Tensor:
    """First principal component of paired differences (RepE style), signed to agree with the
    mean difference and scaled to its norm, so strengths are comparable across methods.

    RepE presents each pair in a random order, so differences come with random signs and
    their mean is ~0; that is the same as the uncentred decomposition used here.
    """
    if positives.shape != negatives.shape:
        raise ValueError(f"pca needs paired activations, got {tuple(positives.shape)} and {tuple(negatives.shape)}")
    diffs = positives.float() - negatives.float()
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    pc = vh[0]
    md = diffs.mean(0)
    if pc @ md < 0:
        pc = -pc
    return pc * md.norm()


def probe_direction(positives: Tensor, negatives: Tensor, c: float = 1.0, seed: int = 0) -> Tensor:
    """Weight vector of an L2 logistic-regression probe (positives = 1) on standardised
    features, mapped back to activation space and scaled to the mean difference's norm."""
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([positives, negatives]).float().numpy()
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - mu) / sd, y)
    w = torch.from_numpy(clf.coef_[0] / sd).float()
    return w / w.norm() * mean_difference(positives, negatives).norm()


def random_direction(d_model: int, norm: float, seed: int) -> Tensor:
    """A uniformly random direction with the given norm (a baseline)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d_model, generator=g)
    return v / v.norm() * norm


def normalize(vector: Tensor) -> Tensor:
    n = vector.norm()
    return vector / n if n > 0 else vector
