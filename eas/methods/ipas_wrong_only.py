"""iPAS (wrong items only): for each train item the model answers wrong, "question + correct
option" minus "question + the option it chose"; the vector is the mean difference."""

from __future__ import annotations

from eas.core.vectors import mean_difference
from eas.methods.base import Contrast, right_and_wrong


def contrast(items, predicted, prompter, seed: int = 0) -> Contrast:
    _, wrong = right_and_wrong(items, predicted)
    return Contrast([prompter.with_option_text(items[i], items[i].label) for i in wrong],
                    [prompter.with_option_text(items[i], predicted[i]) for i in wrong], paired=True)


def aggregate(positives, negatives, seed: int = 0):
    return mean_difference(positives, negatives)
