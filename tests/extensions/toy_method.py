"""A toy steering method outside eas: the proof that a method is one module plus one yaml.

Contrast: the scoring prompt followed by the correct letter (positives) or by the letter
after it (negatives), for every train item; aggregation: the difference of the two sides'
coordinate-wise medians (robust to outlying activations)."""

from __future__ import annotations

from eas.methods.base import Contrast


def contrast(items, predicted, prompter, seed: int = 0) -> Contrast:
    pos = [prompter.mc_with_letter(it, it.label) for it in items]
    neg = [prompter.mc_with_letter(it, (it.label + 1) % len(it.options)) for it in items]
    return Contrast(pos, neg, paired=True)


def aggregate(positives, negatives, seed: int = 0):
    return positives.float().median(0).values - negatives.float().median(0).values
