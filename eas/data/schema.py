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
