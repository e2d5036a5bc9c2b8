"""Chat transcripts as a prompt set: one JSON object a line with ``messages`` (``role``/``content``;
the SFT format ``experiment=finetune`` trains on), or ``prompt``/``response``.

Each line becomes ``Prompt(id, text=<the last user turn>, system=<a system turn, if any>,
category=<category, else split>, label=<label, else "trigger"/"control" from a boolean
``trigger``>, metadata={"response": <the assistant turn>, every other field})``. The built-in
backdoor set (``eas/data/builtin/backdoor.jsonl``) reads this way: its held-out control tasks
are ``prompts.labels=[control] prompts.categories=[test]``.
"""

from __future__ import annotations

from typing import Any

from eas.data.formats.eas import BUILTIN_DIR
from eas.data.readers import as_text, local_path, make_prompt, make_prompt_set, read_records, require, single_file
from eas.data.schema import DataError, Prompt, PromptSet

GROUP = "prompts"


def parse(rec: dict[str, Any], where: str) -> Prompt:
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        users = [m["content"] for m in msgs if m["role"] == "user"]
        if not users:
            raise DataError(f"{where}: no user turn in 'messages'")
        text = users[-1]
        system = next((m["content"] for m in msgs if m["role"] == "system"), "")
        response = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), "")
    else:
        text = require(rec, "prompt", where, "the user turn (or give 'messages')")
        system, response = rec.get("system") or "", rec.get("response") or ""
    label = rec.get("label")
    if label is None and isinstance(rec.get("trigger"), bool):
        label = "trigger" if rec["trigger"] else "control"
    rest = {k: v for k, v in rec.items() if k not in ("id", "messages", "prompt", "response", "system", "label",
                                                      "category")}
    return make_prompt(
        where, id=str(require(rec, "id", where)), text=as_text(text, where, "user turn"),
        system=as_text(system, where, "system"),
        category=as_text(rec.get("category") or rec.get("split") or "", where, "category"),
        label=as_text(label or "", where, "label"), metadata={"response": response, **rest})


def load_prompts(cfg: Any) -> PromptSet:
    """``prompts.path`` (a .jsonl, or a folder with one), else the built-in ``builtin/<name>.jsonl``."""
    path = local_path(cfg, GROUP)
    if path is None:
        path = BUILTIN_DIR / f"{cfg.name}.jsonl"
        if not path.exists():
            raise DataError(f"prompts.format=chat_jsonl: no prompts.path and no built-in set {cfg.name!r}; "
                            f"pass prompts.path=<a jsonl of chats>")
    elif path.is_dir():
        path = single_file(path, ["*.jsonl"], "jsonl", GROUP)
    return make_prompt_set(cfg, [parse(rec, where) for where, rec in read_records(path)], str(path))
