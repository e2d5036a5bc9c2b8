"""Batched steered generation (prompt x cell rows), and the naive loop it must agree with.

A row is one (prompt, cell): the prompt continued while the cell's ``strength x vector``
is added at its layer, at the positions of the row's steering window. A position is an
input-token position: prompt token ``j`` is at ``j``, the ``t``-th generated token, fed
back, at ``len(prompt) + t``. The window (``steer_on``, ``steer_from``):

- ``"all"``: every position; ``"prompt"``: positions ``< len(prompt)``; ``"generated"``:
  positions ``>= len(prompt)`` (every decode step; the first new token comes from the
  unsteered prompt);
- ``steer_from=k``: only positions ``>= k`` as well.

Positions before a prompt's window have the same keys and values under every cell, so
that prefix is run once per prompt (batched over prompts), unsteered, and its key/value
cache is forked for the prompt's cells; each row then runs the rest of its prompt with
its own delta, and every row of a batch decodes together, one token per step. Cells at
different layers share a batch: one hook per layer, zero delta rows for the cells of
other layers. Rows are left-padded so that each row's real tokens are contiguous and end
at the last cache slot, the layout ``model.generate`` uses, which sliding-window
attention counts in cache slots; for that the prefix of a prompt may be shortened (never
lengthened) to give every row of a batch the same number of prompt tokens after it.

Sampling (``temperature > 0``) draws row (prompt ``i``, cell ``c``) at step ``t`` with
one uniform number that depends only on ``(seed, i, t)``: results do not depend on the
batch size, and the cells of a prompt share their random numbers (paired comparisons).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from eas.core.engine import _cache_name, _fork
from eas.core.intervene import add_many, hook
from eas.core.monitor import Monitor, Trace, watching
from eas.core.sites import SiteMap
from eas.core.tokens import pad_left, position_ids

STEER_ON = ("all", "prompt", "generated")
_NEVER = sys.maxsize  # a window end past any position


@dataclass(frozen=True)
class GenCell:
    """One condition: add ``strength x vector`` at ``layer`` (of the call's site).

    ``vector=None`` or ``strength=0`` is the unsteered condition (``layer`` is then ignored).
    """

    layer: int | None = None
    strength: float = 0.0
    vector: Tensor | None = None  # [d_model]

    @property
    def steered(self) -> bool:
        return self.vector is not None and self.strength != 0


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy (``temperature=0``) or seeded top-p sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus: sample from the most likely tokens holding this much mass
    seed: int = 0


def _stops(model, eos: int | Sequence[int] | None) -> list[int]:
    if eos is None:
        eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]


def check_decoding(sampling: Sampling, steer_on: str, steer_from: int | None) -> None:
    """The decoding arguments every engine takes (this one, ``eas.backends.vllm``): ValueError naming the bad one."""
    if steer_on not in STEER_ON:
        raise ValueError(f"steer_on={steer_on!r}: must be one of {', '.join(map(repr, STEER_ON))}")
    if steer_from is not None and steer_from < 0:
        raise ValueError(f"steer_from={steer_from}: must be >= 0 (a prompt position) or None")
    if sampling.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={sampling.max_new_tokens}: must be >= 1")
    if sampling.temperature < 0:
        raise ValueError(f"temperature={sampling.temperature}: must be >= 0 (0 = greedy)")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p={sampling.top_p}: must be in (0, 1]")


def _check(model, sites: SiteMap, token_rows, site: str, cells, sampling: Sampling, steer_on: str,
           steer_from: int | None) -> None:
    """Raises ValueError (``ModelError`` for layers and sites) naming the argument and its value."""
    check_decoding(sampling, steer_on, steer_from)
    sites.site(site)
    width = model.config.hidden_size
    for k, c in enumerate(cells):
        if not c.steered:
            continue
        if c.layer is None:
            raise ValueError(f"cells[{k}] has a vector and strength={c.strength} but layer=None")
        sites.check_layer(c.layer)
        if tuple(c.vector.shape) != (width,):
            raise ValueError(f"cells[{k}].vector has shape {tuple(c.vector.shape)}; "
                             f"this model's hidden size is {width}: expected ({width},)")
    limit = getattr(model.config, "max_position_embeddings", None)
    for i, row in enumerate(token_rows):
        if len(row) == 0:
            raise ValueError(f"token_rows[{i}] is empty: every prompt needs at least one token")
        if limit is not None and len(row) + sampling.max_new_tokens > limit:
            raise ValueError(f"token_rows[{i}] has {len(row)} tokens + max_new_tokens={sampling.max_new_tokens} "
                             f"> max_position_embeddings={limit} of this model")


def _window(n: int, steer_on: str, steer_from: int | None) -> tuple[int, int]:
    """``[lo, hi)``: the positions a steered cell steers in a row whose prompt has ``n`` tokens."""
    lo = n if steer_on == "generated" else 0
    if steer_from is not None:
        lo = max(lo, steer_from)
    return lo, (n if steer_on == "prompt" else _NEVER)


def _noise(sampling: Sampling, n_prompts: int) -> Tensor | None:
    """``[prompt, step]`` uniforms in [0, 1), float64: prompt ``i``'s from a generator seeded by (seed, i).

    Raises:
        ValueError: a negative seed.
    """
    if sampling.seed < 0:
        raise ValueError(f"seed={sampling.seed}: must be >= 0")
    if sampling.temperature == 0:
        return None
    rows = []
    for i in range(n_prompts):
        # torch's CPU generator keeps only 32 bits of a seed: (seed, i) is mixed into 32 bits by
        # numpy's SeedSequence, so seeds that differ above bit 32 still draw different numbers
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([sampling.seed, i]).generate_state(1)[0]))
        rows.append(torch.rand(sampling.max_new_tokens, generator=g, dtype=torch.float64))
    return torch.stack(rows)


def pick(logits: Tensor, sampling: Sampling, u: Tensor | None = None) -> Tensor:
    """The next token of each row: ``[rows, vocab]`` logits (float32) -> ``[rows]`` ids.

    Greedy: the argmax. Sampling: the inverse CDF of ``softmax(logits / temperature)`` at ``u``
    (``[rows]`` uniforms), over the vocabulary in id order, or with ``top_p < 1`` over the most
    likely tokens (by probability, ties by id) up to and including the first one at which their
    mass reaches ``top_p``. One uniform per row and step, so a row's draw depends on ``u`` only.
    """
    if sampling.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1).double()
    order = None
    if sampling.top_p < 1:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= sampling.top_p, 0.0)
    cdf = probs.cumsum(-1)  # [rows, vocab]
    k = torch.searchsorted(cdf, (u.to(cdf.device) * cdf[:, -1])[:, None], right=True)[:, 0]
    # u * total can round up to total itself: fall back to the last token with mass
    last = probs.shape[-1] - 1 - (probs.flip(-1) > 0).to(torch.int8).argmax(-1)
    k = torch.minimum(k, last)
    return k if order is None else order.gather(-1, k[:, None])[:, 0]


@dataclass
class _Prefix:
    """The unsteered prefixes of a group of prompts, run once, and what every row of the group shares.

    Attributes:
        shared: per prompt of the group, how many of its first tokens the prefix holds.
        tail: ``Q``, the most prompt tokens a row runs after its prefix (exactly ``Q`` where the prefix is not empty).
        index: prompt -> its row in the prefix batch (prompts with an empty prefix are absent).
        cache: the prefix batch's key/value cache (``None`` when every prefix is empty).
        mask: ``[prefix rows, P]`` attention mask of the prefix batch.
        logits: ``[prefix rows, vocab]`` float32 at the last prefix token (the first new token when ``tail=0``).
    """

    shared: dict[int, int]
    tail: int
    index: dict[int, int]
    cache: object
    mask: Tensor | None
    logits: Tensor | None


def _prefill(model, token_rows, prompts: list[int], starts: dict[int, int], pad: int, device,
             monitor: Monitor | None = None) -> _Prefix:
    """Run the prompts' shared prefixes (positions before ``starts[i]``, the earliest steered one)."""
    tail = max(len(token_rows[i]) - starts[i] for i in prompts)
    # a prefix a little shorter than possible, so that every row has `tail` tokens after it
    shared = {i: max(0, len(token_rows[i]) - tail) for i in prompts}
    ran = [i for i in prompts if shared[i] > 0]
    if not ran:
        return _Prefix(shared, tail, {}, None, None, None)
    ids, mask = pad_left([token_rows[i][:shared[i]] for i in ran], pad, device)
    name = _cache_name(model)
    with watching(monitor):
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=True,
                    logits_to_keep=1)
    if monitor is not None:
        proj = monitor.take()
        for j, i in enumerate(ran):
            monitor.trace.prefix(i, proj[j, proj.shape[1] - shared[i]:])
    return _Prefix(shared, tail, {i: j for j, i in enumerate(ran)}, getattr(out, name), mask,
                   out.logits[:, -1].float())


