"""CAA (Rimsky et al.): the mean difference of activations over CAA pairs (prompt + the
behaviour-matching letter minus prompt + another letter)."""

from __future__ import annotations

from eas.core.vectors import mean_difference
from eas.methods.base import caa_pairs as contrast  # noqa: F401 - the method's contrast


def aggregate(positives, negatives, seed: int = 0):
    return mean_difference(positives, negatives)
