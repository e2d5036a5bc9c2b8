"""eas's own jsonl schema: the built-in sets (``eas/data/builtin``) and any file written for eas.

One JSON object a line: ``id``, ``question``, ``options`` (a list of strings), ``label``
(the 0-based index of the correct option), optional ``context`` and ``metadata``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eas.data.readers import (
    as_text,
    local_path,
    make_benchmark,
    make_item,
    option,
    read_records,
    require,
    single_file,
)
from eas.data.schema import Benchmark, DataError, MCItem

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "builtin"


def parse(rec: dict[str, Any], where: str) -> MCItem:
    """One record in eas's own schema: id, question, options, label, [context], [metadata]."""
    options = require(rec, "options", where, "a list of option strings")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: 'options' must be a list of strings, got {options!r}")
    label = require(rec, "label", where, "the 0-based index of the correct option")
    if not isinstance(label, int) or isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be an integer, got {label!r}")
    metadata = rec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be an object, got {metadata!r}")
    return make_item(
        where,
        id=str(require(rec, "id", where)),
        question=as_text(require(rec, "question", where), where, "question"),
        options=tuple(options),
        label=label,
        context=as_text(rec.get("context") or "", where, "context"),
        metadata=dict(metadata),
    )


def load(cfg: Any, seed: int = 0) -> Benchmark:
    """``benchmark.path`` (a .jsonl, or a folder with one), else ``builtin/<options.file or name>.jsonl``."""
    path = local_path(cfg)
    if path is None:
        stem = str(option(cfg, "file", cfg.name)).removesuffix(".jsonl")
        path = BUILTIN_DIR / f"{stem}.jsonl"
        if not path.exists():
            known = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
            raise DataError(f"no built-in data set {stem!r}; built-in sets are: {', '.join(known)}")
    elif path.is_dir():
        path = single_file(path, ["*.jsonl"], "jsonl")
    items = [parse(rec, where) for where, rec in read_records(path)]
    return make_benchmark(cfg, items, str(path))
