"""Benchmarks and prompt sets as one schema each: ``load_benchmark`` reads any benchmark format,
``split_items`` splits it; ``load_prompts`` reads any free-form prompt set.

A format is a module named by ``benchmark.format`` or ``prompts.format``
(``eas.data.formats.<name>`` or a dotted import path; see ``eas.data.formats``); the readers
formats share are in ``eas.data.readers``, the schema in ``eas.data.schema``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from typing import Any

from eas import extensions
from eas.data.readers import RULES, item_rules
from eas.data.schema import LETTERS, Benchmark, DataError, MCItem, Prompt, PromptSet

KINDS = ("mc", "ab")
SPLITS = ("train", "val", "test")
DUPLICATES = ("drop", "error")  # benchmark.duplicates

log = logging.getLogger("eas")

__all__ = [
    "KINDS",
    "LETTERS",
    "Benchmark",
    "DataError",
    "MCItem",
    "Prompt",
    "PromptSet",
    "drop_duplicates",
    "filter_prompts",
    "item_rules",
    "load_benchmark",
    "load_prompts",
    "reference_order",
    "split_items",
]


def load_benchmark(cfg: Any, seed: int = 0) -> Benchmark:
    """Read the benchmark a ``BenchmarkConfig`` describes, through its format's ``load``.

    The one place a job reads its data file.

    Args:
        cfg: an object with the ``BenchmarkConfig`` fields (the dataclass or an
            OmegaConf node): ``name``, ``format``, ``path``, ``hub_id``,
            ``hub_config``, ``hub_split``, ``kind``, ``options``, ``duplicates``.
        seed: passed to the format; only used where the upstream option order
            leaks the answer (TruthfulQA), to shuffle options per item; with
            ``item_rules=pas_reference``, the seed of every item's option permutation.

    Returns:
        The ``Benchmark``: items in file order, ``kind`` from the config, later
        copies of a repeated item dropped (see ``drop_duplicates``).

    Raises:
        DataError: unknown format or kind, missing ``benchmark.path``, hub not
            reachable (says to pass ``benchmark.path=...``), malformed file, no
            items, two items with one id, a repeated item with
            ``benchmark.duplicates=error``.
    """
    try:
        fmt = extensions.load("format", cfg.format, "benchmark.format", needs=("load",))
    except extensions.ExtensionError as e:
        raise DataError(str(e)) from None
    if cfg.kind not in KINDS:
        raise DataError(
            f"benchmark.kind={cfg.kind!r} is not allowed; choose one of {', '.join(KINDS)}"
        )
    # A config node composed before the field existed has no `duplicates`: the default.
    duplicates = getattr(cfg, "duplicates", None) or "drop"
    if duplicates not in DUPLICATES:
        raise DataError(
            f"benchmark.duplicates={duplicates!r} is not allowed; choose one of "
            f"{', '.join(DUPLICATES)}"
        )
    rules = item_rules(cfg)
    bench = fmt.load(cfg, seed)
    if not isinstance(bench, Benchmark):
        raise DataError(
            f"benchmark.format={cfg.format!r}: {fmt.__name__}.load returned "
            f"{type(bench).__name__}; a format's load must return an eas.data.Benchmark"
        )
    _check_items(bench)
    if rules == "pas_reference":
        bench = dataclasses.replace(bench, items=tuple(reference_order(it, seed) for it in bench.items))
    return drop_duplicates(bench, error=duplicates == "error")


def load_prompts(cfg: Any) -> PromptSet:
    """Read the prompt set a ``PromptsConfig`` describes, through its format's ``load_prompts``.

    The analogue of ``load_benchmark`` for prompts without options (generation, free-text judging).

    Args:
        cfg: an object with the ``PromptsConfig`` fields (the dataclass or an OmegaConf node):
            ``name``, ``format``, ``path``, ``hub_id``, ``hub_config``, ``hub_split``, ``options``,
            and the filters ``categories``, ``labels`` (None or a list), ``limit`` (None or N >= 1).

    Returns:
        The ``PromptSet``: prompts in file order, only those of ``categories`` and ``labels``
        when given, then the first ``limit``.

    Raises:
        DataError: unknown format, missing ``prompts.path``, hub not reachable (says to pass
            ``prompts.path=...``), malformed file, empty text, no prompts, two prompts with one
            id, a category or label the set does not have (lists those it has), a bad limit.
    """
    try:
        fmt = extensions.load("format", cfg.format, "prompts.format", needs=("load_prompts",))
    except extensions.ExtensionError as e:
        raise DataError(str(e)) from None
    prompts = fmt.load_prompts(cfg)
    if not isinstance(prompts, PromptSet):
        raise DataError(
            f"prompts.format={cfg.format!r}: {fmt.__name__}.load_prompts returned "
            f"{type(prompts).__name__}; a format's load_prompts must return an eas.data.PromptSet"
        )
    _check_prompts(prompts)
    return filter_prompts(
        prompts,
        categories=getattr(cfg, "categories", None),
        labels=getattr(cfg, "labels", None),
        limit=getattr(cfg, "limit", None),
    )


def _as_names(value: Any, field: str) -> list[str] | None:
    """A filter value: None, one name, or a list of names (an OmegaConf ListConfig included)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        return [str(v) for v in value]
    except TypeError:
        raise DataError(f"{field}={value!r}: give a list of names, e.g. {field}=[a,b]") from None