def _site_deltas(deltas: dict[int, Tensor], gate: Tensor) -> dict[int, Tensor]:
    """``{layer: [rows, pos, d_model]}``: each row's delta where ``gate`` ``[rows, pos]`` is set, else exactly 0."""
    if not gate.any():
        return {}
    return {layer: torch.where(gate[..., None], d[:, None, :], 0.0) for layer, d in deltas.items()}


def _decode(model, sites: SiteMap, site: str, token_rows, rows: list[tuple[int, int]], cells: Sequence[GenCell],
            prefix: _Prefix, windows: dict[int, tuple[int, int]], sampling: Sampling, noise: Tensor | None,
            stops: Tensor, pad: int, device, dtype, monitor: Monitor | None = None) -> list[list[int]]:
    """Continue ``rows`` (prompt, cell) from the group's prefix: the new tokens of each row, EOS excluded.

    With a ``monitor``, every position a row runs is projected in the pass that runs it, and
    the last new token is fed once more so that every returned token has its projections."""
    name = _cache_name(model)
    r = len(rows)
    lengths = torch.tensor([len(token_rows[i]) for i, _ in rows], device=device)
    lo = torch.tensor([windows[i][0] if cells[c].steered else 0 for i, c in rows], device=device)
    hi = torch.tensor([windows[i][1] if cells[c].steered else 0 for i, c in rows], device=device)
    deltas: dict[int, Tensor] = {}
    for j, (_, c) in enumerate(rows):
        cell = cells[c]
        if cell.steered:
            if cell.layer not in deltas:
                deltas[cell.layer] = torch.zeros(r, model.config.hidden_size, device=device, dtype=dtype)
            deltas[cell.layer][j] = (cell.strength * cell.vector).to(device=device, dtype=dtype)
    u = None if noise is None else noise[[i for i, _ in rows]]  # [rows, step], CPU

    # the group's prefix cache, forked: it stays intact for the group's other batches, and
    # selecting each row's prompt from it is the only copy of the prefix these rows make
    cache, mask, logits = None, torch.zeros(r, 0, dtype=torch.long, device=device), None
    if prefix.cache is not None:
        src = torch.tensor([prefix.index.get(i, 0) for i, _ in rows], device=device)
        cache = _fork(prefix.cache)
        cache.batch_select_indices(src)
        # a prompt with an empty prefix borrows another's slots, all masked
        has = torch.tensor([i in prefix.index for i, _ in rows], device=device)
        mask = prefix.mask[src] * has[:, None]
        logits = prefix.logits[src]
    if prefix.tail > 0:  # the rest of each prompt, steered per row
        ids, tail_mask = pad_left([token_rows[i][prefix.shared[i]:] for i, _ in rows], pad, device)
        mask = torch.cat([mask, tail_mask], dim=-1)
        pos = position_ids(mask)[:, -ids.shape[1]:]
        gate = (pos >= lo[:, None]) & (pos < hi[:, None]) & tail_mask.bool()
        kwargs = {name: cache} if cache is not None else {}
        with add_many(sites, site, _site_deltas(deltas, gate), position="all"), watching(monitor):
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                        **kwargs)
        cache, logits = getattr(out, name), out.logits[:, -1].float()
        del out
        if monitor is not None:
            proj = monitor.take()
            for j, (i, c) in enumerate(rows):
                monitor.trace.add(c, i, proj[j, proj.shape[1] - (len(token_rows[i]) - prefix.shared[i]):])

    new = torch.full((r, sampling.max_new_tokens), -1, dtype=torch.long, device=device)
    live = torch.arange(r, device=device)  # the chunk row of each batch row; finished rows leave
    done = torch.zeros(r, dtype=torch.bool, device=device)  # per batch row
    steps = None if monitor is None else torch.zeros(r, sampling.max_new_tokens, len(monitor.layers),
                                                     monitor.n_traits, device=device)
    for t in range(sampling.max_new_tokens):
        tok = pick(logits, sampling, None if u is None else u[live.cpu(), t])
        new[live, t] = tok
        done |= torch.isin(tok, stops)
        last = t + 1 == sampling.max_new_tokens
        if (last and monitor is None) or bool(done.all()):
            break
        if not last and int(done.sum()) * 8 >= len(live):
            # finished rows would keep costing a full step each: drop them from the batch
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            live, tok, mask, lengths, lo, hi = (x[keep] for x in (live, tok, mask, lengths, lo, hi))
            deltas = {layer: d[keep] for layer, d in deltas.items()}
            done = done[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        pos = (lengths + t)[:, None]  # the position of the token just picked
        gate = (pos >= lo[:, None]) & (pos < hi[:, None])
        with add_many(sites, site, _site_deltas(deltas, gate), position="all"), watching(monitor):
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                        logits_to_keep=1, **{name: cache})
        cache, logits = getattr(out, name), out.logits[:, -1].float()
        del out
        if steps is not None:
            steps[live, t] = monitor.take()[:, -1]
        if last:
            break
    got = [_cut(row, stops) for row in new.tolist()]
    if steps is not None:
        for j, (i, c) in enumerate(rows):
            monitor.trace.add(c, i, steps[j, :len(got[j])])
    return got


