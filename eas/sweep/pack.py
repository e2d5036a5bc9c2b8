"""Pack cells into jobs: one model load per job instead of one per cell.

A multirun over ``layer=8,11,13 strength=1,4,7`` is nine cells. ``layer`` and
``strength`` take lists, so ``layer=[8,11] strength=[1,4,7]`` is one job over a
six-cell grid on the fast engine, with the same results as six one-cell jobs.
``pack`` groups cells that differ only in the packable keys and cuts each
group's grid into blocks of at most ``cells_per_job`` cells.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

PACK_KEYS = ("layer", "strength")


@dataclass
class Job:
    """One submitted unit: the overrides it runs with and the cells (override sets) it covers."""

    overrides: list[str]
    cells: list[list[str]] = field(default_factory=list)


def _split(override: str) -> tuple[str, str]:
    key, sep, value = override.partition("=")
    return (key, value) if sep else (override, "")


def _elements(value: str) -> list[str]:
    """``8`` -> [8]; ``[8,11]`` -> [8, 11] (a list the user gave as one value)."""
    v = value.strip()
    if v.startswith("[") and v.endswith("]"):
        return [e.strip() for e in v[1:-1].split(",") if e.strip()]
    return [v]


def _join(key: str, values: list[str]) -> str:
    return f"{key}={values[0]}" if len(values) == 1 else f"{key}=[{','.join(values)}]"


def _blocks(values: list[str], size: int) -> list[list[str]]:
    return [values[i:i + size] for i in range(0, len(values), size)]


def pack(cells: list[list[str]], cells_per_job: int, keys: tuple[str, ...] = PACK_KEYS) -> list[Job]:
    """Group cells into jobs of at most ``cells_per_job`` cells.

    Args:
        cells: One override list per cell, as the Hydra sweeper expands them
            (``["layer=8", "strength=1", "benchmark=mmlu"]``).
        cells_per_job: The most cells one job runs; 1 keeps one job per cell.
        keys: Overrides that take lists and may be merged (plain ``key=value`` only).

    Returns:
        Jobs in the order of their first cell. A group whose cells are not a full
        grid over the keys (never the case for a cartesian sweep) is left unpacked.
    """
    if cells_per_job <= 1:
        return [Job(list(c), [list(c)]) for c in cells]
    groups: dict[tuple[str, ...], list[tuple[list[str], dict[str, list[str]]]]] = {}
    for cell in cells:
        rest, grid = [], {}
        for o in cell:
            k, v = _split(o)
            if k in keys:
                grid[k] = _elements(v)
            else:
                rest.append(o)
        groups.setdefault(tuple(rest), []).append((cell, grid))
    jobs = []
    for rest, members in groups.items():
        present = [k for k in keys if k in members[0][1]]
        axes = {k: list(dict.fromkeys(e for _, g in members for e in g.get(k, []))) for k in present}
        points = {tuple(tuple(g.get(k, [])) for k in present) for _, g in members}
        full = {tuple((e,) for e in p) for p in itertools.product(*(axes[k] for k in present))}
        if not present or any(set(g) != set(present) for _, g in members) or points != full:
            jobs += [Job(list(c), [list(c)]) for c, _ in members]
            continue
        # block sizes, innermost key first: whole axes while they fit, then a part of one axis
        sizes, room = {}, cells_per_job
        for k in reversed(present):
            sizes[k] = max(1, min(len(axes[k]), room))
            room = room // len(axes[k]) if sizes[k] == len(axes[k]) else 1
        by_point = {tuple(g[k][0] for k in present): cell for cell, g in members}
        for block in itertools.product(*(_blocks(axes[k], sizes[k]) for k in present)):
            overrides = list(rest) + [_join(k, vals) for k, vals in zip(present, block)]
            jobs.append(Job(overrides, [list(by_point[p]) for p in itertools.product(*block)]))
    return jobs
