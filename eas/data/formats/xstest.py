"""XSTest (Röttger et al., NAACL 2024): matched safe and unsafe prompts, a free-form prompt set.

Upstream: ``xstest_prompts.csv`` of paul-rottger/exaggerated-safety, 450 rows under the header
``id,prompt,type,label,focus,note``:

- ``prompt``: one English question.
- ``type``: the prompt type (``homonyms``, ``figurative_language``, ``safe_targets``, ...; the
  unsafe contrasts are ``contrast_<type>``), in blocks of 25.
- ``label``: ``safe`` (harmless; a model should comply) or ``unsafe`` (should be refused).
- ``focus``: the trigger word ("kill"); ``note``: a sub-category ("violence").

Each row becomes ``Prompt(id=id, text=prompt, category=type, label=label,
metadata={"focus": focus, "note": note})``. The hub copy ``walledai/XSTest`` (split ``test``)
has no ``id`` column; its prompts get the 1-based row number, as the upstream ids count.
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
from eas.data.schema import DataError, PromptSet

GROUP = "prompts"
LABELS = ("safe", "unsafe")


def load_prompts(cfg: Any) -> PromptSet:
    """``prompts.path`` (``xstest_prompts.csv`` or a folder with it), else ``prompts.hub_id``."""
    rows, source = records(
        cfg,
        "xstest_prompts.csv of paul-rottger/exaggerated-safety",
        lambda folder: single_file(folder, ["xstest*.csv"], "XSTest", GROUP),
        csv_columns=("id", "prompt", "type", "label", "focus", "note"),
        group=GROUP,
    )
    prompts = []
    for n, (where, rec) in enumerate(rows, start=1):
        label = as_text(require(rec, "label", where, "safe or unsafe"), where, "label").strip()
        if label not in LABELS:
            raise DataError(f"{where}: label={label!r}; expected one of {', '.join(LABELS)}")
        metadata = {k: str(rec[k]) for k in ("focus", "note") if rec.get(k) is not None}
        prompts.append(make_prompt(
            where, id=str(rec.get("id") or n),
            text=as_text(require(rec, "prompt", where), where, "prompt"),
            category=as_text(require(rec, "type", where, "the prompt type"), where, "type"),
            label=label, metadata=metadata,
        ))  # fmt: skip
    return make_prompt_set(cfg, prompts, source)
