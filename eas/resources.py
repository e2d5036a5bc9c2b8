"""Resource policy for the core's batched passes: a batch size that fits, and retrying on OOM.

The core (``eas.core``) takes a batch size and never looks at free memory; the jobs choose
one here and shrink it when a pass runs out of memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from accelerate.utils import find_executable_batch_size

T = TypeVar("T")


def auto_batch_size(model, max_tokens: int = 512, cells_per_pass: int = 64, token_budget: int = 16384) -> int:
    """A batch size that fits: 16 on CPU; on CUDA, from free memory and the prefix cache size.

    Per item the engine holds a key/value cache of ``max_tokens`` positions and the prefill
    activations; the estimate keeps both under half of the free memory. Batches are also
    capped at ``token_budget`` tokens: measured on an H100 (8B, bf16), 64 x 200-token
    batches ran at 45% of bf16 peak end to end, 232-row batches at 27%.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 16
    cfg = model.config
    free, _ = torch.cuda.mem_get_info(device)
    elem = next(model.parameters()).element_size()
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    inter = getattr(cfg, "intermediate_size", None) or 4 * d
    kv = _kv_bytes_per_token(model) * (max_tokens + cells_per_pass)
    act = max_tokens * (4 * d + 3 * inter) * elem + cells_per_pass * d * 4 * n_layers
    per_item = kv + act
    by_memory = int((free * 0.5) // per_item)
    return int(max(1, min(256, by_memory, token_budget // max(1, max_tokens))))


def _kv_bytes_per_token(model) -> int:
    """Bytes of key/value cache one token position holds across all layers."""
    cfg = model.config
    elem = next(model.parameters()).element_size()
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    return 2 * n_layers * kv_heads * head_dim * elem


def generation_batch_size(model, tokens_per_row: int, token_budget: int = 24576, max_rows: int = 1024) -> int:
    """Rows (prompt x cell) the generation engine decodes together.

    A row holds ``tokens_per_row`` positions (its prompt plus the new tokens) of key/value
    cache. On CPU the rows hold at most ``token_budget`` positions: measured on 2 cores
    (SmolLM2-135M, 45 + 24 tokens), 16 rows per batch ran at half the speed of 64 to 192,
    which ran alike. On CUDA (decoding is bound by memory traffic, so wider is faster) the
    rows' cache stays under half of the free memory.
    """
    per_row = max(1, tokens_per_row)
    device = next(model.parameters()).device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        rows = int((free * 0.5) // (_kv_bytes_per_token(model) * per_row))
    else:
        rows = token_budget // per_row
    return int(max(1, min(max_rows, rows)))


def retry_on_oom(fn: Callable[[int], T], batch_size: int, warn: Callable[[str], object] | None = None) -> T:
    """``fn(batch_size)``; while it runs out of memory, free the cache, halve the batch and call again.

    Built on ``accelerate.utils.find_executable_batch_size``, so what counts as out of memory
    is accelerate's rule (CUDA, MPS, XPU and CPU allocator failures).

    Args:
        fn: the pass, taking the batch size.
        batch_size: the first batch size to try.
        warn: called with one line before each retry (e.g. ``log.warning``).

    Raises:
        RuntimeError: out of memory even at batch size 1 (the allocator's error is its context).
    """
    size = batch_size

    def halve() -> int:
        nonlocal size
        if size <= 1:
            raise RuntimeError(f"out of memory at batch_size=1 (started at {batch_size}): lower cells_per_pass "
                               f"or the prompt length, or use a smaller dtype or a larger device")
        size = max(1, size // 2)
        if warn:
            warn(f"out of memory: retrying with batch_size={size}")
        return size

    return find_executable_batch_size(fn, starting_batch_size=batch_size, reduce_batch_size_fn=halve)()
