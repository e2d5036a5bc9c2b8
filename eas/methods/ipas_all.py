"""iPAS (all items): "question + correct option" for train items answered right, "question +
the option the model chose" for items answered wrong; the vector is the mean difference."""

from __future__ import annotations

from eas.core.vectors import mean_difference
from eas.methods.base import Contrast, right_and_wrong


def contrast(items, predicted, prompter, seed: int = 0) -> Contrast:
    right, wrong = right_and_wrong(items, predicted)
    return Contrast([prompter.with_option_text(items[i], items[i].label) for i in right],
                    [prompter.with_option_text(items[i], predicted[i]) for i in wrong], paired=False)


def aggregate(positives, negatives, seed: int = 0):
    return mean_difference(positives, negatives)
