"""The fast engine (multiple choice, layer x strength), and the naive loop it must agree with.

Steering only the last position cannot change the keys and values of earlier
positions, so the prompt minus its last token is run once, unsteered, and its
key/value cache is kept. Every steered cell then needs only the last token:
the cells of a batch become ``q`` copies of that token, all at the same
position, each seeing the prefix and itself (a 4-D attention mask), each with
its own (layer, strength x vector) added at the site. One forward pass of
``q`` tokens scores ``q`` cells for every item of the batch; the prefix cache
is shared, never copied per cell.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor

from eas.core.intervene import add, steer
from eas.core.score import LetterHead, letter_scores, mask_options
from eas.core.sites import SiteMap
from eas.core.tokens import TokenBatch, batches


@dataclass(frozen=True)
class Cell:
    """One steered condition: add ``strength x vector`` at ``layer``.

    The site is not a cell's own: every cell of one ``sweep_mc`` call shares it.
    """

    layer: int
    strength: float
    vector: Tensor  # [d_model]


def _cache_name(model) -> str:
    """The keyword that passes a key/value cache to the model, and the output field that returns it.

    transformers renamed ``past_key_values`` to ``cache`` (the old name warns, then goes away);
    the installed version's own signature says which one it takes, so both keep working.
    """
    params = inspect.signature(model.base_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _fork(cache):
    """A cache that shares the prefix tensors but whose appends do not touch the original."""
    forked = copy.copy(cache)
    if hasattr(cache, "layers"):
        forked.layers = [copy.copy(layer) for layer in cache.layers]
        return forked
    return copy.deepcopy(cache)


def _query_mask(prefix_mask: Tensor, q: int, dtype: torch.dtype, window: int | None = None) -> Tensor:
    """``[batch, 1, q, prefix + q]`` additive mask: each query sees the prefix's real tokens and itself.

    With a sliding ``window`` the cache keeps only the last ``window - 1`` prefix positions,
    which a query at the next position all sees.
    """
    if window is not None and prefix_mask.shape[1] > window - 1:
        prefix_mask = prefix_mask[:, prefix_mask.shape[1] - (window - 1):]
    b, p = prefix_mask.shape
    neg = torch.finfo(dtype).min
    seen = torch.cat(
        [
            prefix_mask.bool()[:, None, :].expand(b, q, p),
            torch.eye(q, dtype=torch.bool, device=prefix_mask.device)[None].expand(b, q, q),
        ],
        dim=-1,
    )
    mask = torch.zeros(b, 1, q, p + q, dtype=dtype, device=prefix_mask.device)
    return mask.masked_fill(~seen[:, None], neg)


def _attention_mask_arg(model, prefix_mask: Tensor, q: int, dtype: torch.dtype):
    cfg = model.config
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    full = _query_mask(prefix_mask, q, dtype)
    if window and layer_types and "sliding_attention" in layer_types:
        return {"full_attention": full, "sliding_attention": _query_mask(prefix_mask, q, dtype, window)}
    return full


def _prefixes(model, token_rows, batch_size: int, pad: int, device) -> Iterator[tuple[TokenBatch, Tensor, object]]:
    """Per batch: the batch, its prefix mask ``[batch, pos - 1]`` and the prefix's key/value cache."""
    name = _cache_name(model)
    for batch in batches(token_rows, batch_size, pad, device):
        if batch.input_ids.shape[1] < 2:
            raise ValueError("every prompt needs at least 2 tokens for the prefix cache")
        out = model.base_model(
            input_ids=batch.input_ids[:, :-1],
            attention_mask=batch.attention_mask[:, :-1],
            position_ids=batch.position_ids[:, :-1],
            use_cache=True,
        )
        cache = getattr(out, name)
        del out
        yield batch, batch.attention_mask[:, :-1], cache
        del cache  # before the next prefill, so one cache is alive at a time


@dataclass
class PrefixCache:
    """The unsteered prefix caches of a fixed item list, kept for many ``sweep_mc`` calls.

    For loops that score new cells on the same items again and again (a CMA-ES generation
    per call): the prefill, most of a call's cost, runs once. Holds every batch's cache at
    once (memory: the key/value cache of all items' prompts).
    """

    n_items: int
    entries: list[tuple[TokenBatch, Tensor, object]]


@torch.inference_mode()
def prefix_cache(model, token_rows: Sequence[Sequence[int]], batch_size: int = 16, pad: int = 0) -> PrefixCache:
    device = next(model.parameters()).device
    return PrefixCache(len(token_rows), list(_prefixes(model, token_rows, batch_size, pad, device)))


