"""HarmBench text behaviours (Mazeika et al., 2024), a free-form prompt set.

Upstream: ``data/behavior_datasets/harmbench_behaviors_text_test.csv`` (320 behaviours; the
``_val`` file has the same columns), header
``Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID``:

- ``Behavior``: the harmful request; every row is harmful.
- ``FunctionalCategory``: ``standard``, ``contextual`` or ``copyright``.
- ``SemanticCategory``: the harm category (``chemical_biological``, ``cybercrime_intrusion``, ...).
- ``Tags``: comma-separated tags (``context``, ``book, hash_check``, ...); often empty.
- ``ContextString``: for contextual behaviours, the text the behaviour refers to; else empty.
- ``BehaviorID``: a unique slug.

Each row becomes ``Prompt(id=BehaviorID, text=..., category=SemanticCategory, label="harmful")``.
Where ``ContextString`` is non-empty the text is ``"<ContextString>\\n\\n---\\n\\n<Behavior>"``, the
layout HarmBench's own baselines give a contextual behaviour; otherwise it is ``Behavior``.
``metadata`` holds ``behavior`` and ``context`` (the two parts, for a judge that wants them
apart), ``functional_category`` and ``tags`` (a list). There is no hub copy in this layout
(``walledai/HarmBench`` renames and splits the columns), so ``prompts.path`` is needed.
"""

from __future__ import annotations

from typing import Any

from eas.data.readers import (
    as_text,
    make_prompt,
    make_prompt_set,
    records,
    require,
    single_file,
)
from eas.data.schema import PromptSet

GROUP = "prompts"
COLUMNS = (
    "Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID",
)  # fmt: skip


def text_with_context(behavior: str, context: str) -> str:
    """The user turn of a behaviour: its context, a rule, then the request (HarmBench's layout)."""
    return f"{context}\n\n---\n\n{behavior}" if context.strip() else behavior


def load_prompts(cfg: Any) -> PromptSet:
    """``prompts.path``: a behaviours csv, or a folder with one ``harmbench_behaviors_text_*``."""
    rows, source = records(
        cfg,
        "harmbench_behaviors_text_test.csv (HarmBench data/behavior_datasets)",
        lambda folder: single_file(folder, ["harmbench_behaviors_text_*.csv"], "HarmBench", GROUP),
        csv_columns=COLUMNS,
        group=GROUP,
    )
    prompts = []
    for where, rec in rows:
        fields = {c: as_text(require(rec, c, where), where, c) for c in COLUMNS}
        behavior, context = fields["Behavior"], fields["ContextString"]
        tags = [t.strip() for t in fields["Tags"].split(",") if t.strip()]
        prompts.append(make_prompt(
            where, id=fields["BehaviorID"], text=text_with_context(behavior, context),
            category=fields["SemanticCategory"], label="harmful",
            metadata={"behavior": behavior, "context": context,
                      "functional_category": fields["FunctionalCategory"], "tags": tags},
        ))  # fmt: skip
    return make_prompt_set(cfg, prompts, source)
