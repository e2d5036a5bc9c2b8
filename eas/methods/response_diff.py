"""Response difference: the mean activation difference between one prompt answered with a
trait's response and the same prompt answered with the other response (contrast-pair files,
``benchmark.format=pairs``; persona- and style-vector work builds its vectors this way).

Positives are ``prompt + options[label]`` as the assistant's reply, negatives the same prompt
with another option (the other one of a pair; of more, a seeded random one), each through
``Prompter.with_response``. The contrast reads only the items, never the unsteered model's
predictions; the positions read are ``method.position``'s.
"""

from __future__ import annotations

import numpy as np

from eas.core.vectors import mean_difference
from eas.methods.base import Contrast


def contrast(items, predicted, prompter, seed: int = 0) -> Contrast:
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for it in items:
        others = [k for k in range(len(it.options)) if k != it.label]
        other = others[0] if len(others) == 1 else int(others[rng.integers(len(others))])
        pos.append(prompter.with_response(it, it.label))
        neg.append(prompter.with_response(it, other))
    return Contrast(pos, neg, paired=True)


def aggregate(positives, negatives, seed: int = 0):
    return mean_difference(positives, negatives)
