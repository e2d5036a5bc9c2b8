"""experiment=traits: trait directions projected onto every token, across conditions and model variants.

1. the prompt set (``prompts``) and the traits: vectors of earlier runs (``experiment.traits``:
   a run dir or vector file each, checked for model, layer, site and width), or with none
   given the job's own method vector on its benchmark (named after the method). Each trait
   is projected as a unit direction at every layer of ``layer``;
2. conditions, crossed: ``experiment.conditions`` maps a factor (``prefill``, ``trigger``,
   ``system``) to its levels (``{level: text}``; an empty text is the level without it), and
   ``experiment.steering`` adds a factor ``steer`` (levels that add a trait at a layer while
   generating). A prefill starts the assistant's turn after the chat template's generation
   prompt; a trigger is put before the user's text; a system text joins the system prompt.
   ``experiment.split_by`` groups prompts by a prompt field (``label``, ``category`` or
   ``metadata.<key>``): harmful vs benign;
3. model variants (``experiment.variants``: name -> model field overrides, e.g. an adapter
   ``{adapter: <dir>}`` or a fine-tuned checkpoint ``{source: local, id: <dir>}``) run the same
   prompts after the base model (``base``); the traits come from the base;
4. every (variant, condition) runs in shards of ``experiment.shard_size`` prompts, each one
   store record written when done: prompt and prefill tokens in one forward stopped at the
   highest layer (``eas.core.monitor.project``) or, with ``max_new_tokens > 0``, during
   generation, in the prefill and decode passes that produce the tokens. ``experiment.part=i/N``
   computes every N-th shard only (a SLURM array); a job without it computes what is missing
   and merges everything into one table;
5. statistics per (layer, trait): the mean projection per (variant, condition, group) with its
   interval; every level of a factor against the factor's first level, every variant against
   the base (paired over prompts: paired t, Cohen's d_z) and every group against the first
   (independent: Welch's t, Cohen's d): the AUROC of telling the two apart with its bootstrap
   interval and the earliest token (relative to the start of the response, Holm-corrected over
   tokens) whose difference is significant. With two groups, detection: AUROC overall and per
   category, and the failure cases.

Writes ``scores.parquet`` (one row per variant x condition x prompt x layer x trait),
``tokens.parquet`` (per token, float16, with the token strings; ``experiment.per_token``),
``results.parquet``, ``comparisons.parquet``, ``detection.parquet``, ``failures.csv``,
``figures/``, ``summary.json`` and ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from eas import models, store
from eas.config import ConfigError, ModelConfig, PromptsConfig, choice
from eas.core import generate as gen
from eas.core import monitor as mon
from eas.core import stats, tokens
from eas.data import load_prompts
from eas.data.schema import DataError, Prompt
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment
from eas.methods import base as methods
from eas.resources import generation_batch_size

log = logging.getLogger("eas")
FACTORS = ("prefill", "trigger", "system")
SCORE_AT = ("last", "prompt", "response", "all")
BASE = "base"
FLOAT16_MAX = 65504.0


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/traits.yaml``."""

    preset: str = MISSING
    # the dict fields are null in the yaml (a dict of a struct config takes no new keys): set them whole,
    # experiment.variants={lora: {adapter: <dir>}}; null is empty
    traits: dict[str, Any] | None = None  # name -> run dir | vector file | {path, method} | {store: {layer: key}}
    conditions: dict[str, Any] | None = None  # factor (prefill|trigger|system) -> {level: text}
    steering: dict[str, Any] | None = None  # level -> {trait, layer, strength} (generation)
    split_by: str | None = None  # a prompt field: label | category | metadata.<key>
    positive: str | None = None  # the group detection calls positive (and others are compared to); None: the last
    variants: dict[str, Any] | None = None  # name -> model field overrides
    more_prompts: list[Any] | None = None  # prompt sets appended to ``prompts`` ({name, format, path, labels...})
    max_new_tokens: int = 0  # 0: prompt (and prefill) tokens only
    temperature: float = 0.0
    top_p: float = 1.0
    score_at: str = "last"  # a prompt's score: last (token read) | prompt | response | all (mean over those)
    window: int = 8  # prompt tokens before the response on the trajectories
    per_token: bool = True  # keep every token's projections (tokens.parquet); false at scale
    shard_size: int = 128
    part: str | None = None  # "i/N": this job computes shards i, i+N, ... (a SLURM array)
    alpha: float = 0.05
    n_bootstrap: int = 1000
    failures: int = 10  # failure cases written per side


def _params(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})


