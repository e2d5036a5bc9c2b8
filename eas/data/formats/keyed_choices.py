"""ARC, OpenBookQA, CommonsenseQA: the correct option is named by ``answerKey`` among labelled choices.

Layouts (the AI2 releases and their hub copies):

- nested (AI2 jsonl): ``question: {stem, choices: [{text, label}]}, answerKey``;
- flat (hub): ``question`` (or ``question_stem``), ``choices: {text: [...], label: [...]}``,
  ``answerKey``.

Labels may be letters or digits ('1'..'4' in some ARC items). ``benchmark.path`` is a
.jsonl/.json/.parquet file, or a folder holding exactly one such file (or name it with
``options.file``). A record's ``fact1`` (OpenBookQA's "additional" config) becomes
``MCItem.fact``, a fact the prompt reminds of.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eas.data.readers import (
    as_list,
    as_text,
    make_benchmark,
    make_item,
    option,
    records,
    require,
    scalar_metadata,
    single_file,
)
from eas.data.schema import Benchmark, DataError, MCItem


def parse(rec: dict[str, Any], where: str, fallback_id: str) -> MCItem:
    """One item in either layout (see the module docstring); ``fallback_id`` when it has no ``id``."""
    question = rec.get("question")
    if isinstance(question, dict):  # AI2 nested
        stem = as_text(require(question, "stem", where, "question.stem"), where, "question.stem")
        raw = require(question, "choices", where, "question.choices [{text, label}]")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise DataError(
                f"{where}: question.choices must be a list of {{text, label}}, got {raw!r}"
            )
        try:
            texts = [c["text"] for c in raw]
            labels = [str(c["label"]) for c in raw]
        except KeyError as e:
            raise DataError(f"{where}: a choice lacks {e}; expected {{text, label}}") from None
    else:  # flat (HF)
        stem = question if question is not None else rec.get("question_stem")
        if stem is None:
            raise DataError(
                f"{where}: missing 'question' (or 'question_stem'); keys present: {sorted(rec)}"
            )
        stem = as_text(stem, where, "question")
        raw = require(rec, "choices", where, "{text: [...], label: [...]}")
        if not isinstance(raw, dict) or "text" not in raw or "label" not in raw:
            raise DataError(
                f"{where}: 'choices' must be {{text: [...], label: [...]}}, got {raw!r}"
            )
        texts = [str(t) for t in as_list(raw["text"])]
        labels = [str(lab) for lab in as_list(raw["label"])]
    key = str(require(rec, "answerKey", where, "the label of the correct choice")).strip()
    if key not in labels:
        raise DataError(f"{where}: answerKey={key!r} is not one of the choice labels {labels}")
    fact = rec.get("fact1")
    if fact is not None and not isinstance(fact, str):
        raise DataError(f"{where}: fact1 must be text, got {type(fact).__name__}")
    metadata = scalar_metadata(rec, ("id", "answerKey", "question", "question_stem", "fact1"))
    metadata["choice_labels"] = labels
    return make_item(
        where,
        id=str(rec.get("id") or fallback_id),
        question=stem,
        options=tuple(texts),
        label=labels.index(key),
        fact=fact or "",
        metadata=metadata,
    )


def load(cfg: Any, seed: int = 0) -> Benchmark:
    """``benchmark.path`` (a file, or a folder with one) or the hub copy; see the module docstring."""

    def in_folder(folder: Path) -> Path:
        name = option(cfg, "file")
        if not name:
            return single_file(folder, ["*.jsonl", "*.json", "*.parquet"], "data")
        if not (folder / name).exists():
            raise DataError(f"benchmark.options.file={name!r}: {folder / name} does not exist")
        return folder / name

    rows, source = records(cfg, "an ARC / OpenBookQA / CommonsenseQA jsonl file", in_folder)
    items = [parse(rec, where, f"{cfg.name}-{i:05d}") for i, (where, rec) in enumerate(rows)]
    return make_benchmark(cfg, items, source)
