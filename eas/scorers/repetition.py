"""Degeneration of what was said, over the response's tokens.

- ``repetition``: the fraction of the response's n-grams (``params.n``, default 3) that repeat
  an earlier n-gram of the same response; 0 with fewer than n tokens;
- ``distinct_1``, ``distinct_2``: distinct unigrams (bigrams) over all of them; 1.0 for a
  response too short to have any (nothing repeats).
"""

from __future__ import annotations

from collections.abc import Sequence

from eas.scorers.base import known, param


def validate(params: dict, field: str) -> None:
    known(params, field, ("n",))
    n = param(params, "n", field, int, 3)
    if n < 1:
        from eas.config import ConfigError

        raise ConfigError(f"{field}.n={n}: an n-gram length >= 1")


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_fraction(tokens: Sequence[int], n: int) -> float:
    grams = ngrams(tokens, n)
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def distinct(tokens: Sequence[int], n: int) -> float:
    grams = ngrams(tokens, n)
    return 1.0 if not grams else len(set(grams)) / len(grams)


def columns(params: dict) -> list[str]:
    return ["repetition", "distinct_1", "distinct_2"]


def make(params: dict, ctx):
    n = int(params.get("n", 3))

    def score(samples):
        return {"repetition": [repeated_fraction(s.response_ids, n) for s in samples],
                "distinct_1": [distinct(s.response_ids, 1) for s in samples],
                "distinct_2": [distinct(s.response_ids, 2) for s in samples]}
    return score
