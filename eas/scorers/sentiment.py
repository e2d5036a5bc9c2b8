"""Sentiment of what was said: VADER (Hutto & Gilbert 2014), a lexicon and rule model that ships
with its package (``vaderSentiment``), so it runs offline and gives the same number everywhere.

Columns: ``sentiment`` (the compound score, -1 to 1), ``sentiment_pos``, ``sentiment_neg``
(the proportions of positive and negative text, 0 to 1).
"""

from __future__ import annotations

import functools

from eas.scorers.base import known

VERSION = "vaderSentiment-3.3.2"


def validate(params: dict, field: str) -> None:
    known(params, field, ())


@functools.cache
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def polarity(text: str) -> dict[str, float]:
    return _analyzer().polarity_scores(text)


def columns(params: dict) -> list[str]:
    return ["sentiment", "sentiment_pos", "sentiment_neg"]


def make(params: dict, ctx):
    def score(samples):
        got = [polarity(s.response) for s in samples]
        return {"sentiment": [g["compound"] for g in got], "sentiment_pos": [g["pos"] for g in got],
                "sentiment_neg": [g["neg"] for g in got]}
    return score