def _cut(row: list[int], stops: Tensor) -> list[int]:
    """A row's tokens up to its first EOS (or the first step it did not run), both excluded."""
    ends = set(stops.tolist()) | {-1}
    return row[:next((j for j, t in enumerate(row) if t in ends), len(row))]


@torch.inference_mode()
def generate(
    model,
    sites: SiteMap,
    token_rows: Sequence[Sequence[int]],
    site: str,
    cells: Sequence[GenCell],
    sampling: Sampling = Sampling(),
    steer_on: str = "all",
    steer_from: int | None = None,
    eos: int | Sequence[int] | None = None,
    batch_size: int = 64,
    pad: int = 0,
    progress: Callable[[int], None] | None = None,
    monitor: Monitor | None = None,
) -> list[list[list[int]]]:
    """The continuation of every prompt under every cell: ``[cell][prompt] -> new token ids``.

    Args:
        token_rows: prompts as token ids (any lengths; padded here, padding never changes results).
        site: the site every cell steers (``eas.core.sites``).
        cells: the conditions; any mix of layers and unsteered cells.
        sampling: greedy or seeded top-p (module docstring), and ``max_new_tokens``.
        steer_on: ``"all"``, ``"prompt"`` or ``"generated"`` positions (module docstring).
        steer_from: steer only positions ``>= steer_from`` as well (0 = the prompt's first token).
        eos: token id(s) that end a row (the model's ``generation_config.eos_token_id`` by default;
            ``[]``: none); a row's output stops before its first one.
        batch_size: rows (prompt x cell) decoded together; memory grows with it times the
            prompt length plus ``max_new_tokens`` (the rows' key/value cache).
        pad: the padding token id (never attended to).
        progress: called with the number of rows just finished, after each batch.
        monitor: project every position of every row onto its directions in the passes that
            run them (``eas.core.monitor``); ``monitor.trace.get(cell, prompt)`` is then
            ``[len(prompt) + len(new tokens), layer, trait]``.

    Raises:
        ValueError: an unknown ``steer_on`` or site, a layer out of range, a vector whose width is
            not the hidden size, an empty prompt, ``max_new_tokens < 1``, ``temperature < 0``,
            ``top_p`` outside (0, 1], a prompt + ``max_new_tokens`` longer than the model's positions.
    """
    _check(model, sites, token_rows, site, cells, sampling, steer_on, steer_from)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    stops = torch.tensor(_stops(model, eos), dtype=torch.long, device=device)
    noise = _noise(sampling, len(token_rows))
    windows = {i: _window(len(row), steer_on, steer_from) for i, row in enumerate(token_rows)}
    any_steered = any(c.steered for c in cells)
    # the earliest position any cell steers: everything before it is the same for all cells
    starts = {i: min(lo, len(token_rows[i])) if any_steered and lo < hi else len(token_rows[i])
              for i, (lo, hi) in windows.items()}
    out: list[list[list[int]]] = [[[] for _ in token_rows] for _ in cells]
    if monitor is not None:
        monitor.trace = Trace(len(cells), len(token_rows))
    if not cells or not token_rows:
        return out
    # longest first (an OOM shows early), similar lengths together (little padding); a group's
    # prompts have all their cells in the group, so each prompt's prefix runs once. With no
    # prefix to share, one group: batches are then filled with rows of any prompts.
    order = sorted(range(len(token_rows)), key=lambda i: -len(token_rows[i]))
    shares = any(starts[i] > 0 for i in order)
    per_group = max(1, batch_size // len(cells)) if shares else len(order)
    for g in range(0, len(order), per_group):
        prompts = order[g:g + per_group]
        prefix = _prefill(model, token_rows, prompts, starts, pad, device, monitor)
        rows = [(i, c) for i in prompts for c in range(len(cells))]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            got = _decode(model, sites, site, token_rows, chunk, cells, prefix, windows, sampling, noise, stops,
                          pad, device, dtype, monitor)
            for (i, c), ids in zip(chunk, got):
                out[c][i] = ids
            if progress:
                progress(len(chunk))
        del prefix  # before the next group's prefill, so one prefix cache is alive at a time
    return out


class _PickAsGreedy:
    """A logits processor that makes ``model.generate``'s greedy step pick ``pick``'s sample:
    every token but the sampled one is set to -inf."""

    def __init__(self, sampling: Sampling, u: Tensor, prompt_len: int):
        self.sampling, self.u, self.prompt_len = sampling, u, prompt_len

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        t = input_ids.shape[1] - self.prompt_len
        tok = pick(scores.float(), self.sampling, self.u[t:t + 1].expand(scores.shape[0]))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, tok[:, None], 0.0)


