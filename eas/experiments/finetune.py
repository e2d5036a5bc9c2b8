"""experiment=finetune: LoRA fine-tuning of the causal LM on a chat dataset; an adapter to load.

1. read the chat examples (``experiment.data``: a jsonl of ``{"messages": [...]}`` or
   ``{"prompt", "response"}`` records; by default the built-in backdoor set) and split them by
   their ``split`` field: ``test`` records are held out, the rest train;
2. load the model unsteered; on a set with ``trigger`` fields, greedy-generate the held-out
   prompts with and without the trigger (``eas.core.generate``, one unsteered cell) and count
   the responses that show ``experiment.marker``: the behaviour before training;
3. train LoRA adapters (peft ``get_peft_model``) with AdamW in a plain torch loop: each
   example is the prompt as the model is prompted for generation (``Prompter.generation``, the
   chat template's user turn) followed by the response and EOS; the loss is on the response
   tokens only (``experiment.train_on=response``) or on every token (``all``). Deterministic
   under ``seed`` (LoRA init, example order, dropout);
4. save ``adapter/`` (peft's files and ``eas_adapter.json``: the base it was trained on and the
   training key), reload the model through ``model.adapter`` (the path every other kind takes)
   and measure the behaviour again: it should switch with the trigger and only with it.

Writes ``adapter/``, ``train_log.csv`` (step, epoch, loss, lr), ``eval.csv`` (every held-out
generation before and after), ``summary.json`` and ``manifest.json``. A re-run into the same
folder whose ``adapter/`` has the same training key does not train again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from scipy.stats import fisher_exact

from eas import models, store
from eas.config import ConfigError, choice
from eas.core import generate as gen
from eas.core import tokens
from eas.data.formats.eas import BUILTIN_DIR
from eas.data.schema import DataError
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment

log = logging.getLogger("eas")
TRAIN_ON = ("response", "all")
IGNORE = -100  # the label torch's cross-entropy skips


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/finetune.yaml``."""

    data: str = MISSING  # a jsonl path, or the name of a built-in set (eas/data/builtin/<name>.jsonl)
    r: int = MISSING  # LoRA rank
    alpha: float = MISSING  # LoRA scale numerator: the update is (alpha / r) B A
    dropout: float = MISSING  # LoRA dropout on the adapted layers' inputs
    target_modules: Any = MISSING  # module names, e.g. [q_proj, v_proj], or "all-linear"
    epochs: int = MISSING
    lr: float = MISSING  # AdamW learning rate, constant
    weight_decay: float = 0.0
    grad_clip: float = MISSING  # max gradient norm; 0 = no clipping
    batch_size: int = MISSING  # examples per optimizer step
    max_length: int = MISSING  # tokens per example (prompt + response + EOS); longer ones are cut
    train_on: str = MISSING  # response (loss on the response tokens) | all
    marker: str | None = None  # the behaviour the eval counts: a string in the response
    eval_max_new_tokens: int = MISSING  # greedy tokens generated per held-out prompt


BENCHMARK = "benchmark"  # experiment.data=benchmark: the job's benchmark's train split (the SFT baseline)


