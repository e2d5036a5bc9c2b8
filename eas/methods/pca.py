"""RepE-style PCA: the first principal component of the CAA pairs' differences, signed and
scaled like their mean difference."""

from __future__ import annotations

from eas.core.vectors import pca_direction
from eas.methods.base import caa_pairs as contrast  # noqa: F401 - the method's contrast


def aggregate(positives, negatives, seed: int = 0):
    return pca_direction(positives, negatives)
