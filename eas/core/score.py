"""Multiple-choice scoring: one forward pass, the answer-letter logits at the last position.

A letter's score is the log-sum-exp of the logits of its single-token spellings
("A" and " A"), so the same code reads the answer whether the prompt ends in a
space, a newline or a chat template's assistant header, for any tokenizer. With
``bare=True`` it is the logit of the vocabulary token "A" alone (the PAS reference's rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from eas.core.capture import run_batch
from eas.core.letters import LETTERS
from eas.core.tokens import batches


def letter_token_ids(tokenizer, n_letters: int, bare: bool = False) -> list[list[int]]:
    """For each of the first ``n_letters`` letters, the ids of its single-token spellings;
    with ``bare``, only the id of the vocabulary token spelled as the letter itself
    (``tokenizer.convert_tokens_to_ids("A")``).

    Raises:
        ValueError: a letter has no single-token spelling in this tokenizer (with ``bare``: no
            vocabulary token of that spelling).
    """
    if bare:
        unk = getattr(tokenizer, "unk_token_id", None)
        out = []
        for letter in LETTERS[:n_letters]:
            tid = tokenizer.convert_tokens_to_ids(letter)
            if tid is None or (unk is not None and tid == unk):
                raise ValueError(f"letter {letter!r} is not a token of this tokenizer's vocabulary "
                                 f"(prompt.letters=bare); use prompt.letters=both")
            out.append([tid])
        return out
    out = []
    for letter in LETTERS[:n_letters]:
        ids = []
        for spelling in (letter, " " + letter):
            enc = tokenizer.encode(spelling, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            raise ValueError(f"letter {letter!r} is not a single token in this tokenizer")
        out.append(ids)
    return out


class LetterHead:
    """The LM head restricted to answer-letter tokens: ``[..., d_model] -> [..., n_letters]``."""

    def __init__(self, model, letter_ids: list[list[int]]):
        head = model.get_output_embeddings()
        flat = sorted({i for ids in letter_ids for i in ids})
        self.weight = head.weight[flat].detach()  # [n_tokens, d_model]
        bias = getattr(head, "bias", None)
        self.bias = bias[flat].detach() if bias is not None else None
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        col = {t: j for j, t in enumerate(flat)}
        n_var = max(len(ids) for ids in letter_ids)
        # [n_letters, n_var] gather index into the flat token list; -1 marks a missing variant
        idx = torch.full((len(letter_ids), n_var), -1, dtype=torch.long)
        for i, ids in enumerate(letter_ids):
            idx[i, : len(ids)] = torch.tensor([col[t] for t in ids])
        self.index = idx

    def __call__(self, hidden: Tensor) -> Tensor:
        logits = hidden.to(self.weight.dtype) @ self.weight.T
        if self.bias is not None:
            logits = logits + self.bias
        logits = logits.float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return letter_scores(logits, self.index.to(logits.device))


def letter_scores(token_logits: Tensor, index: Tensor) -> Tensor:
    """``[..., n_tokens]`` logits -> ``[..., n_letters]`` (log-sum-exp over each letter's spellings)."""
    safe = index.clamp(min=0)
    g = token_logits[..., safe]  # [..., n_letters, n_var]
    g = g.masked_fill(index < 0, float("-inf"))
    return torch.logsumexp(g, dim=-1)


def mask_options(scores: Tensor, n_options: Sequence[int] | Tensor) -> Tensor:
    """Set the scores of letters beyond each item's option count to -inf."""
    n = torch.as_tensor(n_options, device=scores.device)
    cols = torch.arange(scores.shape[-1], device=scores.device)
    return scores.masked_fill(cols >= n[..., None], float("-inf"))


def nonfinite_items(scores: Tensor, n_options: Sequence[int] | Tensor) -> Tensor:
    """``[..., item]`` True where a score of one of the item's own options is NaN or infinite.

    Letters past an item's options are -inf by design (``mask_options``) and are not counted.
    """
    n = torch.as_tensor(n_options, device=scores.device)
    cols = torch.arange(scores.shape[-1], device=scores.device)
    return (~torch.isfinite(scores) & (cols < n[..., None])).any(-1)


@torch.inference_mode()
def score_mc(
    model,
    token_rows: Sequence[Sequence[int]],
    n_options: Sequence[int],
    head: LetterHead,
    batch_size: int = 16,
    pad: int = 0,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Unsteered letter scores ``[item, n_letters]`` (float32, CPU); letters past an item's options are -inf."""
    device = next(model.parameters()).device
    out = torch.empty(len(token_rows), head.index.shape[0])
    for batch in batches(token_rows, batch_size, pad, device):
        hidden = run_batch(model, batch).last_hidden_state[:, -1, :]
        out[batch.index] = head(hidden).cpu()
        if progress:
            progress(len(batch.index))
    return mask_options(out, n_options)