def filter_prompts(
    prompts: PromptSet,
    categories: Sequence[str] | str | None = None,
    labels: Sequence[str] | str | None = None,
    limit: int | None = None,
) -> PromptSet:
    """The prompts of ``categories`` and of ``labels`` (None keeps all), then the first ``limit``.

    File order is kept, so a limit takes the same prompts every time.

    Raises:
        DataError: a category or label no prompt has (the message lists those present),
            filters that together leave nothing, or ``limit`` < 1.
    """
    kept = list(prompts.prompts)
    filters = (("category", "categories", categories), ("label", "labels", labels))
    for attr, plural, value in filters:
        wanted = _as_names(value, f"prompts.{plural}")
        if wanted is None:
            continue
        present = sorted({getattr(p, attr) for p in prompts.prompts})
        unknown = [w for w in wanted if w not in present]
        if unknown:
            raise DataError(
                f"prompts.{plural}={wanted}: prompt set {prompts.name!r} has no {attr} {unknown}; "
                f"its {plural} are {present}"
            )
        kept = [p for p in kept if getattr(p, attr) in wanted]
    if not kept:
        raise DataError(
            f"prompt set {prompts.name!r}: no prompt has prompts.categories={categories!r} "
            f"and prompts.labels={labels!r} together; widen one of them"
        )
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise DataError(f"prompts.limit={limit!r}: must be an integer >= 1, or null for all")
        kept = kept[:limit]
    if len(kept) == len(prompts.prompts):
        return prompts
    return dataclasses.replace(prompts, prompts=tuple(kept))


def reference_order(item: MCItem, seed: int) -> MCItem:
    """``item`` with its options in the PAS reference's order: each question shuffles its
    options with a fresh ``random.Random(seed)``, so every item with k options gets the same
    permutation (the reference's ``BenchmarkLoader._format_mc_question``)."""
    order = list(range(len(item.options)))
    random.Random(seed).shuffle(order)
    return dataclasses.replace(
        item, options=tuple(item.options[i] for i in order), label=order.index(item.label)
    )


def _check_ids(what: str, name: str, noun: str, ids, source: str) -> None:
    """Every format's output has rows, and no two share an id (ids key the store)."""
    ids = list(ids)
    if not ids:
        raise DataError(f"{what} {name!r}: no {noun}s read from {source}")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(f"{what} {name!r}: duplicate {noun} id {i!r} in {source}")
        seen.add(i)


def _check_items(bench: Benchmark) -> None:
    _check_ids("benchmark", bench.name, "item", (it.id for it in bench.items), bench.source)


