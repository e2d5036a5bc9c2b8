"""Interventions at a site: add, ablate, with a position rule, scoped by context managers.

Every intervention and every capture goes through ``hook``: the site table
(``eas.core.sites``) says which module and whether its input or its output is the site's
tensor, so an input site (``residual_pre``, ``mlp_input``) needs no code of its own.

Position rules (on the site's tensor, ``[batch, pos, d_model]``):
- ``"last"``: the last ``q`` positions, ``q`` = the delta's ``pos`` size (1 for a vector).
  Prompts are left-padded, so the last position is every row's last real token.
- ``"all"``: every position.
- an int ``k``: positions ``k`` and later (steer from a token on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor

from eas.core.sites import OUTPUT, SiteMap

SiteFn = Callable[[Tensor], Tensor | None]  # the site's tensor -> a replacement, or None to keep it


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden: Tensor):
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def _apply(hidden: Tensor, fn, position: str | int, q: int) -> Tensor:
    if position == "all":
        return fn(hidden)
    if position == "last":
        q = min(q, hidden.shape[-2])
        head, tail = hidden[..., :-q, :], hidden[..., -q:, :]
        return torch.cat([head, fn(tail)], dim=-2)
    if isinstance(position, int):
        k = max(0, min(position, hidden.shape[-2]))
        head, tail = hidden[..., :k, :], hidden[..., k:, :]
        return torch.cat([head, fn(tail)], dim=-2)
    raise ValueError(f"position must be 'last', 'all' or an int, got {position!r}")


def _on_output(fn: SiteFn):
    def forward_hook(_module, _args, output):
        new = fn(_hidden(output))
        return None if new is None else _replace_hidden(output, new)
    return forward_hook


def _on_input(fn: SiteFn):
    # HF calls blocks and MLPs with the hidden states first and positionally; by keyword
    # (``hidden_states=``) is accepted too, so a model that does so needs no new row kind
    def pre_hook(module, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        if "hidden_states" in kwargs:
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        raise ValueError(f"{type(module).__name__} was called without its hidden states as the first "
                         f"argument or hidden_states=: an input site cannot be read there")
    return pre_hook


@contextmanager
def hook(sites: SiteMap, layer: int, site: str, fn: SiteFn) -> Iterator[None]:
    """Call ``fn`` on the site's tensor ``[batch, pos, d_model]`` in every forward pass inside the block.

    A tensor ``fn`` returns replaces the site's tensor (the module's output, or the input the
    module then runs on); ``None`` keeps it. The hook is always removed, also on error.
    """
    module = sites.module(layer, site)
    if sites.direction(site) == OUTPUT:
        handle = module.register_forward_hook(_on_output(fn))
    else:
        handle = module.register_forward_pre_hook(_on_input(fn), with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def add(
    sites: SiteMap,
    layer: int,
    site: str,
    delta: Tensor,
    position: str | int = "last",
) -> Iterator[None]:
    """Add ``delta`` to the site's tensor at ``layer`` (a module's output or its input).

    Args:
        delta: ``[d_model]``, ``[batch, d_model]`` (one vector per row) or ``[batch|1, q, d_model]``
            (one vector per position; with ``position="last"`` it covers the last q positions).
        position: the position rule (module docstring).
    """
    if delta.dim() == 1:
        delta = delta[None, None, :]
    elif delta.dim() == 2:
        delta = delta[:, None, :]
    q = delta.shape[-2]

    def fn(hidden: Tensor) -> Tensor:
        d = delta.to(device=hidden.device, dtype=hidden.dtype)
        return _apply(hidden, lambda h: h + d, position, q)

    with hook(sites, layer, site, fn):
        yield


@contextmanager
def steer(
    sites: SiteMap,
    layer: int,
    site: str,
    vector: Tensor,
    strength: float | Tensor = 1.0,
    position: str | int = "last",
) -> Iterator[None]:
    """Add ``strength x vector`` at ``site`` of ``layer``; ``strength`` may be ``[batch]`` (one per row)."""
    if isinstance(strength, Tensor) and strength.dim() == 1:
        delta = strength.to(vector)[:, None] * vector[None, :]
    else:
        delta = float(strength) * vector
    with add(sites, layer, site, delta, position):
        yield


@contextmanager
def ablate(sites: SiteMap, layer: int, site: str, direction: Tensor, position: str | int = "all") -> Iterator[None]:
    """Project ``direction`` out of the site's tensor (directional ablation)."""
    unit = direction / direction.norm()

    def fn(hidden: Tensor) -> Tensor:
        u = unit.to(device=hidden.device, dtype=hidden.dtype)
        return _apply(hidden, lambda h: h - (h @ u)[..., None] * u, position, 1)

    with hook(sites, layer, site, fn):
        yield


@contextmanager
def add_many(sites: SiteMap, site: str, deltas: dict[int, Tensor], position: str | int = "last") -> Iterator[None]:
    """``add`` at several layers at once (``{layer: delta}``)."""
    with ExitStack() as stack:
        for layer, delta in deltas.items():
            stack.enter_context(add(sites, layer, site, delta, position))
        yield
