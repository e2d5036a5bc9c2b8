"""How likely a model finds a text: per-token log-probabilities of a response given its prompt.

The fluency (side-effect) cost of steering is the *unsteered* model's perplexity of what the
steered model said: one teacher-forced pass over prompt + response, left-padded with explicit
position ids (``eas.core.tokens``), so padding and batch size never change a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from eas.core.tokens import batches


@torch.inference_mode()
def response_logprobs(
    model,
    prompt_rows: Sequence[Sequence[int]],
    response_rows: Sequence[Sequence[int]],
    batch_size: int = 16,
    pad: int = 0,
) -> list[Tensor]:
    """``log p(response token | prompt, earlier response tokens)`` for every response.

    Args:
        prompt_rows: ``[n]`` prompts as token ids (each non-empty).
        response_rows: ``[n]`` responses as token ids (may be empty).

    Returns:
        ``[n]`` float32 CPU tensors, ``[len(response)]`` each (empty for an empty response).

    Raises:
        ValueError: the lists differ in length, or a prompt is empty.
    """
    if len(prompt_rows) != len(response_rows):
        raise ValueError(f"prompt_rows has {len(prompt_rows)} rows, response_rows {len(response_rows)}")
    for i, p in enumerate(prompt_rows):
        if not len(p):
            raise ValueError(f"prompt {i} is empty: a response's first token needs a prompt to follow")
    device = next(model.parameters()).device
    full = [list(p) + list(r) for p, r in zip(prompt_rows, response_rows)]
    out: list[Tensor] = [torch.empty(0)] * len(full)
    for batch in batches(full, batch_size, pad, device):
        n_resp = [len(response_rows[i]) for i in batch.index]
        keep = max(n_resp)
        if keep == 0:
            continue
        # only the positions that predict a response token go through the LM head
        logits = _logits(model, batch, keep + 1)[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)  # [batch, keep, vocab]
        for j, (i, r) in enumerate(zip(batch.index, n_resp)):
            if r == 0:
                continue
            target = batch.input_ids[j, -r:]
            out[i] = logp[j, keep - r:].gather(-1, target[:, None])[:, 0].cpu()
    return out


def _logits(model, batch, keep: int) -> Tensor:
    """``[batch, keep, vocab]``: the logits of the last ``keep`` positions; only those go through the
    LM head where the model takes ``logits_to_keep``."""
    args = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    try:
        return model(**args, logits_to_keep=keep).logits[:, -keep:]
    except TypeError:  # an architecture without logits_to_keep: the full logits, then the slice
        return model(**args).logits[:, -keep:]


def perplexity(logprobs: Tensor) -> float:
    """``exp(-mean log p)`` of one response; 1.0 for an empty one (nothing was unlikely)."""
    if logprobs.numel() == 0:
        return 1.0
    return math.exp(-float(logprobs.double().mean()))