def _check_prompts(prompts: PromptSet) -> None:
    _check_ids("prompt set", prompts.name, "prompt", (p.id for p in prompts.prompts), prompts.source)


def _item_key(it: MCItem) -> tuple:
    """What the model sees of an item, whitespace-normalised; options as a set.

    The option order is left out because TruthfulQA shuffles each item's options by
    its id, so two copies of one question come out in different orders.
    """

    def norm(text: str) -> str:
        return " ".join(text.split())

    return norm(it.context), norm(it.question), tuple(sorted(norm(o) for o in it.options))


def drop_duplicates(bench: Benchmark, error: bool = False) -> Benchmark:
    """``bench`` without the later copies of an item (same context, question and options).

    Formats that number rows (ETHICS, TruthfulQA, MMLU, ...) give each copy of a
    repeated row its own id, and the seeded split can then put one copy in train
    and another in test. Every format's output passes through here, before any
    split; the first copy in file order is kept, so the result is deterministic.

    Raises:
        DataError: ``error`` and some item repeats an earlier one; names the
            source and the ids of the first repeat.
    """
    first: dict[tuple, MCItem] = {}
    kept: list[MCItem] = []
    dropped: list[tuple[MCItem, MCItem]] = []  # (the copy, the item it repeats)
    for it in bench.items:
        key = _item_key(it)
        if key in first:
            dropped.append((it, first[key]))
        else:
            first[key] = it
            kept.append(it)
    if not dropped:
        return bench
    copy, original = dropped[0]
    if error:
        raise DataError(
            f"benchmark {bench.name!r}: {bench.source} has {len(dropped)} duplicate item(s) "
            f"(same question and options); the first: {copy.id!r} repeats {original.id!r}. "
            f"Remove the copies, or set benchmark.duplicates=drop to keep only the first"
        )
    # A copy whose correct option differs is a contradiction in the data, worth its own count.
    conflicts = sum(c.options[c.label] != o.options[o.label] for c, o in dropped)
    note = f"; {conflicts} with a different correct option" if conflicts else ""
    log.warning(
        "%s: dropped %d duplicate items (same question and options%s), e.g. %s repeats %s",
        bench.name, len(dropped), note, copy.id, original.id,
    )  # fmt: skip
    return dataclasses.replace(bench, items=tuple(kept))


def split_items(
    items: Sequence[MCItem],
    train: float,
    val: float,
    test: float,
    seed: int,
    max_sample_size: int | None = None,
    rule: str = "eas",
) -> dict[str, list[MCItem]]:
    """Shuffle by ``seed``, keep the first ``max_sample_size``, cut into train/val/test.

    ``rule="eas"``: ``random.Random(seed).shuffle``; split sizes are ``round(n * proportion)``,
    test is capped at what train and val leave, and proportions summing to less than 1 leave
    the rest unused. ``rule="pas_reference"`` (the PAS reference's ``BenchmarkLoader._split``):
    pandas ``sample(frac=1, random_state=seed)``; sizes are ``int(n * proportion)`` and what
    they leave goes to train. The same items, seed and rule always give the same splits.

    Args:
        items: the benchmark's items.
        train, val, test: proportions, each in (0, 1], summing to at most 1.
        seed: seeds ``random.Random`` for the shuffle.
        max_sample_size: keep only this many items (after shuffling); None keeps all.
        rule: ``eas`` or ``pas_reference`` (above).

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
    if rule not in RULES:
        raise DataError(f"split_rule={rule!r} is not allowed; choose one of {', '.join(RULES)}")
    if rule == "pas_reference":
        import pandas as pd

        order = pd.RangeIndex(len(items)).to_series().sample(frac=1, random_state=seed).tolist()
    else:
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
    if max_sample_size is not None:
        order = order[:max_sample_size]
    n = len(order)
    if rule == "pas_reference":
        n_train, n_val, n_test = (int(n * p) for p in (train, val, test))
        n_train += n - (n_train + n_val + n_test)
    else:
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
