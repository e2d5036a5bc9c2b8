"""BBQ (Parrish et al.): ``data/<Category>.jsonl``, a folder of them, or a hub copy.

``options.category`` picks the file in a folder (case-insensitive) and filters records of
a single file or hub split by their ``category`` field. The context goes to
``MCItem.context``; ``context_condition`` (ambig / disambig), ``question_polarity`` (neg /
nonneg), the category and each answer's group ("unknown" = the can't-be-determined
option) to metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eas.data.readers import (
    as_index,
    as_list,
    as_text,
    make_benchmark,
    make_item,
    option,
    records,
    require,
)
from eas.data.schema import Benchmark, DataError, MCItem

CATEGORIES = (
    "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
    "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
)  # fmt: skip


def parse(rec: dict[str, Any], where: str) -> MCItem:
    """One BBQ record: context, question, ans0..ans2, label; conditions go to metadata."""
    options = tuple(as_text(require(rec, f"ans{k}", where), where, f"ans{k}") for k in range(3))
    category = str(require(rec, "category", where))
    metadata = {
        "category": category,
        "context_condition": rec.get("context_condition"),
        "question_polarity": rec.get("question_polarity"),
        "question_index": rec.get("question_index"),
    }
    info = rec.get("answer_info")
    if isinstance(info, dict):  # group of each answer; "unknown" marks "can't be determined"
        metadata["answer_groups"] = [
            str(as_list(info.get(f"ans{k}", ["", ""]))[-1]) for k in range(3)
        ]
    extra = rec.get("additional_metadata")
    if isinstance(extra, dict) and "stereotyped_groups" in extra:
        metadata["stereotyped_groups"] = [str(g) for g in as_list(extra["stereotyped_groups"])]
    return make_item(
        where,
        id=f"bbq-{category}-{require(rec, 'example_id', where)}",
        question=as_text(require(rec, "question", where), where, "question"),
        options=options,
        label=as_index(require(rec, "label", where, "index of the correct ans0..ans2"), 3, where),
        context=as_text(require(rec, "context", where), where, "context"),
        metadata=metadata,
    )


def _category_file(folder: Path, category: str | None) -> Path:
    if category is None:
        raise DataError(
            f"benchmark.path={str(folder)!r} is a folder; set benchmark.options.category to one of "
            f"{', '.join(CATEGORIES)} (reads <folder>/<category>.jsonl)"
        )
    for p in folder.glob("*.jsonl"):
        if p.stem.lower() == category.lower():
            return p
    raise DataError(f"benchmark.options.category={category!r}: no {category}.jsonl in {folder}")


def load(cfg: Any, seed: int = 0) -> Benchmark:
    """``benchmark.path`` (a file, or a folder with ``options.category``) or the hub copy."""
    category = option(cfg, "category")
    rows, source = records(
        cfg,
        "a BBQ data folder or <Category>.jsonl",
        lambda folder: _category_file(folder, category),
    )
    items = [parse(rec, where) for where, rec in rows]
    if category is not None:
        items = [it for it in items if it.metadata["category"].lower() == str(category).lower()]
        if not items:
            raise DataError(
                f"benchmark.options.category={category!r}: no items of that category in {source}"
            )
    return make_benchmark(cfg, items, source)
