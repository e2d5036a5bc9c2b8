"""Fluency: the unsteered model's perplexity of the response given its prompt (the side-effect
cost of steering). ``eas.core.fluency`` computes it in one teacher-forced pass per batch.

Columns: ``perplexity`` (``exp(-mean log p)``; 1.0 for an empty response) and
``perplexity_mean_logprob`` (the mean log-probability per token; 0.0 for an empty response).
"""

from __future__ import annotations

from eas.core import fluency
from eas.scorers.base import known

VERSION = 1


def validate(params: dict, field: str) -> None:
    known(params, field, ())


def columns(params: dict) -> list[str]:
    return ["perplexity", "perplexity_mean_logprob"]


def make(params: dict, ctx):
    def score(samples):
        lps = fluency.response_logprobs(ctx.model, [s.prompt_ids for s in samples],
                                        [s.response_ids for s in samples], ctx.batch_size, ctx.pad)
        return {"perplexity": [fluency.perplexity(lp) for lp in lps],
                "perplexity_mean_logprob": [float(lp.double().mean()) if lp.numel() else 0.0 for lp in lps]}
    return score
