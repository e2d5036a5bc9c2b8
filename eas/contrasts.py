"""Which texts are positives and which negatives, for each vector method.

These follow the PAS protocol (and CAA for ``mean_diff``). Inputs are the
train items and the unsteered model's answers to them; outputs are two lists
of texts whose activations are averaged and subtracted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eas.data.schema import MCItem
from eas.prompts import Prompter


class TooFewExamples(ValueError):
    """A method has too few positives or negatives to build a vector."""


@dataclass(frozen=True)
class Contrast:
    positives: list[str]
    negatives: list[str]
    paired: bool  # positives[i] and negatives[i] come from the same item

    @property
    def texts(self) -> list[str]:
        """Positives then negatives: the order one capture pass over both sides uses."""
        return [*self.positives, *self.negatives]


def build(
    method: str,
    items: Sequence[MCItem],
    predicted: Sequence[int],
    prompter: Prompter,
    seed: int = 0,
    min_per_class: int = 2,
) -> Contrast:
    """The contrast for ``method`` on ``items``, given the unsteered predictions.

    - ``pasf``: full scoring prompts of items answered right minus those answered wrong.
    - ``ipas_all``: "question + correct option" for items answered right; "question + the
      option the model chose" for items answered wrong.
    - ``ipas_wrong_only``: items answered wrong only; "question + correct option" minus
      "question + chosen option".
    - ``mean_diff``, ``pca``, ``probe``, ``random`` (CAA pairs): every item's scoring prompt
      followed by the correct (behaviour-matching) letter minus the same prompt followed by a
      wrong letter (the one the model chose when it was wrong, else a seeded random one).

    Raises:
        TooFewExamples: fewer than ``min_per_class`` positives or negatives, with the counts.
    """
    right = [i for i, (it, p) in enumerate(zip(items, predicted)) if p == it.label]
    wrong = [i for i, (it, p) in enumerate(zip(items, predicted)) if p != it.label]
    if method == "pasf":
        pos = [prompter.mc(items[i]) for i in right]
        neg = [prompter.mc(items[i]) for i in wrong]
        c = Contrast(pos, neg, paired=False)
    elif method == "ipas_all":
        pos = [prompter.with_option_text(items[i], items[i].label) for i in right]
        neg = [prompter.with_option_text(items[i], predicted[i]) for i in wrong]
        c = Contrast(pos, neg, paired=False)
    elif method == "ipas_wrong_only":
        pos = [prompter.with_option_text(items[i], items[i].label) for i in wrong]
        neg = [prompter.with_option_text(items[i], predicted[i]) for i in wrong]
        c = Contrast(pos, neg, paired=True)
    elif method in ("mean_diff", "pca", "probe", "random"):
        rng = np.random.default_rng(seed)
        pos, neg = [], []
        for it, p in zip(items, predicted):
            if p != it.label:
                other = int(p)
            else:
                others = [k for k in range(len(it.options)) if k != it.label]
                other = int(others[rng.integers(len(others))])
            pos.append(prompter.mc_with_letter(it, it.label))
            neg.append(prompter.mc_with_letter(it, other))
        c = Contrast(pos, neg, paired=True)
    else:
        raise ValueError(f"unknown method {method!r}")
    if len(c.positives) < min_per_class or len(c.negatives) < min_per_class:
        raise TooFewExamples(
            f"method={method}: {len(c.positives)} positives and {len(c.negatives)} negatives "
            f"from {len(items)} train items ({len(right)} answered right, {len(wrong)} wrong); "
            f"need at least {min_per_class} of each (method.min_per_class). Use more items "
            f"(n_train_proportion, max_sample_size) or another method."
        )
    return c
