"""BeaverTails (Ji et al., 2023): the prompts of its labelled question-answer pairs, a prompt set.

Upstream: ``PKU-Alignment/BeaverTails`` on the hub (splits ``330k_train``, ``330k_test``,
``30k_train``, ``30k_test``; files ``round0/<size>/{train,test}.jsonl.gz``, and the hub's parquet
conversion). Each row is one (prompt, response) pair:

- ``prompt``: the user's question; ``response``: a model's answer to it.
- ``category``: an object of the 14 harm categories (``animal_abuse``, ``child_abuse``, ...,
  ``violence,aiding_and_abetting,incitement``) -> bool, true where the pair shows that harm.
- ``is_safe``: bool, whether the pair is harmless.

A prompt recurs with several responses; the first row of each prompt (whitespace-normalised
text) is kept, and its pair's flags stand for the prompt:
``Prompt(id="beavertails-<12 hex of sha256(text)>", text=prompt, category=<its first true flag,
in the file's key order, or "">, label="safe"|"unsafe" from is_safe)``, with
``metadata={"categories": [every true flag], "response": response, "rows": <rows with this
prompt>}``. The labels judge the pair, not the prompt alone: a harmful question can have a
safe (refusing) response.
"""

from __future__ import annotations

import hashlib
from typing import Any

from eas.data.readers import (
    as_text,
    make_prompt,
    make_prompt_set,
    records,
    require,
    single_file,
)
from eas.data.schema import DataError, PromptSet

GROUP = "prompts"


def _flag(value: Any, where: str, key: str) -> bool:
    """A bool from JSON, or the numpy bool a parquet/arrow column gives."""
    if hasattr(value, "item") and not isinstance(value, (bool, str)):
        value = value.item()
    if not isinstance(value, bool):
        raise DataError(f"{where}: {key}={value!r} must be true or false")
    return value


def prompt_id(text: str) -> str:
    """The id of a prompt: its normalised text's hash, stable across files and splits."""
    return "beavertails-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def load_prompts(cfg: Any) -> PromptSet:
    """``prompts.path`` (.jsonl, .jsonl.gz, .json, .parquet or a folder with one), else the hub."""
    rows, source = records(
        cfg,
        "a BeaverTails .jsonl(.gz) or .parquet file",
        lambda folder: single_file(
            folder, ["*.jsonl", "*.jsonl.gz", "*.json", "*.parquet"], "BeaverTails", GROUP
        ),
        group=GROUP,
    )
    first: dict[str, dict[str, Any]] = {}  # normalised prompt -> the fields of its first row
    for where, rec in rows:
        text = as_text(require(rec, "prompt", where), where, "prompt")
        categories = require(rec, "category", where, "an object of harm category -> bool")
        if not isinstance(categories, dict):
            raise DataError(f"{where}: 'category' must be an object of harm category -> bool, "
                            f"got {type(categories).__name__}")
        key = " ".join(text.split())
        if key in first:
            first[key]["rows"] += 1
            continue
        flags = [str(c) for c, v in categories.items() if _flag(v, where, f"category[{c!r}]")]
        first[key] = {
            "where": where, "text": text, "flags": flags, "rows": 1,
            "safe": _flag(require(rec, "is_safe", where, "true or false"), where, "is_safe"),
            "response": rec.get("response"),
        }  # fmt: skip
    prompts = []
    for key, f in first.items():
        metadata: dict[str, Any] = {"categories": f["flags"], "rows": f["rows"]}
        if isinstance(f["response"], str):
            metadata["response"] = f["response"]
        prompts.append(make_prompt(
            f["where"], id=prompt_id(key), text=f["text"],
            category=f["flags"][0] if f["flags"] else "",
            label="safe" if f["safe"] else "unsafe", metadata=metadata,
        ))  # fmt: skip
    return make_prompt_set(cfg, prompts, source)