@torch.inference_mode()
def naive_generate(
    model,
    sites: SiteMap,
    token_rows: Sequence[Sequence[int]],
    site: str,
    cells: Sequence[GenCell],
    sampling: Sampling = Sampling(),
    steer_on: str = "all",
    steer_from: int | None = None,
    eos: int | Sequence[int] | None = None,
    pad: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[list[list[int]]]:
    """The reference ``generate`` must agree with: one cell at a time, batch 1, one hook that
    counts positions, HF ``model.generate`` (sampling: its greedy step made to pick ``pick``'s
    sample with the same uniforms). Same arguments (no ``batch_size``) and output layout."""
    from transformers import GenerationConfig, LogitsProcessorList

    _check(model, sites, token_rows, site, cells, sampling, steer_on, steer_from)
    device = next(model.parameters()).device
    stops = _stops(model, eos)
    noise = _noise(sampling, len(token_rows))
    # `[]` and not None: a None eos is filled in from the model's generation config
    config = GenerationConfig(max_new_tokens=sampling.max_new_tokens, do_sample=False, eos_token_id=stops,
                              pad_token_id=pad)
    out: list[list[list[int]]] = [[[] for _ in token_rows] for _ in cells]
    for c, cell in enumerate(cells):
        for i, row in enumerate(token_rows):
            ids = torch.tensor([list(row)], device=device)
            lo, hi = _window(len(row), steer_on, steer_from) if cell.steered else (0, 0)
            seen = [0]  # positions the hook has passed: the prompt, then one per decode step

            def steer_window(hidden: Tensor, lo=lo, hi=hi, seen=seen, cell=cell) -> Tensor | None:
                pos = torch.arange(seen[0], seen[0] + hidden.shape[-2], device=hidden.device)
                seen[0] += hidden.shape[-2]
                on = (pos >= lo) & (pos < hi)
                if not on.any():
                    return None
                delta = (cell.strength * cell.vector).to(device=hidden.device, dtype=hidden.dtype)
                return hidden + torch.where(on[:, None], delta, 0.0)

            processors = LogitsProcessorList([_PickAsGreedy(sampling, noise[i], len(row))] if noise is not None
                                             else [])
            with hook(sites, cell.layer, site, steer_window) if cell.steered else nullcontext():
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                     logits_processor=processors)
            new = gen[0, len(row):].tolist()
            out[c][i] = new[:next((j for j, t in enumerate(new) if t in stops), len(new))]
            if progress:
                progress(1)
    return out