def parse_part(part: str | None) -> tuple[int, int] | None:
    if part is None:
        return None
    try:
        i, n = (int(v) for v in str(part).split("/"))
    except ValueError:
        raise ConfigError(f"experiment.part={part!r}: write i/N, e.g. experiment.part=0/8") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"experiment.part={part!r}: needs N >= 1 and 0 <= i < N")
    return i, n


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    for name in ("traits", "conditions", "steering", "variants"):
        if x[name] is None:
            x[name] = {}
    if x.more_prompts is None:
        x.more_prompts = []
    known_prompts = {f.name for f in dataclasses.fields(PromptsConfig)}
    for k, spec in enumerate(x.more_prompts):
        spec = _params(spec)
        bad = sorted(set(spec) - known_prompts)
        if bad or "name" not in spec:
            raise ConfigError(f"experiment.more_prompts[{k}]: " + (f"unknown field(s) {bad}" if bad else "no name")
                              + f"; a prompt set's fields: {', '.join(sorted(known_prompts))}")
    choice("experiment.score_at", x.score_at, SCORE_AT)
    for factor, levels in x.conditions.items():
        if factor not in FACTORS:
            raise ConfigError(f"experiment.conditions.{factor}: unknown factor; factors are {', '.join(FACTORS)}")
        if not isinstance(_params(levels), dict) or not levels:
            raise ConfigError(f"experiment.conditions.{factor}: give its levels as {{level: text}}, e.g. "
                              f"{{none: null, comply: \"Sure, here's\"}}")
    if x.conditions.get("prefill") and any(_params(x.conditions.prefill).values()) and cfg.prompt.format != "chat":
        raise ConfigError(f"experiment.conditions.prefill starts the assistant's turn of a chat template; "
                          f"prompt.format={cfg.prompt.format}: use prompt.format=chat")
    for name, low in (("shard_size", 1), ("window", 0), ("max_new_tokens", 0), ("n_bootstrap", 100),
                      ("failures", 0)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if x.temperature < 0 or not 0 < x.top_p <= 1:
        raise ConfigError(f"experiment.temperature={x.temperature}, top_p={x.top_p}: need temperature >= 0 "
                          f"and 0 < top_p <= 1")
    if not 0 < x.alpha < 1:
        raise ConfigError(f"experiment.alpha={x.alpha}: must be in (0, 1)")
    parse_part(x.part)
    for level, spec in x.steering.items():
        spec = _params(spec)
        if set(spec) != {"trait", "layer", "strength"}:
            raise ConfigError(f"experiment.steering.{level}: give {{trait: <name>, layer: <int>, strength: <float>}}, "
                              f"got {spec}")
        if level == "none":
            raise ConfigError("experiment.steering.none: 'none' is the unsteered level; name the level otherwise")
    if x.steering and x.max_new_tokens == 0:
        raise ConfigError("experiment.steering steers generation; set experiment.max_new_tokens > 0")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    for name, over in x.variants.items():
        if name == BASE:
            raise ConfigError(f"experiment.variants.{BASE}: the base model is always variant {BASE!r}; "
                              f"name the other variants otherwise")
        bad = sorted(set(_params(over)) - known)
        if bad:
            raise ConfigError(f"experiment.variants.{name}: unknown model field(s) {bad}; model fields: "
                              f"{', '.join(sorted(known))}")


def prompt_field(p: Prompt, name: str) -> str:
    """The value of prompt field ``name`` (``label``, ``category``, ``id`` or ``metadata.<key>``)."""
    if name.startswith("metadata."):
        return str(p.metadata.get(name.split(".", 1)[1], ""))
    return str(getattr(p, name))


@dataclass(frozen=True)
class Condition:
    levels: tuple[tuple[str, str], ...]  # (factor, level) in factor order, "steer" last

    @property
    def name(self) -> str:
        return ",".join(f"{f}={v}" for f, v in self.levels) or "all"

    def get(self, factor: str) -> str:
        return dict(self.levels)[factor]


@dataclass
class Rows:
    """The token rows of one condition, and where each prompt's response starts."""

    rows: list[list[int]]
    n_prompt: list[int]  # tokens before the prefill (the templated prompt)


class Traits(Experiment):
    def run(self) -> dict[str, Any]:
        x = self.x
        for name, over in x.variants.items():  # a preset may leave it to the command line (traits_backdoor)
            if "adapter" in _params(over) and not _params(over)["adapter"]:
                raise ConfigError(f"experiment.variants.{name}.adapter is empty: give the adapter/ folder of an "
                                  f"experiment=finetune run, \"experiment.variants={{{name}: {{adapter: <run>/adapter}}}}\"")
        self.prompt_set = load_prompts(self.cfg.prompts)
        self.prompts: list[Prompt] = list(self.prompt_set.prompts)
        self.more_sets = []
        for spec in x.more_prompts:
            more = load_prompts(OmegaConf.merge(OmegaConf.structured(PromptsConfig), _params(spec)))
            self.more_sets.append(more)
            # an appended set's ids carry its name: ids of two upstream files may collide
            self.prompts += [dataclasses.replace(p, id=f"{more.name}/{p.id}") for p in more.prompts]
        if x.split_by:
            fields = {"label", "category", "id"}
            if not (x.split_by in fields or x.split_by.startswith("metadata.")):
                raise ConfigError(f"experiment.split_by={x.split_by!r}: not a prompt field; use label, category, "
                                  f"id or metadata.<key>")
            if x.split_by.startswith("metadata.") and not any(x.split_by[9:] in p.metadata for p in self.prompts):
                have = sorted({k for p in self.prompts for k in p.metadata})
                raise ConfigError(f"experiment.split_by={x.split_by!r}: no prompt of {self.prompt_set.name} has "
                                  f"metadata key {x.split_by[9:]!r} (keys: {', '.join(have) or 'none'})")
        self.groups = [prompt_field(p, x.split_by) if x.split_by else "all" for p in self.prompts]
        log.info("prompt set %s: %d prompts%s", self.prompt_set.name, len(self.prompts),
                 f", by {x.split_by}: {dict(pd.Series(self.groups).value_counts())}" if x.split_by else "")
        self.load()
        self.base_lm = self.lm
        if self.cfg.prompt.format == "chat" and any(_params(x.conditions.get("prefill", {})).values()) \
                and not self.prompter.uses_chat:
            raise ConfigError(f"experiment.conditions.prefill needs a chat template; model {self.lm.name} has none")
        self.trait_vectors = self.read_traits()
        self.names = sorted(self.trait_vectors)
        self.directions = {L: torch.stack([torch.nn.functional.normalize(self.trait_vectors[t][L].float(), dim=0)
                                           for t in self.names]) for L in self.layers}
        self.dir_id = methods.vector_id({L: d.flatten() for L, d in self.directions.items()})
        self.conditions = self.crossed()
        self.part = parse_part(x.part)
        variants = {BASE: {}, **{k: _params(v) for k, v in x.variants.items()}}
        results, tokens_rows, done, todo = [], [], 0, 0
        shard_no = 0
        for vname, over in variants.items():
            plan = []
            for cond in self.conditions:
                for start in range(0, len(self.prompts), int(x.shard_size)):
                    mine = self.part is None or shard_no % self.part[1] == self.part[0]
                    plan.append((cond, start, mine))
                    shard_no += 1
            if not any(m for *_, m in plan):
                continue
            self.use_variant(vname, over)
            monitor = mon.Monitor(self.lm.sites, self.site, self.directions)
            for cond, start, mine in plan:
                idx = list(range(start, min(start + int(x.shard_size), len(self.prompts))))
                rows = self.condition_rows(cond, idx)  # per shard: token rows never pile up
                k = self.shard_key(cond, rows, idx)
                rec = self.store.get_tensors("traits", k)
                if rec is None and not mine:
                    continue
                if rec is None:
                    rec = self.compute(monitor, cond, rows, idx)
                    self.store.put_tensors("traits", k, rec)
                    todo += 1
                else:
                    done += 1
                results.append((vname, cond, idx, rec))
        log.info("trait shards: %d from the store, %d computed", done, todo)
        n_shards = len(variants) * len(self.conditions) * math.ceil(len(self.prompts) / int(x.shard_size))
        if len(results) < n_shards:
            return self.finish_part(len(results), n_shards)
        return self.write(results)

    def data_identity(self) -> dict[str, str]:
        more = {f"more_prompts_{m.name}": f"{m.fingerprint()} {m.source}" for m in self.more_sets}
        return {**super().data_identity(), "prompts_fingerprint": self.prompt_set.fingerprint(),
                "prompts_source": self.prompt_set.source, **more}

    # -- traits, conditions, variants ------------------------------------------------------
    def read_traits(self) -> dict[str, dict[int, torch.Tensor]]:
        """``{trait: {layer: [d_model]}}`` from ``experiment.traits``, or the job's own method vector."""
        d = int(self.lm.model.config.hidden_size)
        out = {}
        for name, spec in self.x.traits.items():
            spec = {"path": spec} if isinstance(spec, str) else _params(spec)
            if "store" in spec:
                out[name] = self.stored_trait(name, spec["store"], d)
                continue
            path = Path(str(spec.get("path", "")))
            method = spec.get("method") or _method_of(path, self.site, f"experiment.traits.{name}")
            want = methods.Expected(method, self.site, self.position, self.layers, self.lm.name, d)
            out[name] = methods.read_vectors(path, want, f"experiment.traits.{name}")
        if not out:
            train = self.unsteered(["train"])["train"]
            out[self.method] = self.vectors(train)
            self.write_vectors(out[self.method])
        return out

    def stored_trait(self, name: str, keys: Any, d: int) -> dict[int, torch.Tensor]:
        """A trait from store records of kind ``vectors``: ``{store: {layer: key}}``. A vector key
        hashes the model fingerprint it was made on, but the record cannot say which: only its
        width is checked here; a run dir's files are checked for model and site too."""
        field_name = f"experiment.traits.{name}.store"
        if not isinstance(keys, dict):
            raise ConfigError(f"{field_name}: give {{layer: <key of a vectors record>}} for every layer of {self.layers}")
        keys = {int(k): str(v) for k, v in keys.items()}
        missing = [L for L in self.layers if L not in keys]
        if missing:
            raise methods.VectorError(f"{field_name}: no key for layer={missing} (has layers {sorted(keys)})")
        out = {}
        for L in self.layers:
            rec = self.store.get_tensors("vectors", keys[L])
            if rec is None or "vector" not in rec:
                raise methods.VectorError(f"{field_name}.{L}={keys[L]!r}: no vectors record with that key in "
                                          f"{self.store.root}")
            methods.check_width(rec["vector"], d, f"{field_name}.{L}")
            out[L] = rec["vector"].float()
        return out

    def crossed(self) -> list[Condition]:
        x = self.x
        factors = [(f, list(_params(x.conditions[f]))) for f in FACTORS if f in x.conditions]
        if x.steering:
            factors.append(("steer", ["none", *x.steering]))
        return [Condition(tuple(zip([f for f, _ in factors], combo)))
                for combo in itertools.product(*[levels for _, levels in factors])]

    def use_variant(self, name: str, overrides: dict) -> None:
        """Load variant ``name`` (the base is loaded already) and check the traits fit it."""
        self.variant = name
        if name == BASE:
            self.lm = self.base_lm
            return
        if getattr(self, "lm", None) is not None and self.lm is not self.base_lm:
            del self.lm
        mcfg = OmegaConf.merge(self.cfg.model, overrides)
        self.lm = models.load(mcfg, seed=self.seed)
        width = int(self.lm.model.config.hidden_size)
        if width != self.directions[self.layers[0]].shape[1]:
            raise methods.VectorError(f"experiment.variants.{name}: the model's width is {width}, the traits' is "
                                      f"{self.directions[self.layers[0]].shape[1]}: a variant must share the base's "
                                      f"architecture")
        for L in self.layers:
            self.lm.sites.check_layer(L)
        log.info("variant %s: %s loaded", name, self.lm.fingerprint)

    def condition_rows(self, cond: Condition, idx: list[int]) -> Rows:
        """The token rows of prompts ``idx`` under ``cond`` (``rows[j]`` is prompt ``idx[j]``'s)."""
        x = self.x
        levels = {f: _params(x.conditions[f]) for f in FACTORS if f in x.conditions}
        text_of = {f: str(levels[f][cond.get(f)] or "") for f in levels}
        rows, n_prompt = [], []
        tok = self.lm.tokenizer
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        for p in (self.prompts[i] for i in idx):
            user = f"{text_of['trigger']} {p.text}".strip() if text_of.get("trigger") else p.text
            system = "\n\n".join(t for t in (self.cfg.prompt.system, p.system, text_of.get("system")) if t)
            head = self.prompter.generation(user, system or None)
            prefill = text_of.get("prefill", "")
            base = tokens.encode(tok, [head], self.prompter.add_special_tokens)[0]
            full = tokens.encode(tok, [head + prefill], self.prompter.add_special_tokens)[0] if prefill else base
            n = len(base) if full[:len(base)] == base else _common(full, base)
            if limit and len(full) + int(x.max_new_tokens) > limit:
                raise DataError(f"prompt {p.id!r} of {self.prompt_set.name} under {cond.name} is {len(full)} tokens; "
                                f"with experiment.max_new_tokens={x.max_new_tokens} it exceeds the model's "
                                f"context {limit}")
            rows.append(full)
            n_prompt.append(n)
        return Rows(rows, n_prompt)

    # -- shards ------------------------------------------------------------------------------
    def steer_cell(self, cond: Condition) -> gen.GenCell:
        level = dict(cond.levels).get("steer", "none")
        if level == "none":
            return gen.GenCell()
        spec = _params(self.x.steering[level])
        if spec["trait"] not in self.trait_vectors:
            raise ConfigError(f"experiment.steering.{level}.trait={spec['trait']!r}: not a trait of this job "
                              f"({', '.join(self.names)})")
        L = int(spec["layer"])
        if L not in self.trait_vectors[spec["trait"]]:
            raise ConfigError(f"experiment.steering.{level}.layer={L}: trait {spec['trait']} has layers "
                              f"{sorted(self.trait_vectors[spec['trait']])} (the job's layer list)")
        return gen.GenCell(L, float(spec["strength"]), self.trait_vectors[spec["trait"]][L].float())

    def shard_key(self, cond: Condition, rows: Rows, idx: list[int]) -> str:
        x = self.x
        cell = self.steer_cell(cond)
        steer = [] if not cell.steered else [cell.layer, cell.strength, methods.vector_id({0: cell.vector})]
        decode = [] if x.max_new_tokens == 0 else [int(x.max_new_tokens), float(x.temperature), float(x.top_p),
                                                   self.seed, self.eos]
        keep = ["per_token"] if x.per_token else ["score_at", x.score_at]
        return store.key("traits", self.lm.fingerprint, [(self.prompts[i].id, rows.rows[j], rows.n_prompt[j])
                                                         for j, i in enumerate(idx)],
                         self.site, self.layers, self.dir_id, decode, steer, keep)

    @property
    def eos(self) -> list[int]:
        return tokens.eos_ids(self.lm.model, self.lm.tokenizer)

    def compute(self, monitor: mon.Monitor, cond: Condition, rows: Rows, idx: list[int]) -> dict[str, torch.Tensor]:
        """One shard's record: per token projections (float16) with the tokens, or per prompt scores."""
        x = self.x
        token_rows = rows.rows
        if x.max_new_tokens == 0:
            proj = self.oom_safe(lambda bs: mon.project(self.lm.model, monitor, token_rows, bs, self.pad))
            new = [[] for _ in idx]
        else:
            cell = self.steer_cell(cond)
            sampling = gen.Sampling(int(x.max_new_tokens), float(x.temperature), float(x.top_p), seed=self.seed)
            longest = max(len(r) for r in token_rows) + int(x.max_new_tokens)
            bs = self.cfg.batch_size or generation_batch_size(self.lm.model, longest)
            new = self.oom_safe(lambda b: gen.generate(self.lm.model, self.lm.sites, token_rows, self.site, [cell],
                                                       sampling, eos=self.eos, batch_size=b, pad=self.pad,
                                                       monitor=monitor), bs)[0]
            proj = [monitor.trace.get(0, j) for j in range(len(idx))]
        where = f"variant {self.variant}, {cond.name}, prompts {self.prompts[idx[0]].id}..{self.prompts[idx[-1]].id}"
        for p in proj:
            if not torch.isfinite(p).all() or p.abs().max() > FLOAT16_MAX:
                raise NonFiniteProjection(f"projections are NaN, infinite or beyond float16 in {where} "
                                          f"(model.dtype={self.cfg.model.dtype}); nothing of it is stored")
        n_prompt = torch.tensor(rows.n_prompt)
        n_read = torch.tensor([len(r) for r in rows.rows])
        lengths = torch.tensor([len(p) for p in proj])
        if x.per_token:
            toks = torch.tensor([t for j in range(len(idx)) for t in rows.rows[j] + new[j]], dtype=torch.long)
            return {"proj": torch.cat(proj).half(), "tokens": toks, "lengths": lengths, "n_prompt": n_prompt,
                    "n_read": n_read}
        scores = torch.stack([_reduce(p, int(a), int(b), x.score_at) for p, a, b in zip(proj, n_prompt, n_read)])
        gen_tokens = torch.tensor([t for r in new for t in r], dtype=torch.long)
        return {"scores": scores, "lengths": lengths, "n_prompt": n_prompt, "n_read": n_read, "new": gen_tokens}

    def finish_part(self, have: int, total: int) -> dict[str, Any]:
        i, n = self.part
        summary = {**self.meta(), "part": f"{i}/{n}", "shards_done": have, "shards": total}
        return self.finish(summary, [f"eas: traits part {i}/{n}: {have} of {total} shards in the store",
                                     "  merge when every part is done: the same command without experiment.part"])

    # -- tables ------------------------------------------------------------------------------
    def write(self, results) -> dict[str, Any]:
        x = self.x
        factor_names = [f for f, _ in self.conditions[0].levels]
        frames, tok_frames, texts = [], [], {}
        tok = self.base_lm.tokenizer
        nl, nt = len(self.layers), len(self.names)
        for vname, cond, idx, rec in results:
            levels = dict(cond.levels)
            n_read = rec["n_read"].numpy()
            lengths = rec["lengths"].numpy()
            if "proj" in rec:
                offs = np.concatenate([[0], np.cumsum(lengths)])
                score = np.empty((len(idx), nl, nt), dtype=np.float32)
                for j, i in enumerate(idx):
                    a, b = int(rec["n_prompt"][j]), int(n_read[j])
                    p = rec["proj"][offs[j]:offs[j + 1]].float()
                    score[j] = _reduce(p, a, b, x.score_at).numpy()
                    ids = rec["tokens"][offs[j]:offs[j + 1]].tolist()
                    tok_frames.append(self.token_frame(vname, levels, i, p, ids, a, b))
                    if len(ids) > b:
                        texts[(vname, cond.name, self.prompts[i].id)] = tok.decode(ids[b:], skip_special_tokens=True)
            else:
                score = rec["scores"].numpy()
                new, n_new = rec["new"].tolist(), lengths - n_read
                offs = np.concatenate([[0], np.cumsum(n_new)])
                for j, i in enumerate(idx):
                    if n_new[j] > 0:
                        texts[(vname, cond.name, self.prompts[i].id)] = tok.decode(new[offs[j]:offs[j + 1]],
                                                                                   skip_special_tokens=True)
            ps = [self.prompts[i] for i in idx]
            rep = nl * nt
            frames.append(pd.DataFrame({
                "variant": vname, **levels, "condition": cond.name,
                "prompt_id": np.repeat([p.id for p in ps], rep), "group": np.repeat([self.groups[i] for i in idx], rep),
                "category": np.repeat([p.category for p in ps], rep), "label": np.repeat([p.label for p in ps], rep),
                "layer": np.tile(np.repeat(self.layers, nt), len(idx)), "trait": np.tile(self.names, len(idx) * nl),
                "score": score.reshape(-1).astype(float)}))
        scores = pd.concat(frames, ignore_index=True)
        for c in ("variant", *factor_names, "condition", "group", "category", "label", "trait"):
            scores[c] = scores[c].astype(str)
        store.write_parquet(self.out / "scores.parquet", scores)
        toks = pd.concat(tok_frames, ignore_index=True) if tok_frames else pd.DataFrame()
        if not toks.empty:
            store.write_parquet(self.out / "tokens.parquet", toks)
        results_df = self.means(scores, factor_names)
        store.write_parquet(self.out / "results.parquet", results_df)
        comps = self.comparisons(scores, toks, factor_names)
        store.write_parquet(self.out / "comparisons.parquet", comps)
        detection, failures = self.detection(scores, texts)
        if not detection.empty:
            store.write_parquet(self.out / "detection.parquet", detection)
            store.write_csv(self.out / "failures.csv", failures)
        if texts and x.max_new_tokens > 0:
            gens = pd.DataFrame([{"variant": v, "condition": c, "prompt_id": pid, "text": t}
                                 for (v, c, pid), t in texts.items()])
            store.write_parquet(self.out / "generations.parquet", gens)
        meta = {**self.meta(), "prompts": "+".join([self.prompt_set.name, *(m.name for m in self.more_sets)]),
                "traits": self.names, "layers": self.layers,
                "preset": x.preset}
        summary = {**meta, "n_prompts": len(self.prompts), "variants": sorted(scores.variant.unique()),
                   "conditions": [c.name for c in self.conditions], "split_by": x.split_by,
                   "score_at": x.score_at, "per_token": bool(x.per_token), "bytes_per_token": 2 * len(self.layers) * len(self.names),
                   "comparisons": _top(comps), "detection": detection[detection.category == "all"].to_dict("records")
                   if not detection.empty else []}
        summary = self.finish(summary, headline(summary))
        from eas.report.traits import write_trait_figures

        self.figures(write_trait_figures, scores, toks, comps, factor_names, self.out / "figures")
        return summary

    def token_frame(self, vname, levels, i, proj, ids, n_prompt, n_read) -> pd.DataFrame:
        """Long rows (token x layer x trait) of one text: position, position relative to the
        response's start, role, token string, float16 projection."""
        n, nl, nt = proj.shape
        pos = np.arange(n)
        role = np.where(pos < n_prompt, "prompt", np.where(pos < n_read, "prefill", "generated"))
        strings = self.base_lm.tokenizer.convert_ids_to_tokens(ids)
        rep = nl * nt
        return pd.DataFrame({
            "variant": vname, **{f: v for f, v in levels.items()}, "prompt_id": self.prompts[i].id,
            "group": self.groups[i], "pos": np.repeat(pos, rep), "rel": np.repeat(pos - n_prompt, rep),
            "role": np.repeat(role, rep), "token": np.repeat(np.asarray(strings, dtype=object), rep),
            "layer": np.tile(np.repeat(self.layers, nt), n), "trait": np.tile(self.names, n * nl),
            "projection": proj.reshape(-1).numpy().astype(np.float16)})

    def means(self, scores: pd.DataFrame, factor_names: list[str]) -> pd.DataFrame:
        keys = ["variant", *factor_names, "condition", "group", "layer", "trait"]
        out = []
        for k, d in scores.groupby(keys, sort=True):
            v = d.score.to_numpy(float)
            ci = stats.mean_ci(v) if len(v) >= 2 else None
            out.append({**dict(zip(keys, k)), "n": len(v), "mean": float(v.mean()),
                        "low": ci.low if ci else math.nan, "high": ci.high if ci else math.nan})
        return pd.DataFrame(out)

    def comparisons(self, scores: pd.DataFrame, toks: pd.DataFrame, factor_names: list[str]) -> pd.DataFrame:
        """Every factor level vs the factor's first level, variants vs base (both paired over
        prompts) and groups vs the first group (independent), per layer and trait."""
        x, out = self.x, []
        axes = [(f, [lvl for lvl in dict.fromkeys(scores[f])], True) for f in factor_names]
        axes.append(("variant", list(dict.fromkeys(scores.variant)), True))
        if x.split_by:
            axes.append(("group", self.group_order(scores), False))
        for axis, levels, paired in axes:
            if len(levels) < 2:
                continue
            held = [c for c in ["variant", *factor_names, "group"] if c != axis]
            for other in levels[1:]:
                a_all = scores[scores[axis] == other]
                b_all = scores[scores[axis] == levels[0]]
                for k, a in a_all.groupby([*held, "layer", "trait"], sort=True):
                    sel = dict(zip([*held, "layer", "trait"], k))
                    b = b_all
                    for c, v in sel.items():
                        b = b[b[c] == v]
                    if paired:
                        m = a.merge(b, on="prompt_id", suffixes=("", "_ref"))
                        va, vb = m.score.to_numpy(float), m.score_ref.to_numpy(float)
                    else:
                        va, vb = a.score.to_numpy(float), b.score.to_numpy(float)
                    if len(va) < 2 or len(vb) < 2:
                        continue
                    row = {"axis": axis, "level": other, "reference": levels[0], **sel, "paired": paired,
                           "n": len(va), "n_ref": len(vb), "mean": float(va.mean()), "mean_ref": float(vb.mean())}
                    row.update(_contrast(va, vb, paired, int(x.n_bootstrap), self.seed))
                    row["first_token"] = _first_token(toks, axis, other, levels[0], sel, paired, float(x.alpha),
                                                      int(x.window)) if not toks.empty else None
                    out.append(row)
        out += self.interactions(scores, factor_names)
        return pd.DataFrame(out)

    def interactions(self, scores: pd.DataFrame, factor_names: list[str]) -> list[dict]:
        """Per factor level and non-base variant: does the level's effect differ between the variant
        and the base? A paired t-test over prompts of (level - reference) in the variant against the
        same in the base (axis ``<factor>:variant``): a trigger that moves a trait only where a
        backdoor was trained in."""
        variants = list(dict.fromkeys(scores.variant))
        out = []
        for f in factor_names:
            levels = list(dict.fromkeys(scores[f]))
            held = [c for c in [*factor_names, "group"] if c != f]
            for other, v in itertools.product(levels[1:], variants[1:]):
                def effect(variant, d):
                    w = d[d.variant == variant].pivot_table(index=["prompt_id", *held, "layer", "trait"], columns=f,
                                                            values="score")
                    return (w[other] - w[levels[0]]).rename("effect")
                both = pd.concat([effect(v, scores).rename("v"), effect(BASE, scores).rename("b")], axis=1).dropna()
                for k, d in both.groupby(level=[*held, "layer", "trait"], sort=True):
                    if len(d) < 2:
                        continue
                    t = stats.paired_ttest(d.v.to_numpy(float), d.b.to_numpy(float))
                    out.append({"axis": f"{f}:variant", "level": f"{other}-{levels[0]} in {v}", "reference": f"in {BASE}",
                                **dict(zip([*held, "layer", "trait"], k)), "variant": v, "paired": True,
                                "n": len(d), "n_ref": len(d), "mean": float(d.v.mean()), "mean_ref": float(d.b.mean()),
                                "diff": t.mean_diff, "diff_low": t.ci95[0], "diff_high": t.ci95[1], "t": t.statistic,
                                "p": t.p_value, "cohens_d": stats.cohens_d_paired(d.v.to_numpy(float),
                                                                                  d.b.to_numpy(float)),
                                "auroc": math.nan, "auroc_low": math.nan, "auroc_high": math.nan,
                                "first_token": None})
        return out

    def group_order(self, scores: pd.DataFrame) -> list[str]:
        """The groups sorted, ``experiment.positive`` last (the reference of comparisons is the first)."""
        groups = sorted(scores.group.unique())
        pos = self.x.positive
        if pos is not None:
            if pos not in groups:
                raise ConfigError(f"experiment.positive={pos!r} is not a group of experiment.split_by="
                                  f"{self.x.split_by} (groups: {', '.join(groups)})")
            groups = [g for g in groups if g != pos] + [pos]
        return groups

    def detection(self, scores: pd.DataFrame, texts: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Two groups: the AUROC of telling them apart by each (layer, trait) score, overall and per
        category (``experiment.positive``, else the second group sorted, is the positive one), and
        the worst-scored prompts."""
        x = self.x
        groups = self.group_order(scores)
        if not x.split_by or len(groups) != 2:
            return pd.DataFrame(), pd.DataFrame()
        neg, pos = groups
        out, fails = [], []
        keys = ["variant", "condition", "layer", "trait"]
        by_id = {p.id: p for p in self.prompts}
        for k, d in scores.groupby(keys, sort=True):
            parts = [("all", d)]
            for cat in sorted(c for c in d[d.group == pos].category.unique() if c):
                inside = d[d.category == cat]
                # a category with both groups (mirrored prompts): within it; else against every negative
                parts.append((cat, inside if set(inside.group) == {neg, pos} else
                              pd.concat([inside, d[d.group == neg]]).drop_duplicates("prompt_id")))
            overall = None
            for cat, dd in parts:
                y = (dd.group == pos).to_numpy()
                if y.all() or not y.any():
                    continue
                ci = stats.bootstrap_auroc_ci(y, dd.score.to_numpy(float), int(x.n_bootstrap), seed=self.seed)
                overall = ci.point if cat == "all" else overall
                out.append({**dict(zip(keys, k)), "category": cat, "positive": pos, "n_pos": int(y.sum()),
                            "n_neg": int((~y).sum()), "auroc": ci.point, "auroc_low": ci.low, "auroc_high": ci.high})
            if overall is None:
                continue
            # failures: the positives scored most like negatives and the reverse, in the direction
            # the score separates the groups (AUROC < 0.5: lower scores mean positive)
            ranked = d.sort_values("score", ascending=overall >= 0.5)
            k_fail = int(x.failures)
            for kind, part in (("missed", ranked[ranked.group == pos].head(k_fail)),
                               ("false_alarm", ranked[ranked.group == neg].tail(k_fail))):
                for r in part.itertuples():
                    fails.append({**dict(zip(keys, k)), "kind": kind, "prompt_id": r.prompt_id, "group": r.group,
                                  "category": r.category, "score": r.score, "text": by_id[r.prompt_id].text,
                                  "generated": texts.get((r.variant, r.condition, r.prompt_id), "")})
        return pd.DataFrame(out), pd.DataFrame(fails)


class NonFiniteProjection(RuntimeError):
    """A forward pass produced projections that are not finite float16 numbers; nothing is stored."""


def _method_of(path: Path, site: str, field_name: str) -> str:
    """The one method whose vectors at ``site`` a run dir (or file) holds."""
    from safetensors import safe_open

    if not path.exists():
        raise methods.VectorError(f"{field_name}={str(path)!r}: no such file or folder")
    files = [path] if path.is_file() else sorted([*path.glob("vectors/*.safetensors"), *path.glob("probes/*.safetensors")])
    found = set()
    for f in files:
        with safe_open(str(f), "pt") as fh:
            meta = dict(fh.metadata() or {})
        if path.is_file() or meta.get("site") == site:
            found.add(meta.get("method", "?"))
    if len(found) != 1:
        raise methods.VectorError(f"{field_name}={str(path)!r}: " + (
            f"no vectors at steer_target={site} there" if not found else
            f"vectors of several methods ({', '.join(sorted(found))}); give {{path: ..., method: <one>}}"))
    return found.pop()


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _reduce(proj: torch.Tensor, n_prompt: int, n_read: int, how: str) -> torch.Tensor:
    """``[tokens, layer, trait] -> [layer, trait]``: the last token read (the one the first response
    token is predicted from), or the mean over the prompt, response (prefill + generated) or all tokens."""
    proj = proj.float()
    if how == "last":
        return proj[n_read - 1]
    if how == "prompt":
        return proj[:n_prompt].mean(0)
    if how == "response":
        part = proj[n_prompt:]
        return part.mean(0) if len(part) else proj[n_read - 1]
    return proj.mean(0)


def _contrast(a: np.ndarray, b: np.ndarray, paired: bool, n_boot: int, seed: int) -> dict[str, float]:
    t = stats.paired_ttest(a, b) if paired else stats.welch_ttest(a, b)
    d = stats.cohens_d_paired(a, b) if paired else stats.cohens_d_independent(a, b)
    y = np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)]
    ci = stats.bootstrap_auroc_ci(y, np.r_[a, b], n_boot, seed=seed)
    return {"diff": t.mean_diff, "diff_low": t.ci95[0], "diff_high": t.ci95[1], "t": t.statistic, "p": t.p_value,
            "cohens_d": d, "auroc": ci.point, "auroc_low": ci.low, "auroc_high": ci.high}


def _first_token(toks: pd.DataFrame, axis: str, level: str, ref: str, sel: dict, paired: bool, alpha: float,
                 window: int) -> int | None:
    """The earliest position (relative to the response start, from ``-window`` on) where the two
    sides' projections differ significantly, Holm-corrected over the positions tested."""
    d = toks[toks.rel >= -window]
    for c, v in sel.items():
        if c in d.columns:
            d = d[d[c] == v]
    a, b = d[d[axis] == level], d[d[axis] == ref]
    if a.empty or b.empty:
        return None
    rels, ps = [], []
    if paired:
        m = a.merge(b, on=["prompt_id", "rel"], suffixes=("", "_ref"))
        for rel, g in m.groupby("rel", sort=True):
            if len(g) >= 3:
                p = stats.paired_ttest(g.projection.to_numpy(float), g.projection_ref.to_numpy(float)).p_value
                rels.append(int(rel))
                ps.append(1.0 if math.isnan(p) else p)
    else:
        for rel in sorted(set(a.rel) & set(b.rel)):
            x, y = a[a.rel == rel].projection.to_numpy(float), b[b.rel == rel].projection.to_numpy(float)
            if len(x) >= 2 and len(y) >= 2:
                p = stats.welch_ttest(x, y).p_value
                rels.append(int(rel))
                ps.append(1.0 if math.isnan(p) else p)
    if not ps:
        return None
    adj = stats.holm(ps)
    hit = [r for r, p in zip(rels, adj) if p < alpha]
    return min(hit) if hit else None


def _top(comps: pd.DataFrame) -> list[dict]:
    """Per comparison axis and level: the (layer, trait) with the largest |Cohen's d|."""
    if comps.empty:
        return []
    out = []
    for (axis, level), d in comps.groupby(["axis", "level"], sort=True):
        r = d.loc[d.cohens_d.abs().fillna(-1).idxmax()]
        first = r.get("first_token")
        r = r.drop(labels=["first_token"], errors="ignore")
        out.append({"first_token": None if first is None or pd.isna(first) else int(first)}
                   | {k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in r.items() if k in ("axis", "level", "reference", "layer", "trait", "group", "variant",
                                                   "paired", "n", "diff", "p", "cohens_d", "auroc", "auroc_low",
                                                   "auroc_high", "first_token")})
    return out


def _where(c: dict) -> str:
    """The variant and group a comparison holds fixed, where it is not what is compared."""
    parts = [f"{k} {c[k]}" for k in ("variant", "group") if c.get(k) not in (None, "all") and c["axis"] != k]
    return "".join(f", {p}" for p in parts)


def _g(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def headline(s: dict) -> list[str]:
    lines = [f"eas: {s['model']} traits {', '.join(s['traits'])} on {s['prompts']} ({s['n_prompts']} prompts x "
             f"{len(s['conditions'])} conditions x {len(s['variants'])} variants; layers {s['layers']}; "
             f"score at {s['score_at']})"]
    for c in s["comparisons"]:
        first = "none" if c.get("first_token") is None else f"token {c['first_token']:+d}"
        first = f"; first separating {first}" if s.get("per_token") else ""
        if c.get("cohens_d") is None:  # identical sides: no test
            lines.append(f"  {c['axis']} {c['level']} vs {c['reference']}: no difference (every paired "
                         f"difference is the same)")
            continue
        if c.get("auroc") is None:  # an interaction: a difference of paired effects
            lines.append(f"  {c['axis']} {c['level']} vs {c['reference']}: effect difference {c['diff']:+.3g} "
                         f"d={c['cohens_d']:+.2f} p={_g(c['p'])} (layer {c['layer']}, {c['trait']})")
            continue
        lines.append(f"  {c['axis']} {c['level']} vs {c['reference']}: d={c['cohens_d']:+.2f} AUROC "
                     f"{c['auroc']:.2f} [{c['auroc_low']:.2f}, {c['auroc_high']:.2f}] p={_g(c['p'])} "
                     f"(layer {c['layer']}, {c['trait']}{_where(c)}){first}")
    best = max(s["detection"], key=lambda r: abs(r["auroc"] - 0.5), default=None)  # either direction separates
    if best:
        lines.append(f"  detection {best['positive']} (n={best['n_pos']}) vs rest (n={best['n_neg']}): AUROC "
                     f"{best['auroc']:.2f} [{best['auroc_low']:.2f}, {best['auroc_high']:.2f}] at layer {best['layer']} "
                     f"({best['variant']}, {best['condition']}); failures.csv")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Traits(cfg, out_dir).run()


def report(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """``eas-report``'s tables of traits runs: every comparison and the detection AUROCs."""
    out = {}
    for name in ("comparisons", "detection"):
        df = Experiment.results_table(runs, f"{name}.parquet")
        if df is not None:
            out[name] = df
    return out
