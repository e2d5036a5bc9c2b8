"""Tokenising prompt batches the one way every core function uses: left padding,
explicit position ids, batches sorted by length to waste little on padding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenBatch:
    """One left-padded batch.

    Attributes:
        index: positions of these rows in the caller's list of texts.
        input_ids: ``[batch, pos]``.
        attention_mask: ``[batch, pos]``, 1 for real tokens; padding is on the left.
        position_ids: ``[batch, pos]``, 0 at each row's first real token, so padding
            does not shift positions (left and right padding give the same activations).
    """

    index: list[int]
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor

    @property
    def lengths(self) -> Tensor:
        return self.attention_mask.sum(-1)


def position_ids(attention_mask: Tensor) -> Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def encode(tokenizer, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    enc = tokenizer(list(texts), add_special_tokens=add_special_tokens)
    return [list(ids) for ids in enc["input_ids"]]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def batches(
    token_rows: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    device: torch.device | str,
) -> Iterator[TokenBatch]:
    """Yield left-padded batches of similar lengths (longest first, so an OOM shows early)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for i, r in enumerate(token_rows):
        if len(r) == 0:
            raise ValueError(f"text {i} tokenises to nothing")
    order = sorted(range(len(token_rows)), key=lambda i: -len(token_rows[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_left([token_rows[i] for i in idx], pad_id, device)
        yield TokenBatch(idx, ids, mask, position_ids(mask))


def pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id
    if pid is None:
        pid = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return int(pid)


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a reply: the model's ``generation_config.eos_token_id`` (one or a list)
    and the tokenizer's EOS, sorted."""
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    tok_eos = tokenizer.eos_token_id
    return sorted({*eos, *([tok_eos] if tok_eos is not None else [])})
