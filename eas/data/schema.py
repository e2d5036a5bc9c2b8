"""The one schema every benchmark becomes.

A multiple-choice item is a question (with optional context) and a list of
option texts with the index of the correct one. For an A/B behaviour set the
"correct" option is the behaviour-matching answer, so accuracy is the rate of
behaviour-matching choices and every steering method applies unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from eas.core.letters import LETTERS


class DataError(ValueError):
    """A data file or benchmark option is malformed; the message says where and how."""


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice item.

    Attributes:
        id: stable identifier, unique within the benchmark.
        question: the question text, without the options.
        options: option texts, in presentation order (letters A, B, ... by index).
        label: index into ``options`` of the correct (or behaviour-matching) option.
        context: text shown before the question (BBQ context, a passage); may be empty.
        fact: a fact the prompt reminds of after the options (OpenBookQA's ``fact1``, which its
            "additional" config carries and the PAS reference shows); may be empty.
        metadata: anything else the upstream file carries (category, condition, ...).
    """

    id: str
    question: str
    options: tuple[str, ...]
    label: int
    context: str = ""
    fact: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise DataError(f"item {self.id!r}: needs at least 2 options, got {len(self.options)}")
        if len(self.options) > len(LETTERS):
            raise DataError(f"item {self.id!r}: at most {len(LETTERS)} options, got {len(self.options)}")
        if not 0 <= self.label < len(self.options):
            raise DataError(
                f"item {self.id!r}: label {self.label} out of range for {len(self.options)} options"
            )

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]


@dataclass(frozen=True)
class Benchmark:
    """A named list of items with the facts its format knows about them."""

    name: str
    items: tuple[MCItem, ...]
    kind: str = "mc"  # "mc" (multiple choice) or "ab" (A/B behaviour set)
    source: str = ""  # path or hub id it was read from

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """Short content hash of the items (texts, options, labels), for cache keys."""
        h = hashlib.sha256()
        for it in self.items:
            shown = [it.id, it.context, it.question, list(it.options), it.label]
            h.update(json.dumps(shown + [it.fact] if it.fact else shown).encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Prompt:
    """One free-form prompt: a user turn with no options, for generation and free-text judging.

    Attributes:
        id: stable identifier, unique within its prompt set.
        text: the user turn; never empty.
        system: an optional system prompt (emergent-misalignment's json questions carry one).
        category: a grouping the upstream file gives (harm category, scenario type); may be empty.
        label: a class the upstream file gives (``safe``/``unsafe`` in XSTest, ``harmful``); may be
            empty.
        metadata: anything else the upstream file carries (AdvBench's ``target``, emergent
            misalignment's ``judge_prompts``, ...).
    """

    id: str
    text: str
    system: str = ""
    category: str = ""
    label: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"prompt id {self.id!r}: an id must be a non-empty string")
        if not isinstance(self.text, str) or not self.text.strip():
            raise DataError(f"prompt {self.id!r}: empty text; every prompt needs a user turn")


@dataclass(frozen=True)
class PromptSet:
    """A named list of free-form prompts, in file order."""

    name: str
    prompts: tuple[Prompt, ...]
    source: str = ""  # path or hub id it was read from

    def __len__(self) -> int:
        return len(self.prompts)

    def fingerprint(self) -> str:
        """Short content hash of the prompts (id, system, text, category, label), for cache keys."""
        h = hashlib.sha256()
        for p in self.prompts:
            h.update(json.dumps([p.id, p.system, p.text, p.category, p.label]).encode())
        return h.hexdigest()[:16]
