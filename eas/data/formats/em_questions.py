"""Emergent-misalignment evaluation questions (Betley et al., 2025), a free-form prompt set.

Upstream: ``evaluation/first_plot_questions.yaml`` of the emergent-misalignment repository (24
questions) and its sibling ``preregistered_evals.yaml`` (same schema, more fields). A YAML list
whose entries have:

- ``id``: the question's name; ``paraphrases``: a list of prompt texts asking it;
- ``system``: an optional system prompt (the ``*_json`` questions ask for JSON answers);
- ``judge_prompts``: judge name (``aligned``, ``coherent``) -> a template with ``{question}`` and
  ``{answer}``;
- ``type``, ``samples_per_paraphrase``, ``judge`` and, in other files, further fields.

The file shares values through YAML anchors and aliases (``&judge_prompts`` ... ``*judge_prompts``),
so it is read with a YAML parser (``yaml.safe_load``), which resolves them.

Each paraphrase becomes a ``Prompt``: id ``<id>`` for the first, ``<id>-<k>`` for the k-th
after it (k from 1); ``system`` from the entry; ``metadata`` holds ``question_id``,
``paraphrase`` (k), ``judge_prompts`` and every other field of the entry. There is no hub copy,
so ``prompts.path`` (the yaml, or a folder with ``options.file``) is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eas.data.readers import (
    as_text,
    local_path,
    make_prompt,
    make_prompt_set,
    option,
    read_text,
    require,
    single_file,
)
from eas.data.schema import DataError, PromptSet

GROUP = "prompts"
OWN = ("id", "paraphrases", "system")  # the fields that become the Prompt itself


def read_yaml_list(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The entries of a YAML list of mappings, each with where it is (``<file> entry 3``)."""
    import yaml

    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise DataError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a YAML list of questions, got {type(data).__name__}")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(f"{path} entry {i}: expected a mapping with id and paraphrases, "
                            f"got {type(entry).__name__}")
        out.append((f"{path} entry {i} (id {entry.get('id')!r})", entry))
    return out


def _file(cfg: Any) -> Path:
    path = local_path(cfg, GROUP)
    if path is None:
        raise DataError(
            f"prompt set {cfg.name!r} (prompts.format={cfg.format!r}): the emergent-misalignment "
            f"questions have no hub copy; pass prompts.path=<evaluation/first_plot_questions.yaml "
            f"or preregistered_evals.yaml>"
        )
    if path.is_dir():
        name = option(cfg, "file")
        if name is not None:
            path = path / str(name)
            if not path.is_file():
                raise DataError(
                    f"prompts.options.file={name!r}: no such file in prompts.path={cfg.path!r}"
                )
        else:
            path = single_file(path, ["*.yaml", "*.yml"], "question yaml", GROUP)
    return path


def load_prompts(cfg: Any) -> PromptSet:
    """``prompts.path``: a question yaml, or a folder with one (``options.file`` picks it)."""
    path = _file(cfg)
    prompts = []
    for where, entry in read_yaml_list(path):
        qid = str(require(entry, "id", where, "the question's name"))
        paraphrases = require(entry, "paraphrases", where, "a list of prompt texts")
        if isinstance(paraphrases, str):
            paraphrases = [paraphrases]
        if not isinstance(paraphrases, list) or not paraphrases:
            raise DataError(
                f"{where}: 'paraphrases' must be a non-empty list of strings, got {paraphrases!r}"
            )
        system = as_text(entry.get("system") or "", where, "system")
        rest = {k: v for k, v in entry.items() if k not in OWN}
        if isinstance(rest.get("judge_prompts"), dict):  # an alias shares one dict among entries
            rest["judge_prompts"] = dict(rest["judge_prompts"])
        for k, text in enumerate(paraphrases):
            prompts.append(make_prompt(
                f"{where} paraphrase {k}", id=qid if k == 0 else f"{qid}-{k}",
                text=as_text(text, f"{where} paraphrase {k}", "paraphrases"), system=system,
                metadata={"question_id": qid, "paraphrase": k, **rest},
            ))  # fmt: skip
    return make_prompt_set(cfg, prompts, str(path))