@torch.inference_mode()
def sweep_mc(
    model,
    sites: SiteMap,
    token_rows: Sequence[Sequence[int]],
    n_options: Sequence[int],
    head: LetterHead,
    site: str,
    cells: Sequence[Cell],
    batch_size: int = 16,
    cells_per_pass: int = 64,
    pad: int = 0,
    progress: Callable[[int], None] | None = None,
    prefix: PrefixCache | None = None,
) -> Tensor:
    """Letter scores of every item under every cell: ``[cell, item, n_letters]`` (float32, CPU).

    Cells at any layers mix freely in one pass; the site is shared. Memory per pass grows
    with ``batch_size x cells_per_pass`` query tokens plus one prefix cache. With ``prefix``
    (``prefix_cache`` of the same ``token_rows``) the prefixes are not recomputed and
    ``batch_size``/``pad`` are the cache's.
    """
    if cells_per_pass < 1 or batch_size < 1:
        raise ValueError(f"cells_per_pass={cells_per_pass}, batch_size={batch_size}: both must be >= 1")
    for c in cells:
        sites.check_layer(c.layer)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    # NaN, not uninitialised memory: a score that was never written can never pass for one
    out = torch.full((len(cells), len(token_rows), head.index.shape[0]), float("nan"))
    if prefix is not None and prefix.n_items != len(token_rows):
        raise ValueError(f"prefix cache holds {prefix.n_items} items, token_rows has {len(token_rows)}")
    entries = prefix.entries if prefix is not None else _prefixes(model, token_rows, batch_size, pad, device)
    cache_name = _cache_name(model)

    def run(batch: TokenBatch, prefix_mask: Tensor, cache, chunk: Sequence[Cell]) -> Tensor:
        q = len(chunk)
        deltas: dict[int, Tensor] = {}
        for j, c in enumerate(chunk):
            if c.layer not in deltas:
                deltas[c.layer] = torch.zeros(1, q, c.vector.shape[-1], device=device, dtype=dtype)
            deltas[c.layer][0, j] = (c.strength * c.vector).to(device=device, dtype=dtype)
        with ExitStack() as stack:
            for layer, delta in deltas.items():
                stack.enter_context(add(sites, layer, site, delta, position="last"))
            hidden = model.base_model(
                input_ids=batch.input_ids[:, -1:].expand(-1, q),
                attention_mask=_attention_mask_arg(model, prefix_mask, q, dtype),
                position_ids=batch.position_ids[:, -1:].expand(-1, q),
                use_cache=True,
                **{cache_name: _fork(cache)},
            ).last_hidden_state  # [batch, q, d_model]
        return head(hidden).permute(1, 0, 2).cpu()  # [q, batch, n_letters]

    for batch, prefix_mask, cache in entries:
        for start in range(0, len(cells), cells_per_pass):
            chunk = cells[start:start + cells_per_pass]
            scores = run(batch, prefix_mask, cache, chunk)
            bad = ~torch.isfinite(scores).flatten(1).all(1)
            if bad.any() and len(chunk) > 1:
                # A masked key still enters attention as 0 x value, and 0 x NaN is NaN: one cell
                # that overflows poisons every query token of its pass. Score each cell of this
                # pass alone, so a cell's scores never depend on its neighbours' values.
                scores = torch.cat([run(batch, prefix_mask, cache, [c]) for c in chunk])
            out[start:start + len(chunk), batch.index] = scores
        del cache
        if progress:
            progress(len(batch.index))
    return mask_options(out, n_options)


@torch.inference_mode()
def naive_sweep_mc(
    model,
    sites: SiteMap,
    token_rows: Sequence[Sequence[int]],
    n_options: Sequence[int],
    letter_ids: list[list[int]],
    site: str,
    cells: Sequence[Cell],
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """The reference the engine must agree with: batch 1, one hook, full-vocabulary logits,
    one whole forward pass per (cell, item). Same output layout as ``sweep_mc``."""
    device = next(model.parameters()).device
    n_var = max(len(ids) for ids in letter_ids)
    index = torch.full((len(letter_ids), n_var), -1, dtype=torch.long)
    for i, ids in enumerate(letter_ids):
        index[i, : len(ids)] = torch.tensor(ids)
    out = torch.empty(len(cells), len(token_rows), len(letter_ids))
    for k, c in enumerate(cells):
        for i, row in enumerate(token_rows):
            ids = torch.tensor([list(row)], device=device)
            with steer(sites, c.layer, site, c.vector, c.strength, position="last"):
                logits = model(input_ids=ids).logits[0, -1].float()
            out[k, i] = letter_scores(logits, index.to(logits.device)).cpu()
        if progress:
            progress(1)
    return mask_options(out, n_options)
