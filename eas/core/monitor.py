"""Per-token projections onto trait directions, recorded in the forward passes that run anyway.

A ``Monitor`` holds directions ``{layer: [trait, d_model]}`` (the same traits at every layer)
and, inside ``watching(monitor)``, records ``site tensor @ directions.T`` at each layer of
every forward pass: ``[batch, pos, layer, trait]`` per pass, float32. Hooks entered inside
an intervention's context read the tensor after it (the steered model's own activations).

- ``project``: prompts (with any prefill) through one batched forward that stops at the
  highest monitored layer: every token's projections, no hidden state kept.
- ``eas.core.generate.generate(..., monitor=m)``: the same during steered generation, for
  prompt and generated tokens, in the prefill and decode passes that produce them.

Nothing here keeps a hidden state: a row of ``n`` tokens costs ``n x layers x traits``
numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor

from eas.core.intervene import hook
from eas.core.sites import SiteMap
from eas.core.tokens import batches


class _Stop(Exception):
    """Raised at the highest monitored layer: the rest of the model is not run."""


class Monitor:
    """Trait directions at layers of one site, and what the last forward pass projected.

    Args:
        directions: ``{layer: [trait, d_model]}``; every layer has the same number of traits
            (trait ``k`` is the same trait at every layer).
    """

    def __init__(self, sites: SiteMap, site: str, directions: dict[int, Tensor]):
        if not directions:
            raise ValueError("directions is empty: give {layer: [trait, d_model]}")
        counts = {L: tuple(d.shape) for L, d in directions.items()}
        n = {s[0] for s in counts.values() if len(s) == 2}
        if any(len(s) != 2 for s in counts.values()) or len(n) != 1:
            raise ValueError(f"directions must be [trait, d_model] with one trait count at every layer, got {counts}")
        for L in directions:
            sites.check_layer(L)
        sites.site(site)
        self.sites, self.site = sites, site
        self.layers = sorted(directions)
        self.n_traits = n.pop()
        self._dirs = {L: directions[L].float() for L in self.layers}
        self._seen: dict[int, Tensor] = {}
        self.trace: Trace | None = None  # filled by eas.core.generate.generate(..., monitor=self)

    def _record(self, layer: int) -> Callable[[Tensor], None]:
        def fn(hidden: Tensor) -> None:
            d = self._dirs[layer]
            if d.device != hidden.device:
                d = self._dirs[layer] = d.to(hidden.device)
            self._seen[layer] = hidden.float() @ d.T  # [batch, pos, trait]
        return fn

    def take(self) -> Tensor:
        """``[batch, pos, layer, trait]`` of the last forward pass inside ``watching``; cleared."""
        missing = [L for L in self.layers if L not in self._seen]
        if missing:
            raise RuntimeError(f"no projection at layers {missing}: no forward pass reached them")
        out = torch.stack([self._seen[L] for L in self.layers], dim=2)
        self._seen = {}
        return out


@contextmanager
def watching(monitor: Monitor | None, stop: bool = False) -> Iterator[None]:
    """The monitor's hooks for the forward passes inside (nothing when ``monitor`` is None);
    ``stop``: raise ``_Stop`` after the highest monitored layer (``project`` catches it)."""
    if monitor is None:
        yield
        return
    with ExitStack() as stack:
        for L in monitor.layers:
            stack.enter_context(hook(monitor.sites, L, monitor.site, monitor._record(L)))
        if stop:
            def halt(_hidden: Tensor) -> None:
                raise _Stop
            stack.enter_context(hook(monitor.sites, monitor.layers[-1], monitor.site, halt))
        yield


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one of its own."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for r in rows[1:]:
        k = 0
        while k < n and r[k] == first[k]:
            k += 1
        n = k
    return max(0, n)


@torch.inference_mode()
def project(
    model,
    monitor: Monitor,
    token_rows: Sequence[Sequence[int]],
    batch_size: int = 16,
    pad: int = 0,
    progress: Callable[[int], None] | None = None,
    min_shared: int = 8,
) -> list[Tensor]:
    """Every token's projections: ``[text] -> [n_tokens, layer, trait]`` float32 on the CPU.

    One forward per batch (rows sorted by length, left-padded), stopped after the highest
    monitored layer; padding never changes a row's numbers. Where every row starts with the
    same ``>= min_shared`` tokens (a chat template's system prompt), that prefix runs once and
    each batch continues from its key/value cache.
    """
    from eas.core.engine import _cache_name, _fork

    device = next(model.parameters()).device
    out: list[Tensor | None] = [None] * len(token_rows)
    if not token_rows:
        return []
    shared = _common_prefix(token_rows) if len(token_rows) > 1 else 0
    cache, head = None, None
    name = _cache_name(model)
    if shared >= min_shared:
        from transformers import DynamicCache

        # passed in, not returned: the forward stops (raises) at the top monitored layer
        cache = DynamicCache(config=model.config)
        ids = torch.tensor([list(token_rows[0][:shared])], device=device)
        with watching(monitor, stop=True):
            try:
                model.base_model(input_ids=ids, use_cache=True, **{name: cache})
            except _Stop:
                pass
        head = monitor.take()[0].cpu()  # [shared, layer, trait]
    if cache is None:
        for batch in batches(token_rows, batch_size, pad, device):
            with watching(monitor, stop=True):
                try:
                    model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                     position_ids=batch.position_ids, use_cache=False)
                except _Stop:
                    pass
            got = monitor.take().cpu()
            for j, i in enumerate(batch.index):
                out[i] = got[j, got.shape[1] - len(token_rows[i]):]
            if progress:
                progress(len(batch.index))
        return out  # type: ignore[return-value]
    # each row's own tokens right after the prefix, padding on the right: real tokens stay in
    # consecutive cache slots (sliding-window attention counts slots), and no real token sees a pad
    order = sorted(range(len(token_rows)), key=lambda i: -len(token_rows[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        tails = [list(token_rows[i][shared:]) for i in idx]
        width = len(tails[0])
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros(len(idx), shared + width, dtype=torch.long)
        mask[:, :shared] = 1
        for j, t in enumerate(tails):
            ids[j, :len(t)] = torch.tensor(t)
            mask[j, shared:shared + len(t)] = 1
        pos = torch.arange(shared, shared + width).expand(len(idx), -1)
        fork = _fork(cache)
        fork.batch_select_indices(torch.zeros(len(idx), dtype=torch.long, device=device))
        with watching(monitor, stop=True):
            try:
                model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                                 use_cache=True, **{name: fork})
            except _Stop:
                pass
        got = monitor.take().cpu()
        for j, i in enumerate(idx):
            out[i] = torch.cat([head, got[j, :len(tails[j])]])
        if progress:
            progress(len(idx))
    return out  # type: ignore[return-value]


class Trace:
    """What ``generate(..., monitor=)`` records: per (cell, prompt) the projections of every
    position the row ran, prompt tokens first, then each generated token (fed back)."""

    def __init__(self, n_cells: int, n_prompts: int):
        self._prefix: dict[int, Tensor] = {}  # prompt -> its shared prefix's [n, layer, trait]
        self._rows: dict[tuple[int, int], list[Tensor]] = {}  # (cell, prompt) -> parts after the prefix
        self.n_cells, self.n_prompts = n_cells, n_prompts

    def prefix(self, prompt: int, proj: Tensor) -> None:
        self._prefix[prompt] = proj.cpu()

    def add(self, cell: int, prompt: int, proj: Tensor) -> None:
        self._rows.setdefault((cell, prompt), []).append(proj.cpu())

    def get(self, cell: int, prompt: int) -> Tensor:
        """``[positions, layer, trait]`` of row (cell, prompt), position 0 first."""
        parts = ([self._prefix[prompt]] if prompt in self._prefix else []) + self._rows.get((cell, prompt), [])
        return torch.cat(parts) if parts else torch.empty(0)
