"""TruthfulQA multiple choice: upstream ``mc_task.json`` or the hub ``multiple_choice`` layout.

Upstream (``data/mc_task.json``): a JSON list of ``{question, mc0_targets, mc1_targets,
mc2_targets}`` with targets ``{answer: 1|0}``. Hub (``truthfulqa/truthful_qa``, config
``multiple_choice``; also a local parquet/json/jsonl export of it): targets
``{choices: [...], labels: [...]}``.

``options.subset`` (default ``mc1``):

- ``mc1``: the single true answer and all false ones (``mc0``: the binary pair).
- ``mc2``: upstream has several true answers and scores the normalised probability mass
  on them; a single-label item cannot express that, so eas keeps the FIRST true answer
  in file order plus all false answers (one true answer per item, deterministic,
  independent of the seed). All true answers are kept in ``metadata["true_answers"]``
  for an mc2-style score. This makes mc2 an mc1-like task with a different true answer
  (often a paraphrase of the best answer) and usually more false options.

Upstream lists the true answer first, so the options of every item are shuffled by
``(seed, item id)``: deterministic, and different across seeds. With
``benchmark.item_rules=pas_reference`` they stay in file order here and ``eas.data`` gives
them the reference's permutation (the same for every item with as many options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eas.data.readers import (
    as_list,
    as_text,
    item_rules,
    make_benchmark,
    make_item,
    option,
    records,
    require,
    shuffle_options,
    single_file,
)
from eas.data.schema import Benchmark, DataError, MCItem

SUBSETS = ("mc0", "mc1", "mc2")


def _targets(rec: dict[str, Any], key: str, where: str) -> list[tuple[str, int]]:
    """(answer, 1/0) pairs in file order from ``{answer: 1/0}`` or ``{choices, labels}``."""
    raw = require(rec, key, where, "answer -> 1/0, or {choices: [...], labels: [...]}")
    if isinstance(raw, dict) and "choices" in raw and "labels" in raw:
        choices, labels = as_list(raw["choices"]), as_list(raw["labels"])
        if len(choices) != len(labels):
            raise DataError(f"{where}: {key} has {len(choices)} choices but {len(labels)} labels")
        pairs = list(zip(choices, labels))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise DataError(f"{where}: {key} must be an object, got {type(raw).__name__}")
    out = []
    for answer, flag in pairs:
        # Checked, not int()-ed: int("x") is a traceback, int(0.7) a silent 0.
        if not isinstance(answer, str) or not isinstance(flag, int) or flag not in (0, 1):
            raise DataError(
                f"{where}: {key} entry {answer!r}: {flag!r} ({type(flag).__name__}); "
                f"expected answer text -> 1 (true) or 0 (false)"
            )
        out.append((answer, int(flag)))
    return out


def parse(
    rec: dict[str, Any], where: str, item_id: str, subset: str, seed: int, shuffle: bool = True
) -> MCItem:
    """One TruthfulQA question as an MCItem for ``subset`` (see the module docstring)."""
    question = as_text(require(rec, "question", where), where, "question")
    item = f"{where} (item {item_id}, question {question[:60]!r})"
    pairs = _targets(rec, f"{subset}_targets", item)
    true = [a for a, f in pairs if f == 1]
    false = [a for a, f in pairs if f == 0]
    if not true or not false:
        raise DataError(
            f"{where}: {subset}_targets has {len(true)} true and {len(false)} false answers; "
            f"expected at least one of each"
        )
    if subset in ("mc0", "mc1") and len(true) != 1:
        raise DataError(
            f"{where}: {subset}_targets has {len(true)} true answers; expected exactly 1"
        )
    options, label = [true[0], *false], 0
    if shuffle:
        options, label = shuffle_options(options, label, seed, item_id)
    metadata = {"subset": subset, "true_answers": true, "n_true": len(true)}
    return make_item(
        where, id=item_id, question=question, options=tuple(options), label=label, metadata=metadata
    )


def _in_folder(folder: Path) -> Path:
    return single_file(folder, ["mc_task.json", "*.parquet", "*.jsonl"], "TruthfulQA")


def load(cfg: Any, seed: int = 0) -> Benchmark:
    """``benchmark.path`` (a file, or a folder with one) or the hub copy; see the module docstring."""
    subset = str(option(cfg, "subset", "mc1"))
    if subset not in SUBSETS:
        raise DataError(f"benchmark.options.subset={subset!r}; choose one of {', '.join(SUBSETS)}")
    rows, source = records(cfg, "TruthfulQA data/mc_task.json", _in_folder)
    shuffle = item_rules(cfg) == "eas"
    items = [
        parse(rec, where, f"truthfulqa-{subset}-{i:04d}", subset, seed, shuffle)
        for i, (where, rec) in enumerate(rows)
    ]
    return make_benchmark(cfg, items, source)
