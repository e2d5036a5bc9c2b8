"""A baseline: a seeded uniformly random direction with the norm of the CAA pairs' mean difference."""

from __future__ import annotations

from eas.core.vectors import mean_difference, random_direction
from eas.methods.base import caa_pairs as contrast  # noqa: F401 - the method's contrast


def aggregate(positives, negatives, seed: int = 0):
    return random_direction(positives.shape[-1], float(mean_difference(positives, negatives).norm()), seed)
