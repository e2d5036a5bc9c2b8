"""Benchmarks as one schema: ``load_benchmark`` reads any supported format, ``split_items`` splits it.

Loaders live in ``eas.data.loaders`` (one per upstream format, registered in
``LOADERS``); the schema in ``eas.data.schema``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from eas.data.loaders import LOADERS
from eas.data.schema import LETTERS, Benchmark, DataError, MCItem

KINDS = ("mc", "ab")
SPLITS = ("train", "val", "test")

__all__ = [
    "KINDS",
    "LETTERS",
    "LOADERS",
    "Benchmark",
    "DataError",
    "MCItem",
    "load_benchmark",
    "split_items",
]


def load_benchmark(cfg: Any, seed: int = 0) -> Benchmark:
    """Read the benchmark a ``BenchmarkConfig`` describes.

    Args:
        cfg: an object with the ``BenchmarkConfig`` fields (the dataclass or an
            OmegaConf node): ``name``, ``loader``, ``path``, ``hub_id``,
            ``hub_config``, ``hub_split``, ``kind``, ``options``.
        seed: passed to the loader; only used where the upstream option order
            leaks the answer (TruthfulQA), to shuffle options per item.

    Returns:
        The ``Benchmark``: items in file order, ``kind`` from the config.

    Raises:
        DataError: unknown loader or kind, missing ``benchmark.path``, hub not
            reachable (says to pass ``benchmark.path=...``), malformed file.
    """
    loader = LOADERS.get(str(cfg.loader))
    if loader is None:
        raise DataError(
            f"benchmark.loader={cfg.loader!r} is unknown; choose one of {', '.join(LOADERS)}"
        )
    if cfg.kind not in KINDS:
        raise DataError(
            f"benchmark.kind={cfg.kind!r} is not allowed; choose one of {', '.join(KINDS)}"
        )
    return loader(cfg, seed)


def split_items(
    items: Sequence[MCItem],
    train: float,
    val: float,
    test: float,
    seed: int,
    max_sample_size: int | None = None,
) -> dict[str, list[MCItem]]:
    """Shuffle by ``seed``, keep the first ``max_sample_size``, cut into train/val/test.

    Split sizes are ``round(n * proportion)``; test is capped at what train and
    val leave, and proportions summing to less than 1 leave the rest unused.
    The same items and seed always give the same splits.

    Args:
        items: the benchmark's items.
        train, val, test: proportions, each in (0, 1], summing to at most 1.
        seed: seeds ``random.Random`` for the shuffle.
        max_sample_size: keep only this many items (after shuffling); None keeps all.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, disjoint.

    Raises:
        DataError: a proportion out of range, or too few items for every split
            to get at least one.
    """
    props = {"train": train, "val": val, "test": test}
    for name, p in props.items():
        if not 0 < p <= 1:
            raise DataError(f"{name} proportion {p} is not in (0, 1]")
    if sum(props.values()) > 1 + 1e-9:
        raise DataError(f"split proportions {props} sum to {sum(props.values()):.3f}; must be <= 1")
    if max_sample_size is not None and max_sample_size < 1:
        raise DataError(f"max_sample_size={max_sample_size}: must be >= 1 or None")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if max_sample_size is not None:
        order = order[:max_sample_size]
    n = len(order)
    n_train = round(n * train)
    n_val = min(round(n * val), n - n_train)
    n_test = min(round(n * test), n - n_train - n_val)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    if min(counts.values()) < 1:
        raise DataError(
            f"too few items for the split: {n} items with proportions {props} give {counts}; "
            f"every split needs at least 1 item (use more items or a larger max_sample_size)"
        )
    bounds = [0, n_train, n_train + n_val, n_train + n_val + n_test]
    return {
        name: [items[i] for i in order[bounds[k] : bounds[k + 1]]] for k, name in enumerate(SPLITS)
    }
