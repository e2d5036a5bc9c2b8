"""Contrast-pair files: one prompt with a response that shows a trait and one that does not.

One record a line (``.jsonl``) or a row (``.csv`` with the header ``id,prompt,positive,negative``):
``id``; ``prompt``, the user turn (may be empty: the responses alone contrast); ``positive``, the
response that shows the trait; ``negative``, the one that does not; optional ``metadata`` (an
object; in a csv, any further columns).

Each pair becomes an A/B item (``kind`` ab): ``question=prompt``, ``options=(positive,
negative)``, ``label=0``, so "accuracy" is the rate of choosing the trait's response and every
multiple-choice method applies; ``method=response_diff`` contrasts the two responses as texts.
With ``options.shuffle: true`` each item's two options are ordered by a seeded per-item shuffle
instead, so the trait's response is not always (A).

Source: ``benchmark.path`` (a file, or a folder with one), else ``benchmark.hub_id``, else the
built-in ``eas/data/builtin/<options.file or name>.jsonl``.
"""

from __future__ import annotations

from typing import Any

from eas.data.formats.eas import BUILTIN_DIR
from eas.data.readers import (
    as_text,
    hub_records,
    local_path,
    make_benchmark,
    make_item,
    option,
    read_records,
    require,
    scalar_metadata,
    shuffle_options,
    single_file,
)
from eas.data.schema import Benchmark, DataError, MCItem

COLUMNS = ("id", "prompt", "positive", "negative")


def parse(rec: dict[str, Any], where: str, name: str, seed: int, shuffle: bool) -> MCItem:
    """One pair record as an A/B item whose label is the positive response."""
    item_id = str(require(rec, "id", where))
    prompt = as_text(rec.get("prompt") or "", where, "prompt")
    positive, negative = (as_text(require(rec, k, where, "a response text"), where, k)
                          for k in ("positive", "negative"))  # fmt: skip
    for key, text in (("positive", positive), ("negative", negative)):
        if not text.strip():
            raise DataError(f"{where}: pair {item_id!r} has an empty {key} response")
    if positive.strip() == negative.strip():
        raise DataError(f"{where}: pair {item_id!r} has the same positive and negative response")
    metadata = rec.get("metadata")
    if metadata is None:
        metadata = scalar_metadata(rec, (*COLUMNS, "metadata"))
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be an object, got {metadata!r}")
    options, label = [positive, negative], 0
    if shuffle:
        options, label = shuffle_options(options, 0, seed, item_id)
    return make_item(where, id=item_id, question=prompt, options=tuple(options), label=label,
                     metadata={"pair_set": name, **metadata})


def load(cfg: Any, seed: int = 0) -> Benchmark:
    """``benchmark.path`` (.jsonl, .csv or a folder with one), else the hub, else a built-in set."""
    if str(cfg.kind) != "ab":
        raise DataError(f"benchmark.kind={cfg.kind!r}: a contrast-pair file is an A/B set; "
                        f"set benchmark.kind=ab")
    path = local_path(cfg)
    if path is not None:
        if path.is_dir():
            path = single_file(path, ["*.jsonl", "*.csv"], "pair (.jsonl or .csv)")
        rows, source = read_records(path, COLUMNS), str(path)
    elif getattr(cfg, "hub_id", None):
        rows, source = hub_records(cfg), str(cfg.hub_id)
    else:
        stem = str(option(cfg, "file", cfg.name)).removesuffix(".jsonl")
        path = BUILTIN_DIR / f"{stem}.jsonl"
        if not path.exists():
            known = sorted(p.stem for p in BUILTIN_DIR.glob("pairs_*.jsonl"))
            raise DataError(f"no built-in pair set {stem!r} (and no benchmark.path); built-in pair "
                            f"sets are: {', '.join(known)}")
        rows, source = read_records(path), str(path)
    shuffle = bool(option(cfg, "shuffle", False))
    items = [parse(rec, where, str(cfg.name), seed, shuffle) for where, rec in rows]
    return make_benchmark(cfg, items, source)
