"""Interventions at a site: add, ablate, with a position rule, scoped by context managers.

Position rules (on the module's output, ``[batch, pos, d_model]``):
- ``"last"``: the last ``q`` positions, ``q`` = the delta's ``pos`` size (1 for a vector).
  Prompts are left-padded, so the last position is every row's last real token.
- ``"all"``: every position.
- an int ``k``: positions ``k`` and later (steer from a token on).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from eas.models import SiteMap


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


@contextmanager
def hook_output(module: nn.Module, fn) -> Iterator[None]:
    """Replace ``module``'s output by ``fn(output)`` inside the block; the hook is always removed."""
    handle = module.register_forward_hook(lambda _m, _i, out: fn(out))
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
    """Add ``delta`` to the output of ``site`` at ``layer``.

    Args:
        delta: ``[d_model]``, ``[batch, d_model]`` (one vector per row) or ``[batch|1, q, d_model]``
            (one vector per position; with ``position="last"`` it covers the last q positions).
        position: the position rule (module docstring).
    """
    module = sites.module(layer, site)
    if delta.dim() == 1:
        delta = delta[None, None, :]
    elif delta.dim() == 2:
        delta = delta[:, None, :]
    q = delta.shape[-2]

    def fn(output):
        hidden = _hidden(output)
        d = delta.to(device=hidden.device, dtype=hidden.dtype)
        return _replace_hidden(output, _apply(hidden, lambda h: h + d, position, q))

    with hook_output(module, fn):
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
    """Project ``direction`` out of the site's output (directional ablation)."""
    module = sites.module(layer, site)
    unit = direction / direction.norm()

    def fn(output):
        hidden = _hidden(output)
        u = unit.to(device=hidden.device, dtype=hidden.dtype)
        return _replace_hidden(output, _apply(hidden, lambda h: h - (h @ u)[..., None] * u, position, 1))

    with hook_output(module, fn):
        yield


@contextmanager
def add_many(sites: SiteMap, site: str, deltas: dict[int, Tensor], position: str | int = "last") -> Iterator[None]:
    """``add`` at several layers at once (``{layer: delta}``)."""
    with ExitStack() as stack:
        for layer, delta in deltas.items():
            stack.enter_context(add(sites, layer, site, delta, position))
        yield
