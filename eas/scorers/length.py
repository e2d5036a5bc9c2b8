"""Length of what was said: tokens (the model's), characters and whitespace-separated words."""

from __future__ import annotations

from eas.scorers.base import known


def validate(params: dict, field: str) -> None:
    known(params, field, ())


def columns(params: dict) -> list[str]:
    return ["length_tokens", "length_chars", "length_words"]


def make(params: dict, ctx):
    def score(samples):
        return {"length_tokens": [len(s.response_ids) for s in samples],
                "length_chars": [len(s.response) for s in samples],
                "length_words": [len(s.response.split()) for s in samples]}
    return score
