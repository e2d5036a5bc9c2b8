"""PASf (PAS, full prompts): the scoring prompts of train items the unsteered model answers
right minus those it answers wrong; the vector is the mean difference."""

from __future__ import annotations

from eas.core.vectors import mean_difference
from eas.methods.base import Contrast, right_and_wrong


def contrast(items, predicted, prompter, seed: int = 0) -> Contrast:
    right, wrong = right_and_wrong(items, predicted)
    return Contrast([prompter.mc(items[i]) for i in right], [prompter.mc(items[i]) for i in wrong], paired=False)


def aggregate(positives, negatives, seed: int = 0):
    return mean_difference(positives, negatives)
