"""MMLU: one subject csv, a folder of ``<subject>_test.csv``, or the hub (``cais/mmlu``).

CSV layouts, detected by the first row: a header ``question,choice0..choice3,answer``
with a 0-based ``answer`` (the HF-style reformatted csv), or hendrycks' original (no
header; question, A, B, C, D, answer letter). The subject is the file stem without
``_test``. A hub or parquet copy uses ``question, subject, choices, answer``.
``options.subjects`` (a list) keeps only those subjects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eas.data.readers import (
    as_index,
    as_list,
    as_text,
    hub_records,
    local_path,
    make_benchmark,
    make_item,
    no_source,
    option_list,
    read_csv_rows,
    read_records,
    require,
)
from eas.data.schema import LETTERS, Benchmark, DataError, MCItem

CHOICES = ("choice0", "choice1", "choice2", "choice3")


def _answer(value: Any, where: str) -> int:
    """A letter A-D (hendrycks) or a 0-based index 0-3 (reformatted csv, hub)."""
    text = str(value).strip()
    if text.upper() in ("A", "B", "C", "D"):
        return LETTERS.index(text.upper())
    return as_index(text, 4, where, "answer")


def read_csv(path: Path, subject: str) -> list[MCItem]:
    """The items of one subject csv, in either layout (see the module docstring)."""
    rows = read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: empty CSV file")
    header = [h.strip().lower() for h in rows[0][1]]
    if header[:1] == ["question"]:  # reformatted: question,choice0..3,answer (0-based)
        missing = [c for c in ("question", *CHOICES, "answer") if c not in header]
        if missing:
            raise DataError(
                f"{path}: CSV header {header} lacks {missing}; expected question,choice0..choice3,answer"
            )
        cols = [header.index(c) for c in ("question", *CHOICES, "answer")]
        rows = rows[1:]
    else:  # hendrycks original: no header, question,A,B,C,D,letter
        cols = [0, 1, 2, 3, 4, 5]
    items = []
    for i, (line, row) in enumerate(rows):
        where = f"{path} line {line}"
        if len(row) < max(cols) + 1:
            raise DataError(f"{where}: {len(row)} fields; expected 6 (question, 4 choices, answer)")
        question, *choices, answer = (row[c] for c in cols)
        items.append(
            make_item(
                where,
                id=f"mmlu-{subject}-{i:04d}",
                question=question,
                options=tuple(choices),
                label=_answer(answer, where),
                metadata={"subject": subject},
            )
        )
    return items


def parse(rec: dict[str, Any], where: str, item_id: str) -> MCItem:
    """Hub layout (``cais/mmlu``): question, subject, choices [4], answer (0-based)."""
    choices = [str(c) for c in as_list(require(rec, "choices", where, "a list of 4 choices"))]
    return make_item(
        where,
        id=item_id,
        question=as_text(require(rec, "question", where), where, "question"),
        options=tuple(choices),
        label=as_index(require(rec, "answer", where), len(choices), where, "answer"),
        metadata={"subject": str(rec.get("subject", ""))},
    )


def load(cfg: Any, seed: int = 0) -> Benchmark:
    """``benchmark.path`` (a file or a folder of ``*_test.csv``) or the hub copy; see the module docstring."""
    subjects = option_list(cfg, "subjects")
    path = local_path(cfg)
    if path is not None:
        files = sorted(path.glob("*_test.csv")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"benchmark.path={str(path)!r}: no *_test.csv files in the folder")
        items: list[MCItem] = []
        for f in files:
            subject = f.stem.removesuffix("_test")
            if subjects and subject not in subjects:
                continue
            if f.suffix.lower() == ".csv":
                items += read_csv(f, subject)
            else:
                items += [
                    parse(rec, where, f"mmlu-{f.stem}-{i:04d}")
                    for i, (where, rec) in enumerate(read_records(f))
                ]
        source = str(path)
    elif getattr(cfg, "hub_id", None):
        items = [
            parse(rec, where, f"mmlu-{i:05d}") for i, (where, rec) in enumerate(hub_records(cfg))
        ]
        source = str(cfg.hub_id)
    else:
        raise no_source(cfg, "an MMLU <subject>_test.csv or a folder of them")
    if subjects:
        items = [it for it in items if it.metadata.get("subject") in subjects]
        if not items:
            raise DataError(
                f"benchmark.options.subjects={subjects}: no items of these subjects in {source}"
            )
    return make_benchmark(cfg, items, source)
