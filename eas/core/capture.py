"""Activation capture: one batched pass records every requested (layer, site,
position rule) and stops at the highest requested layer's site."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
from torch import Tensor

from eas.core.intervene import hook
from eas.core.sites import SiteMap
from eas.core.tokens import TokenBatch, batches, pad_id

POSITION_RULES = ("last", "mid", "mean")


class _Stop(Exception):
    """Raised once the highest requested layer's site is recorded: the rest of the model is not run."""


def reduce_positions(hidden: Tensor, attention_mask: Tensor, rule: str) -> Tensor:
    """``[batch, pos, d] -> [batch, d]`` over each row's real (left-padded) tokens.

    ``last``: the last token; ``mid``: real token ``n // 2`` of ``n``; ``mean``: the mean.
    """
    n = attention_mask.sum(-1)
    width = hidden.shape[1]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if rule == "last":
        return hidden[:, -1, :]
    if rule == "mid":
        return hidden[rows, width - n + n // 2, :]
    if rule == "mean":
        m = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / n[:, None].to(hidden.dtype)
    raise ValueError(f"position rule must be one of {POSITION_RULES}, got {rule!r}")


def run_batch(model, batch: TokenBatch, **kwargs):
    return model.base_model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
        **kwargs,
    )


@torch.inference_mode()
def capture(
    model,
    sites: SiteMap,
    token_rows: Sequence[Sequence[int]],
    layers: Sequence[int],
    site: str,
    positions: Sequence[str] = ("last",),
    batch_size: int = 16,
    pad: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Tensor]:
    """Record the tensor of ``site`` at ``layers`` for every text (an input site: the module's input).

    Args:
        token_rows: token ids per text (``eas.core.tokens.encode``).
        layers: 0-based block indices (``eas.core.sites`` says what each site means).
        positions: position rules to reduce to (``last``, ``mid``, ``mean``).
        progress: called with the number of texts done after each batch.

    Returns:
        ``{rule: Float[Tensor, "layer text d_model"]}`` in float32 on the CPU, layers in the
        order given.
    """
    layers = list(layers)
    for layer in layers:
        sites.check_layer(layer)
    device = next(model.parameters()).device
    pad = pad if pad is not None else 0
    n = len(token_rows)
    out: dict[str, Tensor] | None = None
    top = max(layers)
    for batch in batches(token_rows, batch_size, pad, device):
        seen: dict[int, Tensor] = {}

        def record(layer, seen=seen):
            def fn(hidden):
                seen[layer] = hidden
            return fn

        def stop(hidden):
            raise _Stop

        with ExitStack() as stack:
            for layer in set(layers):
                stack.enter_context(hook(sites, layer, site, record(layer)))
            stack.enter_context(hook(sites, top, site, stop))  # runs after the record hook on that module
            try:
                run_batch(model, batch)
            except _Stop:
                pass
        for rule in positions:
            reduced = torch.stack(
                [reduce_positions(seen[layer], batch.attention_mask, rule).float() for layer in layers]
            )
            if out is None:  # kept on the model's device until the end: no sync per batch
                out = {r: torch.empty(len(layers), n, reduced.shape[-1], device=device) for r in positions}
            out[rule][:, torch.as_tensor(batch.index, device=device), :] = reduced
        if progress:
            progress(len(batch.index))
    assert out is not None, "capture needs at least one text"
    return {rule: t.cpu() for rule, t in out.items()}


def capture_texts(model, sites: SiteMap, tokenizer, texts: Sequence[str], layers, site, positions=("last",),
                  batch_size: int = 16, add_special_tokens: bool = False, progress=None) -> dict[str, Tensor]:
    """``capture`` from strings (tokenised without special tokens unless asked)."""
    from eas.core.tokens import encode

    rows = encode(tokenizer, texts, add_special_tokens)
    return capture(model, sites, rows, layers, site, positions, batch_size, pad_id(tokenizer), progress)
