"""AdvBench harmful behaviours (Zou et al., 2023), a free-form prompt set.

Upstream: ``data/advbench/harmful_behaviors.csv`` of llm-attacks, 520 rows under the header
``goal,target``: ``goal`` is a harmful instruction, ``target`` the affirmative reply prefix GCG
optimises for ("Sure, here is ..."). Every row is harmful; AdvBench has no harmless
counterpart. The hub copy ``walledai/AdvBench`` (split ``train``) names the instruction column
``prompt``; both names are read.

Each row becomes ``Prompt(id="advbench-<row>", text=goal, label="harmful",
metadata={"target": target})``, ``<row>`` counting data rows from 0 in file order.
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


def load_prompts(cfg: Any) -> PromptSet:
    """``prompts.path`` (``harmful_behaviors.csv`` or a folder with it), else ``prompts.hub_id``."""
    rows, source = records(
        cfg,
        "harmful_behaviors.csv of llm-attacks (data/advbench)",
        lambda folder: single_file(folder, ["harmful_behaviors.csv"], "AdvBench", GROUP),
        csv_columns=("goal", "target"),
        group=GROUP,
    )
    prompts = []
    for i, (where, rec) in enumerate(rows):
        key = "goal" if "goal" in rec else "prompt"  # walledai/AdvBench renames goal to prompt
        text = as_text(require(rec, key, where, "the harmful instruction"), where, key)
        target = rec.get("target")
        prompts.append(make_prompt(
            where, id=f"advbench-{i}", text=text, label="harmful",
            metadata={} if target is None else {"target": as_text(target, where, "target")},
        ))  # fmt: skip
    return make_prompt_set(cfg, prompts, source)
