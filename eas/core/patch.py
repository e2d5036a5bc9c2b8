"""Activation patching, interchange interventions, mediation and attribution patching.

Words (Heimersheim & Nanda's): the *target* run is the one patched (the corrupted input
when denoising), the *source* run is where the written values come from (the clean
input). A ``Patch`` writes at one ``(layer, site)`` and a set of target positions:

- ``replace``: the site's vector becomes the source's at the aligned source position;
- ``direction``: only its component along a unit direction ``u`` becomes the source's,
  ``h + ((s - h) . u) u`` (the interchange intervention of a 1-D subspace);
- ``mean``: the vector becomes a given value (``[d_model]``, or ``[pos, d_model]`` per target position);
- ``zero``: the vector becomes 0;
- ``add``: ``value`` is added (additive steering, ``strength x vector``, compared on the same rows).

Positions are 0-based indices of the target's tokens; ``align`` maps each to a source
position (``index``: the same index, equal lengths only; ``end``: counted from the end,
for inputs that differ in a prefix such as a system prompt; or an explicit map).

Speed (``patch``): a patch at target position ``p`` cannot change positions before ``p``
(causal attention), and a patch inside block ``L`` cannot change blocks below ``L``. So
patches run in tiles: the patches of a tile start at positions ``>= p0`` and layers
``>= L0``; the target's first ``p0`` tokens run once into a key/value cache; every patch
of the tile is a row of one forward over tokens ``p0..n-1`` from that cache, in which
blocks ``0..L0-1`` are not run but return the target's own block output (stubbed). The
result equals ``patch_naive`` (one full forward per patch), which the tests check on
every architecture, and TransformerLens's and nnsight's patching on GPT-2 and Llama.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from eas.core.engine import _cache_name, _fork
from eas.core.intervene import _hidden, _replace_hidden, hook
from eas.core.sites import SiteMap

MODES = ("replace", "direction", "mean", "zero", "add")
ALIGN_RULES = ("index", "end")


@dataclass(frozen=True)
class Patch:
    """Write at ``(layer, site)`` and these target positions (0-based token indices)."""

    layer: int
    positions: tuple[int, ...]


@dataclass
class Value:
    """What a patch writes (module docstring): ``mode`` and what it needs."""

    mode: str = "replace"
    direction: Tensor | None = None  # [d_model], for mode="direction" (normalised here)
    value: Tensor | None = None  # [d_model] or [target pos, d_model], for modes "mean" and "add"

    @property
    def needs_source(self) -> bool:
        return self.mode in ("replace", "direction")


def align(n_target: int, n_source: int, rule: str | dict[int, int]) -> dict[int, int]:
    """Target position -> source position for every target position that has one.

    Raises:
        ValueError: ``index`` with different lengths, an unknown rule, a map entry out of range.
    """
    if isinstance(rule, dict):
        for t, s in rule.items():
            if not 0 <= int(t) < n_target or not 0 <= int(s) < n_source:
                raise ValueError(f"position map entry {t}->{s} is out of range: the target has {n_target} "
                                 f"tokens, the source {n_source}")
        return {int(t): int(s) for t, s in rule.items()}
    if rule == "index":
        if n_target != n_source:
            raise ValueError(f"the two inputs have {n_target} and {n_source} tokens: align='index' needs equal "
                             f"lengths; use align='end' (count from the end) or an explicit position map")
        return {p: p for p in range(n_target)}
    if rule == "end":
        k = min(n_target, n_source)
        return {n_target - k + j: n_source - k + j for j in range(k)}
    raise ValueError(f"align must be one of {ALIGN_RULES} or a {{target: source}} map, got {rule!r}")


# -- readouts --------------------------------------------------------------------------------
class Readout:
    """The metrics of a run's next-token logits at its last position.

    ``answers`` are the candidate answers, each a list of token ids (its spellings, scored
    by log-sum-exp, as ``eas.core.score``); ``good`` and ``bad`` index two of them. Returns
    per row: ``logit_diff`` (good minus bad), ``p_good`` (softmax probability of good's
    spellings over the vocabulary), ``pick`` (the argmax answer), ``top`` (the argmax token)
    and, with ``base`` (the unpatched logits ``[vocab]``), ``kl``: KL(base || patched) in nats.
    """

    def __init__(self, answers: Sequence[Sequence[int]], good: int, bad: int, base: Tensor | None = None):
        if not answers or any(len(a) == 0 for a in answers):
            raise ValueError("every answer needs at least one token id")
        if not (0 <= good < len(answers) and 0 <= bad < len(answers)) or good == bad:
            raise ValueError(f"good={good}, bad={bad}: two different indices of {len(answers)} answers")
        width = max(len(a) for a in answers)
        self.index = torch.full((len(answers), width), -1, dtype=torch.long)
        for i, a in enumerate(answers):
            self.index[i, :len(a)] = torch.tensor(list(a), dtype=torch.long)
        self.good, self.bad = good, bad
        self.base = None if base is None else torch.log_softmax(base.float().reshape(-1), -1)

    def with_base(self, base: Tensor) -> Readout:
        """The same readout with ``kl`` taken to ``base`` (the unpatched logits ``[vocab]``)."""
        out = copy.copy(self)
        out.base = torch.log_softmax(base.float().reshape(-1), -1)
        return out

    def __call__(self, logits: Tensor) -> dict[str, Tensor]:
        """``logits [rows, vocab]`` -> ``{metric: [rows]}`` (float32, CPU)."""
        logits = logits.float().cpu()
        idx = self.index
        g = logits[:, idx.clamp(min=0)].masked_fill(idx < 0, float("-inf"))
        scores = torch.logsumexp(g, -1)  # [rows, answers]
        logp = torch.log_softmax(logits, -1)
        good = idx[self.good][idx[self.good] >= 0]
        out = {
            "logit_diff": scores[:, self.good] - scores[:, self.bad],
            "p_good": logp[:, good].exp().sum(-1),
            "pick": scores.argmax(-1).float(),
            "top": logits.argmax(-1).float(),
        }
        if self.base is not None:
            out["kl"] = (self.base.exp() * (self.base - logp)).sum(-1).clamp(min=0.0)
        return out


def vig_effect(y: Tensor, y_base: Tensor) -> Tensor:
    """Vig et al. (2020)'s normalised effect of a change, ``y / y_base - 1``, for ``y = p(good) / p(bad)``
    given as logit differences: ``exp(ld - ld_base) - 1``."""
    return torch.expm1(y - y_base)


def normalised(patched: Tensor, target: Tensor, source: Tensor, eps: float = 1e-6) -> Tensor:
    """The fraction of the source-target gap a patch recovers: ``(patched - target) / (source - target)``;
    NaN where the gap is below ``eps`` (the patch has nothing to recover there)."""
    gap = source - target
    return torch.where(gap.abs() > eps, (patched - target) / gap.where(gap.abs() > eps, torch.ones_like(gap)),
                       torch.full_like(gap, float("nan")))


# -- runs --------------------------------------------------------------------------------------
def _ids(row: Sequence[int], device) -> Tensor:
    return torch.tensor([list(row)], dtype=torch.long, device=device)


def site_activations(model, sites: SiteMap, row: Sequence[int], layers: Sequence[int], site: str) -> dict[int, Tensor]:
    """One text's site tensor at every position: ``{layer: [pos, d_model]}`` (the model's dtype)."""
    return _run(model, sites, row, layers, site)[0]


def _run(model, sites: SiteMap, row: Sequence[int], layers: Sequence[int], site: str) -> tuple[dict[int, Tensor], Tensor]:
    """One forward of a text: its site tensors at ``layers`` (``site_activations``) and its last logits ``[vocab]``."""
    seen: dict[int, Tensor] = {}

    def keep(layer):
        def fn(h):
            seen[layer] = h[0].detach()
        return fn

    with ExitStack() as stack:
        for layer in set(layers):
            stack.enter_context(hook(sites, layer, site, keep(layer)))
        out = model(input_ids=_ids(row, next(model.parameters()).device), use_cache=False, logits_to_keep=1)
    return seen, out.logits[0, -1]


def _check(model, sites: SiteMap, site: str, target: Sequence[int], patches: Sequence[Patch], value: Value,
           source_map: dict[int, int] | None, n_source: int | None) -> None:
    sites.site(site)
    if value.mode not in MODES:
        raise ValueError(f"patch mode must be one of {MODES}, got {value.mode!r}")
    d = model.config.hidden_size
    if value.mode == "direction":
        if value.direction is None or value.direction.shape != (d,):
            shape = None if value.direction is None else tuple(value.direction.shape)
            raise ValueError(f"mode='direction' needs a direction of width {d} (the hidden size), got {shape}")
        if not torch.isfinite(value.direction).all() or float(value.direction.norm()) == 0:
            raise ValueError("the patch direction is zero or not finite")
    if value.mode in ("mean", "add"):
        v = value.value
        if v is None or v.shape[-1] != d or v.dim() not in (1, 2):
            raise ValueError(f"mode={value.mode!r} needs a value [d_model] or [pos, d_model] with d_model={d}, "
                             f"got {None if v is None else tuple(v.shape)}")
        if v.dim() == 2 and v.shape[0] != len(target):
            raise ValueError(f"mode={value.mode!r} per-position value has {v.shape[0]} positions; the target has "
                             f"{len(target)} tokens")
    n = len(target)
    if n == 0:
        raise ValueError("the target input is empty")
    for p in patches:
        sites.check_layer(p.layer)
        if not p.positions:
            raise ValueError(f"patch at layer {p.layer} has no positions")
        for q in p.positions:
            if not 0 <= q < n:
                raise ValueError(f"position {q} is beyond the target's {n} tokens (0..{n - 1})")
            if source_map is not None and q not in source_map:
                raise ValueError(f"target position {q} has no aligned source position (the source has "
                                 f"{n_source} tokens); patch positions the alignment covers")


def _values(model, sites: SiteMap, site: str, target: Sequence[int], patches: Sequence[Patch],
            value: Value | Sequence[Value], source: Sequence[int] | None, align_rule) -> tuple[list[Value], dict | None]:
    """One ``Value`` per patch, each checked, and the target -> source map (None: no value reads the source)."""
    values = [value] * len(patches) if isinstance(value, Value) else list(value)
    if len(values) != len(patches):
        raise ValueError(f"{len(values)} values for {len(patches)} patches: give one, or one per patch")
    reader = next((v for v in values if v.needs_source), None)
    if reader is not None and source is None:
        raise ValueError(f"mode={reader.mode!r} needs the source input")
    amap = align(len(target), len(source), align_rule) if reader is not None else None
    for v in {id(v): v for v in values}.values():
        mine = [p for p, w in zip(patches, values) if w is v]
        _check(model, sites, site, target, mine, v, amap if v.needs_source else None,
               None if source is None else len(source))
    return values, amap


def _written(value: Value, h: Tensor, src: Tensor | None, t_pos: Tensor) -> Tensor:
    """The new vectors ``[k, d]`` for site vectors ``h [k, d]``; ``src [k, d]`` the source's at the aligned
    positions; ``t_pos [k]`` the target positions (for a per-position mean)."""
    if value.mode == "replace":
        return src.to(h.dtype)
    if value.mode == "direction":
        u = value.direction.to(device=h.device, dtype=torch.float32)
        u = u / u.norm()
        hf = h.float()
        return (hf + ((src.float() - hf) @ u)[:, None] * u).to(h.dtype)
    if value.mode in ("mean", "add"):
        v = value.value.to(device=h.device, dtype=h.dtype)
        v = v.expand_as(h) if v.dim() == 1 else v[t_pos]
        return h + v if value.mode == "add" else v
    return torch.zeros_like(h)


@contextmanager
def _stubbed(blocks, below: int, hidden: Tensor, template) -> Iterator[None]:
    """Blocks ``0..below-1`` do not run: each returns ``hidden`` (the target's block ``below - 1`` output)."""
    def stub(*_args, **_kwargs):
        return _replace_hidden(template, hidden)

    try:
        for layer in range(below):
            blocks[layer].forward = stub
        yield
    finally:
        for layer in range(below):
            blocks[layer].__dict__.pop("forward", None)


def _tiles(patches: Sequence[Patch], rows_per_pass: int, positions_per_pass: int) -> list[list[int]]:
    """Patch indices grouped into tiles of nearby start positions, sorted by layer inside (few wasted rows)."""
    by_block: dict[int, list[int]] = {}
    for i, p in enumerate(patches):
        by_block.setdefault(min(p.positions) // positions_per_pass, []).append(i)
    tiles = []
    for block in sorted(by_block):
        idx = sorted(by_block[block], key=lambda i: (patches[i].layer, min(patches[i].positions)))
        tiles += [idx[k:k + rows_per_pass] for k in range(0, len(idx), rows_per_pass)]
    return tiles


@torch.inference_mode()
def patch(
    model,
    sites: SiteMap,
    site: str,
    target: Sequence[int],
    patches: Sequence[Patch],
    readout: Readout,
    source: Sequence[int] | None = None,
    value: Value | Sequence[Value] = Value(),
    align_rule: str | dict[int, int] = "index",
    rows_per_pass: int = 48,
    positions_per_pass: int = 8,
) -> dict[str, Tensor]:
    """The readout of the target run under each patch: ``{metric: [patch]}``, plus the unpatched run's
    under ``"target"`` and the source run's under ``"source"`` (``{metric: [1]}`` each).

    Args:
        target: the patched input's token ids (one text, no padding).
        patches: where to write (layers of ``site``, target positions).
        readout: metrics of the last position's logits; its ``kl`` is taken to the unpatched run.
        source: the source input's token ids (modes ``replace`` and ``direction``).
        value: what is written (module docstring): one for every patch, or one per patch.
        align_rule: target -> source positions (``align``).
        rows_per_pass: patches run as rows of one forward.
        positions_per_pass: width of a tile's start-position block (larger: fewer forwards, more
            positions recomputed that a patch cannot change).

    Raises:
        ValueError / ModelError: a site the architecture lacks, a layer or position out of range, a
            position with no aligned source position, a direction or value of the wrong width.
    """
    device = next(model.parameters()).device
    values, amap = _values(model, sites, site, target, patches, value, source, align_rule)
    needs = amap is not None
    n = len(target)
    layers = sorted({p.layer for p in patches})
    src_acts, src_logits = _run(model, sites, source, layers if needs else [], site) if source is not None \
        else ({}, None)

    # the target run: its logits, and every block's output (what stubbed blocks return)
    blocks = sites.blocks
    block_out: dict[int, object] = {}
    handles = [blocks[layer].register_forward_hook(
        lambda _m, _a, out, layer=layer: block_out.__setitem__(layer, out)) for layer in range(max(layers))]
    try:
        base_logits = model(input_ids=_ids(target, device), use_cache=False, logits_to_keep=1).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    readout = readout.with_base(base_logits)
    result: dict[str, Tensor] = {"target": readout(base_logits[None])}
    if src_logits is not None:
        result["source"] = readout(src_logits[None])

    cache_name = _cache_name(model)
    prefix_cache: dict[int, object] = {}
    per_patch: dict[str, Tensor] = {}
    for tile in _tiles(patches, rows_per_pass, positions_per_pass):
        tp = [patches[i] for i in tile]
        p0 = min(min(p.positions) for p in tp)
        low = min(p.layer for p in tp)
        r = len(tp)
        if p0 > 0 and p0 not in prefix_cache:
            out = model(input_ids=_ids(target[:p0], device), use_cache=True, logits_to_keep=1)
            prefix_cache[p0] = getattr(out, cache_name)
        kwargs = {}
        if p0 > 0:
            cache = _fork(prefix_cache[p0])
            cache.batch_repeat_interleave(r)
            kwargs[cache_name] = cache
        ids = _ids(target[p0:], device).expand(r, -1)
        pos = torch.arange(p0, n, device=device)[None].expand(r, -1)

        # per layer of the tile: which rows write which (relative) positions, and what
        groups: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
        for j, i in enumerate(tile):
            rows, t_pos = groups.setdefault((patches[i].layer, id(values[i])), ([], []))
            rows += [j] * len(patches[i].positions)
            t_pos += list(patches[i].positions)
        by_id = {id(v): v for v in values}
        writes = []
        for (layer, vid), (rows, t_pos) in groups.items():
            t = torch.tensor(t_pos, device=device)
            src = None
            if by_id[vid].needs_source:
                src = src_acts[layer][torch.tensor([amap[q] for q in t_pos], device=device)]
            writes.append((layer, by_id[vid], torch.tensor(rows, device=device), t - p0, src, t))

        def writer(value, rows, rel, src, t):
            def fn(h: Tensor) -> Tensor:
                h = h.clone()
                h[rows, rel] = _written(value, h[rows, rel], src, t)
                return h
            return fn

        with ExitStack() as stack:
            if low > 0:
                stub_h = _hidden(block_out[low - 1])[:, p0:].expand(r, -1, -1)
                stack.enter_context(_stubbed(blocks, low, stub_h, block_out[low - 1]))
            for layer, *write in writes:
                stack.enter_context(hook(sites, layer, site, writer(*write)))
            logits = model(input_ids=ids, position_ids=pos, use_cache=p0 > 0, logits_to_keep=1, **kwargs).logits[:, -1]
        got = readout(logits)
        for k, v in got.items():
            per_patch.setdefault(k, torch.full((len(patches),), float("nan")))[torch.tensor(tile)] = v
    result.update(per_patch)
    return result


@torch.inference_mode()
def patch_naive(model, sites: SiteMap, site: str, target: Sequence[int], patches: Sequence[Patch], readout: Readout,
                source: Sequence[int] | None = None, value: Value | Sequence[Value] = Value(),
                align_rule: str | dict[int, int] = "index") -> dict[str, Tensor]:
    """``patch`` the plain way: one full forward of the target per patch (the reference and the baseline)."""
    device = next(model.parameters()).device
    values, amap = _values(model, sites, site, target, patches, value, source, align_rule)
    src_acts = site_activations(model, sites, source, sorted({p.layer for p in patches}), site) if amap else {}
    base = model(input_ids=_ids(target, device)).logits[0, -1]
    readout = readout.with_base(base)
    rows: list[dict[str, Tensor]] = []
    for p, value in zip(patches, values):
        t = torch.tensor(p.positions, device=device)
        src = src_acts[p.layer][torch.tensor([amap[q] for q in p.positions], device=device)] \
            if value.needs_source else None

        def fn(h: Tensor, t=t, src=src, value=value) -> Tensor:
            h = h.clone()
            h[0, t] = _written(value, h[0, t], src, t)
            return h

        with hook(sites, p.layer, site, fn):
            rows.append(readout(model(input_ids=_ids(target, device)).logits[:, -1]))
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


def attribution(model, sites: SiteMap, site: str, target: Sequence[int], source: Sequence[int], layers: Sequence[int],
                metric: Callable[[Tensor], Tensor], value: Value = Value(),
                align_rule: str | dict[int, int] = "index") -> Tensor:
    """Attribution patching (Nanda 2023; Syed et al. 2023): the first-order estimate of every
    single-position patch's change of ``metric``, ``(written - h) . d metric / d h`` at the target run.

    One forward and one backward pass give ``[layer, target pos]`` (NaN where a position has no
    aligned source position). ``metric`` maps the last position's logits ``[vocab]`` to a scalar
    (e.g. the logit difference). Modes ``replace`` and ``direction``.
    """
    if not value.needs_source:
        raise ValueError(f"attribution patching takes mode 'replace' or 'direction', got {value.mode!r}")
    device = next(model.parameters()).device
    amap = align(len(target), len(source), align_rule)
    layers = list(layers)
    _check(model, sites, site, target, [Patch(layer, (0,)) for layer in layers], value, None, None)
    with torch.inference_mode():
        src_acts = site_activations(model, sites, source, layers, site)
    kept: dict[int, Tensor] = {}

    def keep(layer):
        def fn(h: Tensor):
            if h.requires_grad:
                h.retain_grad()
                kept[layer] = h
                return None
            leaf = h.detach().requires_grad_(True)  # params without grad: start the graph here
            kept[layer] = leaf
            return leaf
        return fn

    with torch.enable_grad(), ExitStack() as stack:
        for layer in set(layers):
            stack.enter_context(hook(sites, layer, site, keep(layer)))
        logits = model(input_ids=_ids(target, device), use_cache=False, logits_to_keep=1).logits[0, -1]
        order = sorted(kept)
        grads = torch.autograd.grad(metric(logits.float()), [kept[layer] for layer in order], allow_unused=True)
    grad = dict(zip(order, grads))
    n = len(target)
    out = torch.full((len(layers), n), float("nan"))
    t_pos = [p for p in range(n) if p in amap]
    t = torch.tensor(t_pos, device=device)
    s_idx = torch.tensor([amap[p] for p in t_pos], device=device)
    for i, layer in enumerate(layers):
        h = kept[layer][0, t].detach().float()
        g = grad[layer]
        g = torch.zeros_like(h) if g is None else g[0, t].float()
        new = _written(value, h, src_acts[layer][s_idx].float(), t).float()
        out[i, t_pos] = ((new - h) * g).sum(-1).cpu()
    return out