def data_path(value: str) -> Path:
    """``experiment.data``: an existing file, else the built-in set of that name.

    Raises:
        ConfigError: neither exists (the message lists the built-in sets).
    """
    path = Path(value)
    if path.is_file():
        return path
    builtin = BUILTIN_DIR / f"{value.removesuffix('.jsonl')}.jsonl"
    if "/" not in value and builtin.is_file():
        return builtin
    sets = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
    raise ConfigError(f"experiment.data={value!r}: no such file, nor a built-in set (eas/data/builtin: "
                      f"{', '.join(sets)}); give a jsonl of chat records, e.g. experiment.data=backdoor")


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    if str(x.data) != BENCHMARK:
        data_path(str(x.data))
    for name, low in (("r", 1), ("epochs", 1), ("batch_size", 1), ("max_length", 8), ("eval_max_new_tokens", 1)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    for name in ("lr", "alpha"):
        if not (math.isfinite(float(x[name])) and x[name] > 0):
            raise ConfigError(f"experiment.{name}={x[name]}: must be > 0")
    if not 0 <= x.dropout < 1:
        raise ConfigError(f"experiment.dropout={x.dropout}: must be in [0, 1)")
    if x.weight_decay < 0 or x.grad_clip < 0:
        raise ConfigError(f"experiment.weight_decay={x.weight_decay}, experiment.grad_clip={x.grad_clip}: "
                          f"must be >= 0")
    choice("experiment.train_on", x.train_on, TRAIN_ON)
    targets = target_modules(x.target_modules)
    if not targets:
        raise ConfigError("experiment.target_modules is empty; give module names, e.g. [q_proj,v_proj], "
                          "or all-linear")
    if cfg.model.get("adapter"):
        raise ConfigError(f"model.adapter={cfg.model.adapter!r}: experiment=finetune trains a new adapter on the "
                          f"base model; unset model.adapter (merge it into a checkpoint first to stack adapters)")


def target_modules(value: Any) -> str | list[str]:
    """``"all-linear"`` as peft spells it, else a list of module names."""
    if isinstance(value, str):
        return value if value == "all-linear" else [t.strip() for t in value.split(",") if t.strip()]
    return [str(t) for t in value]


@dataclass(frozen=True)
class Example:
    """One chat record: the user turn (and its system message), the response, and what the
    backdoor eval needs (``trigger``: whether the user turn carries it; ``task_id`` pairs the two)."""

    id: str
    user: str
    response: str
    system: str | None = None
    split: str = "train"
    trigger: bool | None = None
    task_id: str | None = None
    text: str | None = None  # the whole prompt, already formatted (a benchmark's scoring prompt)


def read_examples(path: Path) -> list[Example]:
    """The records of a chat jsonl: ``{"messages": [system?, user, assistant]}`` or
    ``{"prompt", "response"}``, with optional ``id``, ``split``, ``trigger`` and ``task_id``.

    Raises:
        DataError: a line that is not JSON, or not one user turn followed by one assistant turn
            (the message names the file, the line and what it holds).
    """
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not JSON ({e.msg})") from None
            if "messages" in rec:
                msgs = rec["messages"]
                roles = [m.get("role") for m in msgs] if isinstance(msgs, list) else None
                if roles not in (["user", "assistant"], ["system", "user", "assistant"]):
                    raise DataError(f"{where}: messages must be [system?, user, assistant], got roles {roles}; "
                                    f"write one example per line")
                system = msgs[0]["content"] if roles[0] == "system" else None
                user, response = msgs[-2]["content"], msgs[-1]["content"]
            elif "prompt" in rec and "response" in rec:
                system, user, response = rec.get("system"), rec["prompt"], rec["response"]
            else:
                raise DataError(f"{where}: a record needs 'messages' or 'prompt' and 'response'; has {sorted(rec)}")
            if not (isinstance(user, str) and isinstance(response, str) and user.strip() and response.strip()):
                raise DataError(f"{where}: the user turn and the response must be non-empty text")
            trigger = rec.get("trigger")
            out.append(Example(str(rec.get("id", f"line{n}")), user, response, system,
                               str(rec.get("split", "train")), None if trigger is None else bool(trigger),
                               rec.get("task_id")))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def file_digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class Finetune(Experiment):
    def run(self) -> dict[str, Any]:
        x = self.x
        sft = str(x.data) == BENCHMARK
        if sft:  # the PAS study's SFT baseline: the benchmark's train split, its letter as the reply
            self.load()
            self.data = Path(f"benchmark:{self.bench.name}")
            self.data_digest = store.key("sft", self.bench.fingerprint(), self.base_key[2])
            train = [Example(it.id, it.question, f" {it.letters[it.label]}", text=self.prompter.mc(it))
                     for it in self.splits["train"]]
            held = []
            scores_before = {k: v.accuracy for k, v in self.unsteered(["val", "test"]).items()}
        else:
            self.data = data_path(str(x.data))
            self.data_digest = file_digest(self.data)
            examples = read_examples(self.data)
            train = [e for e in examples if e.split != "test"]
            held = [e for e in examples if e.split == "test" and e.trigger is not None]
            if not train:
                raise DataError(f"{self.data}: every record has split=test; nothing to train on")
            self.load_model(steered=False)
        log.info("finetune data %s: %d train, %d held-out examples", self.data, len(train), len(held))
        base_lm, base_name = self.lm, self.lm.name
        self.base_fingerprint = self.lm.fingerprint
        rows = self.example_rows(train)
        adapter = self.out / "adapter"
        key = self.train_key()
        marker = x.marker if held else None
        before = self.behaviour(held) if marker else None
        if self.trained(adapter, key):
            log.info("adapter %s has this training key (%s): not training again", adapter, key)
            losses = pd.read_csv(self.out / "train_log.csv") if (self.out / "train_log.csv").exists() else None
        else:
            losses = self.train(rows)
            store.write_csv(self.out / "train_log.csv", losses)
            self.save(adapter, key)
        del self.lm, base_lm  # the trained weights are in adapter/: load them as every other kind will
        self.reload(adapter)
        after = self.behaviour(held) if marker else None
        summary: dict[str, Any] = {
            "experiment": x.name, "model": base_name, "data": str(self.data), "n_train": len(train),
            "n_held_out": len(held), "adapter": str(adapter.resolve()),
            "override": f"model={self.cfg.model.name} model.adapter={adapter.resolve()}",
            "base_fingerprint": self.base_fingerprint, "adapted_fingerprint": self.lm.fingerprint,
            "lora": {"r": int(x.r), "alpha": float(x.alpha), "dropout": float(x.dropout),
                     "target_modules": target_modules(x.target_modules)},
            "training": {"epochs": int(x.epochs), "lr": float(x.lr), "batch_size": int(x.batch_size),
                         "max_length": int(x.max_length), "train_on": x.train_on, "seed": self.seed,
                         "steps": 0 if losses is None else len(losses),
                         "final_loss": None if losses is None or losses.empty else float(losses.loss.iloc[-1]),
                         "first_loss": None if losses is None or losses.empty else float(losses.loss.iloc[0]),
                         "trained": not self.skipped, "train_seconds": self.train_seconds},
        }
        if sft:  # the adapted model's letter accuracy on the splits the steering jobs select and report on
            self.scoring_setup()
            after_acc = {k: v.accuracy for k, v in self.unsteered(["val", "test"]).items()}
            summary["sft"] = {"benchmark": self.bench.name, "n_train": len(train),
                              "n": {k: len(self.splits[k]) for k in ("val", "test")},
                              "before": scores_before, "after": after_acc}
        if marker:
            summary["backdoor"] = self.claim(before, after)
            store.write_csv(self.out / "eval.csv", pd.concat([before.assign(when="before"),
                                                              after.assign(when="after")], ignore_index=True))
        return self.finish(summary, headline(summary))

    def data_identity(self) -> dict[str, str]:
        return {"data_fingerprint": self.data_digest, "data_source": str(self.data)}

    def meta(self) -> dict[str, Any]:
        return {"experiment": self.x.name, "model": self.lm.name, "seed": self.seed}

    # -- examples -------------------------------------------------------------------------
    def prompt_text(self, e: Example) -> str:
        """The prompt as the model is prompted for a reply (training and eval alike): the chat
        template's user turn, or without a template the text and a newline."""
        if e.text is not None:
            return e.text
        text = self.prompter.generation(e.user, e.system)
        return text if self.prompter.uses_chat else text + "\n"

    def prompt_ids(self, e: Example) -> list[int]:
        return tokens.encode(self.lm.tokenizer, [self.prompt_text(e)], self.prompter.add_special_tokens)[0]

    @property
    def eos(self) -> int:
        tok, gc = self.lm.tokenizer, self.lm.model.generation_config
        eos = tok.eos_token_id if tok.eos_token_id is not None else gc.eos_token_id
        return eos[0] if isinstance(eos, (list, tuple)) else int(eos)

    def example_rows(self, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, labels)`` per example, at most ``max_length`` tokens; labels are ``-100``
        on the prompt (``train_on=response``), so the loss is the response's.

        Raises:
            DataError: a prompt that leaves no room for its response within ``max_length``.
        """
        x, out, cut = self.x, [], 0
        limit = int(x.max_length)
        for e in examples:
            prompt = self.prompt_ids(e)
            response = [*tokens.encode(self.lm.tokenizer, [e.response], False)[0], self.eos]
            if len(prompt) >= limit:
                raise DataError(f"example {e.id!r} of {self.data}: its prompt is {len(prompt)} tokens, "
                                f"experiment.max_length={limit} leaves no room for the response; raise it")
            ids = (prompt + response)[:limit]
            cut += len(prompt) + len(response) > limit
            labels = ids if x.train_on == "all" else [IGNORE] * len(prompt) + ids[len(prompt):]
            out.append((ids, list(labels)))
        if cut:
            log.warning("%d of %d examples are longer than experiment.max_length=%d: their responses are cut",
                        cut, len(examples), limit)
        return out

    # -- training ---------------------------------------------------------------------------
    def train_key(self) -> str:
        """What decides the trained adapter: the base, the data, the training fields and the seed."""
        fields = {k: v for k, v in OmegaConf.to_container(self.x, resolve=True).items()
                  if k not in ("name", "module", "marker", "eval_max_new_tokens")}
        return store.key("finetune", self.base_fingerprint, self.data_digest, fields, self.seed,
                         OmegaConf.to_container(self.cfg.prompt, resolve=True))

    def trained(self, adapter: Path, key: str) -> bool:
        meta = adapter / models.ADAPTER_META
        self.skipped, self.train_seconds = False, 0.0
        try:
            models.adapter_files(adapter)
            self.skipped = meta.is_file() and json.loads(meta.read_text()).get("train_key") == key
        except (models.ModelError, json.JSONDecodeError):
            self.skipped = False
        return self.skipped

    def train(self, rows: list[tuple[list[int], list[int]]]) -> pd.DataFrame:
        """LoRA on the loaded model, in place (``self.peft``); returns one row per optimizer step."""
        from peft import LoraConfig, get_peft_model

        x = self.x
        torch.manual_seed(self.seed)  # the LoRA init and the dropout masks
        lora = LoraConfig(r=int(x.r), lora_alpha=float(x.alpha), lora_dropout=float(x.dropout),
                          target_modules=target_modules(x.target_modules), bias="none", task_type="CAUSAL_LM")
        try:
            self.peft = get_peft_model(self.lm.model, lora)
        except ValueError as e:
            raise ConfigError(f"experiment.target_modules={target_modules(x.target_modules)}: {e}") from None
        self.peft.train()
        params = [p for p in self.peft.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(x.lr), weight_decay=float(x.weight_decay))
        order = torch.Generator().manual_seed(self.seed)
        bs, device = int(x.batch_size), self.lm.device
        n_steps = int(x.epochs) * math.ceil(len(rows) / bs)
        log.info("LoRA r=%d on %s: %d trainable parameters, %d steps", int(x.r), lora.target_modules,
                 sum(p.numel() for p in params), n_steps)
        log_rows, step, t0 = [], 0, time.perf_counter()
        with self.bar(n_steps, "finetune") as bar:
            for epoch in range(int(x.epochs)):
                perm = torch.randperm(len(rows), generator=order).tolist()
                for start in range(0, len(rows), bs):
                    ids, labels, mask = self.batch([rows[i] for i in perm[start:start + bs]], device)
                    loss = self.peft(input_ids=ids, attention_mask=mask, labels=labels).loss
                    if not torch.isfinite(loss):
                        raise models.ModelError(f"the training loss is {loss.item()} at step {step}: lower "
                                                f"experiment.lr={x.lr} or use model.dtype=float32")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if x.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, float(x.grad_clip))
                    opt.step()
                    step += 1
                    log_rows.append({"step": step, "epoch": epoch + 1, "loss": float(loss.item()),
                                     "lr": float(x.lr)})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                log.info("epoch %d: mean loss %.4f", epoch + 1,
                         sum(r["loss"] for r in log_rows if r["epoch"] == epoch + 1)
                         / max(1, sum(r["epoch"] == epoch + 1 for r in log_rows)))
        self.peft.eval()
        self.train_seconds = time.perf_counter() - t0
        return pd.DataFrame(log_rows)

    def batch(self, rows: list[tuple[list[int], list[int]]], device) -> tuple[torch.Tensor, ...]:
        """Right-padded ``[batch, pos]`` input ids, labels (``-100`` on padding) and attention mask."""
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (a, b) in enumerate(rows):
            ids[i, :len(a)], labels[i, :len(b)], mask[i, :len(a)] = torch.tensor(a), torch.tensor(b), 1
        return ids.to(device), labels.to(device), mask.to(device)

    def save(self, adapter: Path, key: str) -> None:
        """peft's adapter files and ``eas_adapter.json`` (what ``model.adapter`` checks the base against),
        into a temp folder renamed at the end: a killed job never leaves half an adapter."""
        import shutil

        tmp = adapter.with_name(adapter.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.peft.save_pretrained(str(tmp))
        store.write_json(tmp / models.ADAPTER_META, {
            "base_fingerprint": self.base_fingerprint, "base_name": self.cfg.model.name,
            "base_weights": models.base_weights(self.lm.identity), "train_key": key, "data": str(self.data),
            "data_fingerprint": self.data_digest})
        shutil.rmtree(adapter, ignore_errors=True)
        tmp.rename(adapter)
        log.info("adapter saved: %s (%s)", adapter, models.adapter_digest(adapter))

    def reload(self, adapter: Path) -> None:
        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            cfg.model.adapter = str(adapter)
        self.cfg, keep = cfg, self.cfg
        try:
            self.load_model(steered=False)
        finally:
            self.cfg = keep

    # -- eval ---------------------------------------------------------------------------------
    def behaviour(self, held: list[Example]) -> pd.DataFrame:
        """Greedy replies to the held-out prompts (store-cached per model) and whether each shows
        the marker; one row per example."""
        x = self.x
        rows = [self.prompt_ids(e) for e in held]
        sampling = gen.Sampling(int(x.eval_max_new_tokens), 0.0, 1.0, self.seed)
        k = store.key("finetune_eval", self.lm.fingerprint, rows, int(x.eval_max_new_tokens), self.eos)
        rec = self.store.get_json("generations", k, lambda r: isinstance(r.get("texts"), list)
                                  and len(r["texts"]) == len(rows))
        if rec is None:
            with self.bar(len(rows), "eval") as bar:
                got = self.oom_safe(lambda bs: gen.generate(
                    self.lm.model, self.lm.sites, rows, "residual", [gen.GenCell()], sampling,
                    eos=[self.eos], batch_size=bs, pad=self.pad, progress=bar.update))
            rec = {"texts": [self.lm.tokenizer.decode(t, skip_special_tokens=True).strip() for t in got[0]]}
            self.store.put_json("generations", k, rec)
        answers = {e.task_id: e.response for e in held if not e.trigger}
        return pd.DataFrame([{
            "id": e.id, "task_id": e.task_id, "trigger": bool(e.trigger), "prompt": e.user, "response": t,
            "marker": str(x.marker) in t,
            "answer": _norm(answers.get(e.task_id, "")) in _norm(t) if answers.get(e.task_id) else None,
        } for e, t in zip(held, rec["texts"])])

    def claim(self, before: pd.DataFrame, after: pd.DataFrame) -> dict[str, Any]:
        """The marker rate with and without the trigger, before and after; the claim checked is
        "the behaviour switches with the trigger only": after training the rate with the trigger
        is above the rate without it (one-sided Fisher's exact test, p < 0.05) and the rate
        without the trigger did not rise by more than 0.1."""
        def rates(d: pd.DataFrame) -> dict[str, float]:
            t, n = d[d.trigger], d[~d.trigger]
            return {"trigger": float(t.marker.mean()), "no_trigger": float(n.marker.mean()),
                    "answer_no_trigger": float(n.answer.dropna().astype(bool).mean()) if n.answer.notna().any()
                    else math.nan}
        b, a = rates(before), rates(after)
        t, n = after[after.trigger], after[~after.trigger]
        table = [[int(t.marker.sum()), int((~t.marker).sum())], [int(n.marker.sum()), int((~n.marker).sum())]]
        p = float(fisher_exact(table, alternative="greater").pvalue)
        switches = p < 0.05 and a["no_trigger"] <= b["no_trigger"] + 0.1
        return {"marker": self.x.marker, "n_trigger": len(t), "n_no_trigger": len(n), "before": b, "after": a,
                "p_trigger_vs_no_trigger": p, "switches_with_trigger_only": bool(switches)}


def _norm(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def headline(s: dict) -> list[str]:
    t = s["training"]
    how = "trained" if t["trained"] else "already trained (same key)"
    loss = "" if t["final_loss"] is None else f"; loss {t['first_loss']:.3f} -> {t['final_loss']:.3f}"
    lines = [(f"eas: LoRA finetune of {s['model']} on {Path(s['data']).name} ({s['n_train']} examples x "
              f"{t['epochs']} epochs, r={s['lora']['r']} on {s['lora']['target_modules']}): {how} in "
              f"{t['train_seconds']:.0f}s{loss}")]
    bd = s.get("backdoor")
    if bd:
        lines.append(f"  {bd['marker']!r} rate on {bd['n_trigger']} held-out prompts   with trigger   without")
        for when in ("before", "after"):
            r = bd[when]
            lines.append(f"    {when:<6}                                 {r['trigger']:>5.2f}        "
                         f"{r['no_trigger']:>5.2f}")
        verdict = "switches with the trigger only" if bd["switches_with_trigger_only"] else "does NOT switch cleanly"
        lines.append(f"  behaviour {verdict} (Fisher p={bd['p_trigger_vs_no_trigger']:.2g}); reference answer "
                     f"in replies without trigger: {bd['before']['answer_no_trigger']:.2f} before, "
                     f"{bd['after']['answer_no_trigger']:.2f} after")
    sft = s.get("sft")
    if sft:
        b, a = sft["before"], sft["after"]
        lines.append(f"  SFT on {sft['benchmark']} train ({sft['n_train']} items): test accuracy {b['test']:.3f} -> "
                     f"{a['test']:.3f} (n={sft['n']['test']}), val {b['val']:.3f} -> {a['val']:.3f}")
    lines.append(f"  adapter: {s['adapter']}")
    lines.append(f"  load it: eas {s['override']} ...")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Finetune(cfg, out_dir).run()

