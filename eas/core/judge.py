"""Judged fitness for open-ended behaviour: steered generation, then a judge's verdict.

Every candidate delta of a generation continues every prompt in one batched
``eas.core.generate.generate`` (rows = candidate x prompt), steered at every position of
the prompt and of the continuation (steering only the last prompt token barely moves free
text). The judge is any callable from responses to ``log P(rubric answer)``; locally that
is a yes/no multiple-choice question scored by ``eas.core.score.score_mc`` (``rubric_logprob``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from eas.core.generate import GenCell, Sampling, generate
from eas.core.sites import SiteMap


def generate_steered(
    model,
    sites: SiteMap,
    token_rows: Sequence[Sequence[int]],
    layer: int,
    site: str,
    deltas: Tensor,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    pad: int = 0,
    eos: int | Sequence[int] | None = None,
) -> list[list[list[int]]]:
    """Greedy continuations of every prompt under every delta: ``[candidate][prompt] -> token ids``.

    Args:
        token_rows: prompts as token ids.
        deltas: ``[candidate, d_model]``, added at ``site`` of ``layer`` at every position.
        batch_size: rows (candidate x prompt) decoded together.
        eos: token id(s) that end a continuation (the model's by default); not included.
    """
    sites.check_layer(layer)
    cells = [GenCell(layer, 1.0, d) for d in deltas]
    return generate(model, sites, token_rows, site, cells, Sampling(max_new_tokens=max_new_tokens), steer_on="all",
                    eos=eos, batch_size=batch_size, pad=pad)


def rubric_logprob(scores: Tensor) -> Tensor:
    """``log P(yes)`` from yes/no letter scores ``[..., 2]`` (option A = yes): ``[...]``."""
    return torch.log_softmax(scores[..., :2].float(), dim=-1)[..., 0]


def judge_fitness(
    generate: Callable[[Tensor], list[list[str]]],
    judge: Callable[[list[str], list[str]], Tensor],
    prompts: Sequence[str],
) -> Callable[[Tensor], Tensor]:
    """A fitness: mean judged ``log P(rubric answer)`` of each delta's responses.

    Args:
        generate: ``[c, d_model]`` deltas -> ``[c][prompt]`` response texts.
        judge: (questions, responses) -> ``[m]`` log-probabilities of the rubric answer.
        prompts: the questions, as shown to the judge.
    """

    def fitness(deltas: Tensor) -> Tensor:
        texts = generate(deltas)
        flat = [t for row in texts for t in row]
        lp = judge([q for _ in texts for q in prompts], flat)
        return lp.view(len(texts), len(prompts)).mean(-1)

    return fitness
