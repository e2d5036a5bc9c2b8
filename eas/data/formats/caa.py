"""CAA A/B sets and Anthropic advanced-ai-risk evals (kind "ab").

Layouts: CAA ``test_dataset_ab.json`` / ``generate_dataset.json`` (a JSON list, answers
"(A)") and Anthropic ``<behaviour>.jsonl`` (answers " (A)"). Both embed the options in
the question text; ``split_ab_question`` parses them. The label is the
behaviour-matching option, so "accuracy" is the rate of behaviour-matching choices. Some
sets (survival-instinct) have more than two options; they are kept.

``benchmark.path`` is one file, or a folder with ``options.behaviour``:
``<folder>/<behaviour>/<options.file or test_dataset_ab.json>``, also under
``<folder>/test/``, or ``<folder>/<behaviour>.jsonl``. There is no official hub copy, so
without a path this is an error asking for one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from eas.data.readers import (
    as_text,
    local_path,
    make_benchmark,
    make_item,
    option,
    records,
    require,
)
from eas.data.schema import LETTERS, Benchmark, DataError, MCItem

_OPTION_LINE = re.compile(r"^\s*\(([A-Z])\)\s?(.*)$")
_ANSWER = re.compile(r"^\s*\(?([A-Z])\)?")


def split_ab_question(text: str, where: str) -> tuple[str, list[str]]:
    """Split ``"...\\n\\nChoices:\\n (A) ...\\n (B) ..."`` into the question and option texts.

    The options block starts at the last line that begins with "(A)" and is
    followed by (B), (C), ... in order; a line that is not an option line
    continues the option before it (multi-line options). A trailing
    "Choices:" is removed from the question.
    """
    lines = text.split("\n")
    starts = [
        i for i, line in enumerate(lines) if (m := _OPTION_LINE.match(line)) and m.group(1) == "A"
    ]
    if not starts:
        raise DataError(
            f"{where}: no options found in the question; expected lines like ' (A) text'"
        )
    start = starts[-1]
    options: list[str] = []
    for line in lines[start:]:
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2).strip())
        elif options and line.strip():
            options[-1] = f"{options[-1]}\n{line.strip()}"
    question = "\n".join(lines[:start]).rstrip()
    question = re.sub(r"\s*Choices:\s*$", "", question).strip()
    if len(options) < 2:
        raise DataError(
            f"{where}: found {len(options)} option(s) in the question; expected at least (A) and (B)"
        )
    return question, options


def _answer_letter(value: Any, where: str, key: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    m = _ANSWER.match(value) if isinstance(value, str) else None
    if not m:
        raise DataError(f"{where}: {key}={value!r}; expected a letter answer like '(A)' or ' (B)'")
    return m.group(1)


def parse(rec: dict[str, Any], where: str, item_id: str, behaviour: str) -> MCItem:
    """One CAA/Anthropic A/B record; label = index of ``answer_matching_behavior``."""
    text = as_text(
        require(rec, "question", where, "question text with the (A)/(B) choices"), where, "question"
    )
    question, options = split_ab_question(text, where)
    key = "answer_matching_behavior"
    letter = _answer_letter(require(rec, key, where, "'(A)' or '(B)'"), where, key)
    if LETTERS.index(letter) >= len(options):
        raise DataError(
            f"{where}: {key}=({letter}) but the question has options A-{LETTERS[len(options) - 1]}"
        )
    return make_item(
        where,
        id=item_id,
        question=question,
        options=tuple(options),
        label=LETTERS.index(letter),
        metadata={"behaviour": behaviour, "matching_letter": letter},
    )


def _behaviour_file(folder: Path, behaviour: str | None, name: str) -> Path:
    if behaviour is None:
        raise DataError(
            f"benchmark.path={str(folder)!r} is a folder; set benchmark.options.behaviour "
            f"(e.g. sycophancy, corrigible-neutral-HHH) or point benchmark.path at one file"
        )
    candidates = [
        folder / behaviour / name,  # CAA datasets/test/<behaviour>/test_dataset_ab.json
        folder / "test" / behaviour / name,  # CAA datasets/
        folder / f"{behaviour}.jsonl",  # anthropics/evals human_generated_evals/<behaviour>.jsonl
        folder / f"{behaviour}.json",
    ]
    for p in candidates:
        if p.is_file():
            return p
    raise DataError(
        f"benchmark.options.behaviour={behaviour!r}: none of {', '.join(str(p) for p in candidates)} exists"
    )


def load(cfg: Any, seed: int = 0) -> Benchmark:
    """``benchmark.path`` (a file, or a folder with ``options.behaviour``); see the module docstring."""
    behaviour = option(cfg, "behaviour")
    if local_path(cfg) is None and not getattr(cfg, "hub_id", None):
        raise DataError(
            f"benchmark {cfg.name!r}: the CAA A/B sets have no official hub copy; pass "
            f"benchmark.path=<CAA datasets/test folder or a test_dataset_ab.json / Anthropic evals .jsonl> "
            f"(with a folder, benchmark.options.behaviour={behaviour!r} picks the set)"
        )
    file = str(option(cfg, "file", "test_dataset_ab.json"))
    rows, source = records(
        cfg, "a CAA A/B file", lambda folder: _behaviour_file(folder, behaviour, file)
    )
    tag = str(behaviour or cfg.name)
    items = [parse(rec, where, f"{cfg.name}-{i:05d}", tag) for i, (where, rec) in enumerate(rows)]
    return make_benchmark(cfg, items, source)
