"""eas's own jsonl of free-form prompts: the built-in prompt sets (``eas/data/builtin``) and any
file written for eas.

One JSON object a line: ``id``, ``text`` (the user turn), optional ``system``, ``category``,
``label`` (strings) and ``metadata`` (an object). ``options.files`` joins several built-in sets
(``conf/experiment/scenarios.yaml``: task-conflict and task-free scenarios in one run).
"""

from __future__ import annotations

import json
from typing import Any

from eas.data.formats.eas import BUILTIN_DIR
from eas.data.readers import (
    as_text,
    local_path,
    make_prompt,
    make_prompt_set,
    option,
    option_list,
    read_records,
    require,
    single_file,
)
from eas.data.schema import DataError, Prompt, PromptSet

GROUP = "prompts"


def parse(rec: dict[str, Any], where: str) -> Prompt:
    """One record in eas's prompt schema: id, text, [system], [category], [label], [metadata]."""
    metadata = rec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be an object, got {metadata!r}")
    return make_prompt(
        where,
        id=str(require(rec, "id", where)),
        text=as_text(require(rec, "text", where, "the user turn"), where, "text"),
        system=as_text(rec.get("system") or "", where, "system"),
        category=as_text(rec.get("category") or "", where, "category"),
        label=as_text(rec.get("label") or "", where, "label"),
        metadata=dict(metadata),
    )


def builtin_sets() -> list[str]:
    """The built-in prompt sets: the files of ``eas/data/builtin`` whose records have a ``text``."""
    out = []
    for path in sorted(BUILTIN_DIR.glob("*.jsonl")):
        with path.open(encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
        if "text" in first:
            out.append(path.stem)
    return out


def _builtin(stem: str):
    path = BUILTIN_DIR / f"{stem.removesuffix('.jsonl')}.jsonl"
    if not path.exists():
        raise DataError(f"no built-in prompt set {stem!r}; built-in prompt sets are: "
                        f"{', '.join(builtin_sets())}")
    return path


def load_prompts(cfg: Any) -> PromptSet:
    """``prompts.path`` (a .jsonl or a folder with one), else the built-in
    ``builtin/<options.file or name>.jsonl``; ``options.files: [a, b]`` joins built-in sets in
    that order (their categories tell them apart)."""
    path = local_path(cfg, GROUP)
    if path is None:
        files = option_list(cfg, "files") or [str(option(cfg, "file", cfg.name))]
        paths = [_builtin(stem) for stem in files]
    elif path.is_dir():
        paths = [single_file(path, ["*.jsonl"], "jsonl", GROUP)]
    else:
        paths = [path]
    prompts = [parse(rec, where) for p in paths for where, rec in read_records(p)]
    return make_prompt_set(cfg, prompts, ", ".join(map(str, paths)))
