"""A logistic-regression probe's direction on the CAA pairs (scaled to their mean difference).

``method.vector_path=<run dir of experiment=probe>`` steers with the probes that experiment
trained instead (its ``probes/*.safetensors`` at this site and ``method.position``)."""

from __future__ import annotations

from eas.core.vectors import probe_direction
from eas.methods.base import caa_pairs as contrast  # noqa: F401 - the method's contrast


def aggregate(positives, negatives, seed: int = 0):
    return probe_direction(positives, negatives, seed=seed)
