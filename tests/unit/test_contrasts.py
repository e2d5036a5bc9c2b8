"""Each vector method builds the contrast the PAS protocol (and CAA) documents."""

from __future__ import annotations

import pytest

from eas.contrasts import TooFewExamples, build
from eas.data.schema import MCItem
from eas.prompts import Prompter

ITEMS = [
    MCItem(id=str(i), question=f"q{i}?", options=(f"a{i}", f"b{i}", f"c{i}"), label=i % 3) for i in range(6)
]
PRED = [0, 0, 2, 0, 0, 1]  # labels 0,1,2,0,1,2: right on items 0, 2, 3; wrong on 1 (chose 0), 4 (chose 0), 5 (chose 1)


@pytest.fixture(params=["plain", "chat"])
def prompter(request, tokenizer):
    return Prompter(tokenizer, request.param)


def test_pasf_full_prompts_right_minus_wrong(prompter):
    c = build("pasf", ITEMS, PRED, prompter)
    assert c.positives == [prompter.mc(ITEMS[i]) for i in (0, 2, 3)]
    assert c.negatives == [prompter.mc(ITEMS[i]) for i in (1, 4, 5)]
    assert all(t.endswith("Answer:") and "A. a0" in c.positives[0] for t in c.positives)


def test_ipas_all_correct_option_vs_chosen_option(prompter):
    c = build("ipas_all", ITEMS, PRED, prompter)
    assert c.positives == [prompter.with_option_text(ITEMS[i], ITEMS[i].label) for i in (0, 2, 3)]
    assert c.negatives == [prompter.with_option_text(ITEMS[i], p) for i, p in ((1, 0), (4, 0), (5, 1))]
    assert c.positives[1].endswith(" c2") and c.negatives[2].endswith(" b5")
    assert "A. " not in c.positives[0], "iPAS texts carry the question, not the option list"


def test_ipas_wrong_only_pairs_on_wrong_items(prompter):
    c = build("ipas_wrong_only", ITEMS, PRED, prompter)
    assert c.paired
    assert c.positives == [prompter.with_option_text(ITEMS[i], ITEMS[i].label) for i in (1, 4, 5)]
    assert c.negatives == [prompter.with_option_text(ITEMS[i], p) for i, p in ((1, 0), (4, 0), (5, 1))]


def test_mean_diff_letter_pairs(prompter):
    c = build("mean_diff", ITEMS, PRED, prompter, seed=1)
    assert c.paired and len(c.positives) == len(ITEMS)
    for it, pos, neg, p in zip(ITEMS, c.positives, c.negatives, PRED):
        assert pos == prompter.mc(it) + " " + it.letters[it.label]
        assert neg.startswith(prompter.mc(it)) and neg != pos
        if p != it.label:
            assert neg.endswith(" " + it.letters[p])
    assert c.negatives == build("mean_diff", ITEMS, PRED, prompter, seed=1).negatives


def test_too_few_names_the_counts(prompter):
    with pytest.raises(TooFewExamples, match="0 positives and 6 negatives.*0 answered right, 6 wrong"):
        build("pasf", ITEMS, [(it.label + 1) % 3 for it in ITEMS], prompter)
