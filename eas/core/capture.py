"""Activation capture: one batched pass records every requested (layer, site,
position rule) and stops at the highest requested layer's site.

The ``attention`` rule weights each position by the attention the last token pays to it in
block L's attention (softmax weights averaged over heads), so that the tokens the model reads
count most. Those weights need the eager attention kernel: that rule runs in a pass of its own
with eager attention, so the other rules' numbers do not depend on whether it was asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor

from eas.core.intervene import hook
from eas.core.sites import SiteMap
from eas.core.tokens import TokenBatch, batches, pad_id

POSITION_RULES = ("last", "mid", "mean", "attention")


class _Stop(Exception):
    """Raised once the highest requested layer's site is recorded: the rest of the model is not run."""


def reduce_positions(hidden: Tensor, attention_mask: Tensor, rule: str) -> Tensor:
    """``[batch, pos, d] -> [batch, d]`` over each row's real (left-padded) tokens.

    ``last``: the last token; ``mid``: real token ``n // 2`` of ``n``; ``mean``: the mean;
    ``attention``: needs the weights, ``attention_weighted``.
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


def attention_weighted(hidden: Tensor, weights: Tensor) -> Tensor:
    """``[batch, pos, d], [batch, heads, query, key] -> [batch, d]``: positions weighted by the
    last query's attention, averaged over heads (padding gets weight 0 from the mask)."""
    w = weights[:, :, -1, :].float().mean(1)
    return torch.einsum("bk,bkd->bd", w / w.sum(-1, keepdim=True), hidden.float())


@contextmanager
def eager_attention(model):
    """Run ``model`` with the eager attention kernel (which returns its weights) inside the block."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


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
        positions: position rules to reduce to (``last``, ``mid``, ``mean``, ``attention``:
            module docstring).
        progress: called with the number of texts done after each batch.

    Returns:
        ``{rule: Float[Tensor, "layer text d_model"]}`` in float32 on the CPU, layers in the
        order given.
    """
    layers = list(layers)
    for layer in layers:
        sites.check_layer(layer)
    for rule in positions:
        if rule not in POSITION_RULES:
            raise ValueError(f"position rule must be one of {POSITION_RULES}, got {rule!r}")
    plain = [p for p in positions if p != "attention"]
    out = _capture(model, sites, token_rows, layers, site, plain, batch_size, pad, progress) if plain else {}
    if "attention" in positions:  # its own eager pass (module docstring); progress counts one pass
        with eager_attention(model):
            out.update(_capture(model, sites, token_rows, layers, site, ["attention"], batch_size, pad,
                                None if plain else progress))
    return out


def _capture(model, sites, token_rows, layers, site, positions, batch_size, pad, progress) -> dict[str, Tensor]:
    device = next(model.parameters()).device
    pad = pad if pad is not None else 0
    n = len(token_rows)
    out: dict[str, Tensor] | None = None
    top = max(layers)
    attention = "attention" in positions
    for batch in batches(token_rows, batch_size, pad, device):
        seen: dict[int, Tensor] = {}
        weights: dict[int, Tensor] = {}

        def record(layer, seen=seen):
            def fn(hidden):
                seen[layer] = hidden
            return fn

        def keep_weights(layer, weights=weights):
            def fn(module, args, output):
                w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                if w is None:
                    raise ValueError(f"position rule 'attention': block {layer}'s attention returned no weights")
                weights[layer] = w
            return fn

        def stop(hidden):
            raise _Stop

        with ExitStack() as stack:
            for layer in set(layers):
                stack.enter_context(hook(sites, layer, site, record(layer)))
                if attention:
                    handle = sites.module(layer, "self_attn").register_forward_hook(keep_weights(layer))
                    stack.callback(handle.remove)
            # after the record hook on that module; with weights, after the top block's attention too
            stack.enter_context(hook(sites, top, "residual" if attention else site, stop))
            try:
                run_batch(model, batch)
            except _Stop:
                pass
        for rule in positions:
            reduced = torch.stack(
                [attention_weighted(seen[layer], weights[layer]) if rule == "attention" else
                 reduce_positions(seen[layer], batch.attention_mask, rule).float() for layer in layers]
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
