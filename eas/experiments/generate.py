"""experiment=generate: what a steered model says, cell by cell, scored and judged.

1. load the model, the benchmark the vectors are built from (split as every kind splits it)
   and the prompt set (``prompts``: free-form prompts, ``eas.data.load_prompts``);
2. one vector per layer from the method (its train contrast, e.g. ``method=response_diff``
   on a pair file), or from ``method.vector_path``;
3. generate every prompt under every (condition, cell, sample) with the batched engine
   (``eas.core.generate``): a cell is (layer, strength) or unsteered, a condition is the
   prompt as given (``none``) or with ``experiment.instruction`` as its system prompt
   (``instruction``: behaviour editing vs prompting). Prompts go in chunks; each
   (condition, cell, sample, chunk) is a store record written when its chunk is done;
4. score every generation with every scorer (``experiment.scorers``, ``eas.scorers``), one
   store record per (scorer, generation record): a scorer that fails (a judge that cannot
   be reached) costs no generation, and a re-run resumes where it stopped;
5. curves: per (condition, category group, layer, strength) the success rate (``experiment.
   success``) with its Wilson interval, every score's mean and its paired change from the
   unsteered cell (paired t-test over prompts); the elbow of each layer, the first strength
   whose success is significantly above unsteered (one-sided exact McNemar over the same
   prompts, Holm-corrected over the layer's strengths); with ``experiment.by_category`` the
   categories' curves side by side and their difference tested at each strength (Fisher's
   exact test). Writes ``generations.parquet``, ``results.parquet``, ``figures/``,
   ``sample_sheet.md``, ``summary.json`` and ``manifest.json``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from scipy.stats import fisher_exact

from eas import store
from eas.config import ConfigError, choice
from eas.core import capture as capture_mod
from eas.core import generate as gen
from eas.core import stats, tokens
from eas.data import load_prompts
from eas.data.schema import DataError, Prompt
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment, cell_name
from eas.methods import base as methods
from eas.resources import generation_batch_size
from eas.scorers import base as scorers

log = logging.getLogger("eas")
STEER_ON = ("all", "prompt", "generated")
ENGINES = ("eas", "vllm")
# patched: the prompt as given, with the instruction run's activation at the last prompt token written
# in at the cell's layer (scaled by the cell's strength: 1 is the exact patch): patching vs prompting
CONDITIONS = ("none", "instruction", "patched")
UNSTEERED = "unsteered"


@dataclass
class SuccessConfig:
    """What counts as success for the curves: ``column`` above (or below) ``threshold``."""

    column: str = MISSING  # a score column, e.g. judge, refusal, sentiment
    threshold: float = MISSING
    above: bool = MISSING  # success = value > threshold; False: value < threshold


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/generate.yaml``."""

    preset: str = MISSING  # the preset's name, for tables (generate, alpha_sweep, negative_steering, ...)
    max_new_tokens: int = MISSING
    temperature: float = MISSING  # 0 = greedy
    top_p: float = MISSING
    samples: int = MISSING  # generations per (prompt, cell); > 1 needs temperature > 0
    steer_on: str = MISSING  # all | prompt | generated
    steer_from: int | None = None  # steer from this prompt token on (persona-vector style response steering)
    conditions: list[str] = MISSING  # none | instruction
    instruction: str = MISSING  # the system prompt of condition "instruction"
    scorers: dict[str, Any] = MISSING  # scorer name -> its params (eas/scorers/<name>.py)
    success: SuccessConfig = field(default_factory=SuccessConfig)
    by_category: bool = MISSING  # curves per prompt category too, and categories compared
    alpha: float = MISSING  # significance level of the elbow and the category comparison
    prompts_per_chunk: int = MISSING  # prompts generated between two writes to the store
    sample_sheet_prompts: int = MISSING  # prompts shown in sample_sheet.md
    engine: str = "eas"  # eas (the built-in batched engine) | vllm (eas.backends.vllm, its own environment)


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    choice("experiment.steer_on", x.steer_on, STEER_ON)
    choice("experiment.engine", x.engine, ENGINES)
    if x.engine == "vllm":
        if cfg.steer_target.site != "residual":
            raise ConfigError(f"experiment.engine=vllm steers steer_target=residual only, got "
                              f"{cfg.steer_target.site!r}; use experiment.engine=eas for other sites")
        if cfg.model.source not in ("embedded", "local", "hub"):
            raise ConfigError(f"experiment.engine=vllm loads a checkpoint folder; model.source={cfg.model.source} "
                              f"has none: use an embedded, local or hub model, or experiment.engine=eas")
    for c in x.conditions:
        choice("experiment.conditions", c, CONDITIONS)
    if not x.conditions:
        raise ConfigError("experiment.conditions is empty; give e.g. [none] or [none,instruction]")
    for c in ("instruction", "patched"):
        if c in x.conditions and not str(x.instruction or "").strip():
            raise ConfigError(f"experiment.conditions has '{c}' but experiment.instruction is empty; "
                              f"set the system prompt it {'adds' if c == 'instruction' else 'patches in'}, "
                              f"e.g. experiment.instruction='Be kind.'")
    if "patched" in x.conditions and x.engine != "eas":
        raise ConfigError("experiment.conditions 'patched' runs on experiment.engine=eas only")
    for name, low in (("max_new_tokens", 1), ("samples", 1), ("prompts_per_chunk", 1),
                      ("sample_sheet_prompts", 0)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if x.temperature < 0:
        raise ConfigError(f"experiment.temperature={x.temperature}: must be >= 0 (0 = greedy)")
    if not 0 < x.top_p <= 1:
        raise ConfigError(f"experiment.top_p={x.top_p}: must be in (0, 1]")
    if x.samples > 1 and x.temperature == 0:
        raise ConfigError(f"experiment.samples={x.samples} with experiment.temperature=0: greedy decoding "
                          f"gives one text per prompt; set experiment.temperature > 0 to sample")
    if x.steer_from is not None and x.steer_from < 0:
        raise ConfigError(f"experiment.steer_from={x.steer_from}: a token index >= 0, or null")
    if not 0 < x.alpha < 1:
        raise ConfigError(f"experiment.alpha={x.alpha}: must be in (0, 1)")
    if not x.scorers:
        raise ConfigError("experiment.scorers is empty; name at least one, e.g. experiment.scorers={length: {}}")
    declared: list[str] | None = []
    for name, params in x.scorers.items():
        params, field_name = _params(params), f"experiment.scorers.{name}"
        module = str(params.pop("scorer", name))
        scorers.check(module, params, field_name)
        cols = scorers.columns(module, params, field_name)
        declared = None if cols is None or declared is None else [*declared, *cols]
    if declared is not None and x.success.column not in declared:
        raise ConfigError(f"experiment.success.column={x.success.column!r} is not a column of experiment.scorers "
                          f"(they write: {', '.join(declared)}); name one of them")
    if not math.isfinite(float(x.success.threshold)):
        raise ConfigError(f"experiment.success.threshold={x.success.threshold}: must be a finite number")


def _params(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})


@dataclass(frozen=True)
class Row:
    """One generation's identity: which prompt under which condition, cell and sample."""

    condition: str
    cell: str  # "unsteered" or cell_name(layer, strength)
    layer: int  # -1 for unsteered
    strength: float
    sample: int


class Generate(Experiment):
    def run(self) -> dict[str, Any]:
        x = self.x
        self.prompt_set = load_prompts(self.cfg.prompts)
        self.load()
        self.prompts: list[Prompt] = list(self.prompt_set.prompts)
        log.info("prompt set %s: %d prompts", self.prompt_set.name, len(self.prompts))
        # every condition's token rows now: a prompt that cannot fit fails before any generation
        self.rows_by_condition = {c: self.prompt_rows(c) for c in x.conditions}
        base = self.unsteered()
        vecs = self.vectors(base["train"])
        self.vec_ids = {L: methods.vector_id({L: v}) for L, v in vecs.items()}
        cells = [(UNSTEERED, -1, 0.0)] + [(cell_name(L, s), L, s) for L in self.layers
                                          for s in self.strengths if s != 0]
        texts, ids = self.generations(cells, vecs)
        columns, failed = self.scores(cells, texts, ids)
        counts = {k: [len(t) for t in rows] for k, rows in ids.items()}
        return self.write(cells, vecs, texts, counts, columns, failed)

    def data_identity(self) -> dict[str, str]:
        return {**super().data_identity(), "prompts_fingerprint": self.prompt_set.fingerprint(),
                "prompts_source": self.prompt_set.source}

    # -- prompts ------------------------------------------------------------------------
    def system(self, p: Prompt, condition: str) -> str:
        """The system prompt: ``prompt.system``, the prompt's own, and the condition's instruction."""
        parts = [self.cfg.prompt.system, p.system, self.x.instruction if condition == "instruction" else None]
        return "\n\n".join(str(t) for t in parts if t)

    def prompt_rows(self, condition: str) -> list[list[int]]:
        texts = [self.prompter.generation(p.text, self.system(p, condition)) for p in self.prompts]
        rows = tokens.encode(self.lm.tokenizer, texts, self.prompter.add_special_tokens)
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        room = int(self.x.max_new_tokens)
        for p, row in zip(self.prompts, rows):
            if limit and len(row) + room > limit:
                raise DataError(f"prompt {p.id!r} of prompt set {self.prompt_set.name} is {len(row)} tokens; with "
                                f"experiment.max_new_tokens={room} it needs {len(row) + room} positions, the model's "
                                f"context is {limit}: shorten it, drop it or lower max_new_tokens")
        return rows

    # -- step 3: generations --------------------------------------------------------------
    def sampling(self, sample: int) -> gen.Sampling:
        x = self.x
        # sample k of seed s: its own noise, the same for every cell (paired comparisons)
        return gen.Sampling(int(x.max_new_tokens), float(x.temperature), float(x.top_p),
                            seed=self.seed * 1_000_003 + sample)

    def chunks(self) -> list[list[int]]:
        n = int(self.x.prompts_per_chunk)
        return [list(range(i, min(i + n, len(self.prompts)))) for i in range(0, len(self.prompts), n)]

    def gen_key(self, condition: str, cell: tuple[str, int, float], sample: int, idx: list[int]) -> str:
        x, (_, layer, strength) = self.x, cell
        rows = self.rows_by_condition[condition]
        steer = [] if layer < 0 else [self.site, layer, float(strength), self.vec_ids[layer], x.steer_on,
                                      x.steer_from]
        if condition == "patched" and layer >= 0:  # the patch: the instruction run's last-token activation
            steer = [self.site, layer, float(strength), "patched_last", [self.source_rows()[i] for i in idx]]
        sampling = [int(x.max_new_tokens), float(x.temperature), float(x.top_p), self.sampling(sample).seed]
        # vLLM's kernels and sampler are not eas's: its texts are records of their own
        engine = [] if x.engine == "eas" else ["engine", x.engine]
        return store.key("generation", self.lm.fingerprint, [(self.prompts[i].id, rows[i]) for i in idx],
                         steer, sampling, self.eos, *engine)

    @property
    def eos(self) -> list[int]:
        return tokens.eos_ids(self.lm.model, self.lm.tokenizer)

    def fits(self, n: int):
        def check(rec: dict) -> bool:
            toks, texts = rec.get("tokens"), rec.get("texts")
            return (isinstance(toks, list) and isinstance(texts, list) and len(toks) == len(texts) == n
                    and all(isinstance(t, str) for t in texts)
                    and all(isinstance(t, list) and len(t) <= int(self.x.max_new_tokens)
                            and all(isinstance(i, int) for i in t) for t in toks))
        return check

    def generations(self, cells, vecs) -> tuple[dict[tuple, list[str]], dict[tuple, list[list[int]]]]:
        """``{(condition, cell name, sample): [text per prompt]}`` and the new token ids, from the
        store or generated (every missing cell of a chunk in one engine call)."""
        x = self.x
        texts: dict[tuple, list[str]] = {}
        ids: dict[tuple, list[list[int]]] = {}
        plan = []
        for condition in x.conditions:
            for sample in range(int(x.samples)):
                for idx in self.chunks():
                    todo = []
                    for cell in cells:
                        k = (condition, cell[0], sample)
                        rec = self.store.get_json("generations", self.gen_key(condition, cell, sample, idx),
                                                  self.fits(len(idx)))
                        if rec is None:
                            todo.append(cell)
                        else:
                            texts.setdefault(k, [""] * len(self.prompts))
                            ids.setdefault(k, [[] for _ in self.prompts])
                            for j, i in enumerate(idx):
                                texts[k][i], ids[k][i] = rec["texts"][j], rec["tokens"][j]
                    if todo:
                        plan.append((condition, sample, idx, todo))
        n_todo = sum(len(idx) * len(todo) for *_, idx, todo in plan)
        n_all = len(x.conditions) * int(x.samples) * len(self.prompts) * len(cells)
        log.info("generations: %d from the store, %d to generate", n_all - n_todo, n_todo)
        tok = self.lm.tokenizer
        longest = max((len(r) for rows in self.rows_by_condition.values() for r in rows), default=1)
        rows_per_batch = self.cfg.batch_size or generation_batch_size(self.lm.model, longest + int(x.max_new_tokens))
        with self.bar(n_todo, f"generate ({n_todo} rows x {x.max_new_tokens} tokens)") as bar:
            for condition, sample, idx, todo in plan:
                rows = [self.rows_by_condition[condition][i] for i in idx]
                gcells = [gen.GenCell() if L < 0 else gen.GenCell(L, s, vecs[L]) for _, L, s in todo]
                sampling = self.sampling(sample)
                if x.engine == "vllm":
                    got = self.vllm_generate(rows, gcells, sampling)
                elif condition == "patched":
                    got = self.patched_generate(rows, idx, todo, sampling)
                else:
                    got = self.oom_safe(lambda bs, rows=rows, gcells=gcells, sampling=sampling: gen.generate(
                        self.lm.model, self.lm.sites, rows, self.site, gcells, sampling, steer_on=x.steer_on,
                        steer_from=x.steer_from, eos=self.eos, batch_size=bs, pad=self.pad), rows_per_batch)
                for cell, out in zip(todo, got):
                    said = [tok.decode(ids, skip_special_tokens=True).strip() for ids in out]
                    self.store.put_json("generations", self.gen_key(condition, cell, sample, idx),
                                        {"tokens": [list(map(int, t)) for t in out], "texts": said})
                    k = (condition, cell[0], sample)
                    texts.setdefault(k, [""] * len(self.prompts))
                    ids.setdefault(k, [[] for _ in self.prompts])
                    for j, i in enumerate(idx):
                        texts[k][i], ids[k][i] = said[j], list(map(int, out[j]))
                bar.update(len(idx) * len(todo))
        return texts, ids

    def source_rows(self) -> list[list[int]]:
        """The patch's source: every prompt under the instruction (the condition's own rows when it runs)."""
        if "instruction" not in self.rows_by_condition:
            self.rows_by_condition["instruction"] = self.prompt_rows("instruction")
        return self.rows_by_condition["instruction"]

    def patch_deltas(self) -> dict[int, torch.Tensor]:
        """``{layer: [prompt, d_model]}``: the instruction run's site vector at the last prompt token
        minus the plain run's (adding it to the plain run writes the instruction run's value in)."""
        if getattr(self, "_deltas", None) is None:
            source, target = self.source_rows(), self.rows_by_condition["patched"]
            got = [self.oom_safe(lambda bs, r=r: capture_mod.capture(
                self.lm.model, self.lm.sites, r, self.layers, self.site, ("last",), bs, self.pad))["last"]
                for r in (source, target)]
            self._deltas = {L: got[0][j] - got[1][j] for j, L in enumerate(self.layers)}
        return self._deltas

    def patched_generate(self, rows, idx, todo, sampling) -> list[list[list[int]]]:
        """Condition ``patched``: each prompt with its own patch (at its last prompt token only),
        every cell of the prompt in one engine call."""
        deltas = self.patch_deltas()
        out: list[list[list[int]]] = [[] for _ in todo]
        for row, i in zip(rows, idx):
            gcells = [gen.GenCell() if L < 0 else gen.GenCell(L, s, deltas[L][i]) for _, L, s in todo]
            got = self.oom_safe(lambda bs, row=row, gcells=gcells: gen.generate(
                self.lm.model, self.lm.sites, [row], self.site, gcells, sampling, steer_on="prompt",
                steer_from=len(row) - 1, eos=self.eos, batch_size=bs, pad=self.pad))
            for c in range(len(todo)):
                out[c].append(got[c][0])
        return out

    def vllm_generate(self, rows, gcells, sampling) -> list[list[list[int]]]:
        """The rows on vLLM (``experiment.engine=vllm``): the same checkpoint, eager float32, no prefix cache."""
        from eas.backends import vllm as vllm_backend
        from eas.models import embedded_cache

        m = self.cfg.model
        folder = embedded_cache(m.id) if m.source == "embedded" else str(m.id)
        engine = vllm_backend.load(folder, seed=self.seed)
        return vllm_backend.generate(engine, rows, self.site, gcells, sampling, steer_on=self.x.steer_on,
                                     steer_from=self.x.steer_from, eos=self.eos, pad=self.pad)

    # -- step 4: scores ---------------------------------------------------------------------
    def scorer_context(self) -> scorers.Context:
        return scorers.Context(self.lm.model, self.lm.tokenizer, self.pad, self.batch_size,
                               self.cfg.prompt.format, str(self.store.root))

    def scores(self, cells, texts, ids) -> tuple[dict[str, dict[tuple, list[float]]], dict[str, str]]:
        """``{column: {(condition, cell, sample): [value per prompt]}}`` and the scorers that failed.

        ``texts`` and ``ids`` are ``generations``' (read or made in this run, kept in memory)."""
        x = self.x
        ctx = self.scorer_context()
        columns: dict[str, dict[tuple, list[float]]] = {}
        failed: dict[str, str] = {}
        for name, params in x.scorers.items():
            name, params = str(name), _params(params)
            module = str(params.pop("scorer", name))  # an entry may run a scorer under another name
            try:
                fn = scorers.load(module, params, ctx)
            except Exception as e:
                if isinstance(e, ConfigError):
                    raise
                failed[name] = f"{type(e).__name__}: {e}"
                log.error("scorer %s failed to start: %s", name, e)
                continue
            version = [module, params, getattr(fn, "fingerprint", None), self.lm.fingerprint]
            got: dict[str, dict[tuple, list[float]]] = {}  # this scorer's columns, kept only if it finishes
            n_hit = n_done = 0
            try:
                for condition in x.conditions:
                    for sample in range(int(x.samples)):
                        for idx in self.chunks():
                            for cell in cells:
                                k = (condition, cell[0], sample)
                                gk = self.gen_key(condition, cell, sample, idx)
                                sk = store.key("score", version, gk)
                                rec = self.store.get_json("scores", sk, _fits_columns(len(idx)))
                                if rec is None:
                                    rows = self.rows_by_condition[condition]
                                    samples = [scorers.Sample(self.prompts[i].text, texts[k][i], list(rows[i]),
                                                              ids[k][i]) for i in idx]
                                    rec = {"columns": fn(samples)}
                                    self.store.put_json("scores", sk, rec)
                                    n_done += 1
                                else:
                                    n_hit += 1
                                for col, values in rec["columns"].items():
                                    dest = got.setdefault(col, {}).setdefault(k, [math.nan] * len(self.prompts))
                                    for j, i in enumerate(idx):
                                        dest[i] = float(values[j])
            except Exception as e:
                if isinstance(e, (KeyboardInterrupt, ConfigError)):
                    raise
                failed[name] = f"{type(e).__name__}: {e}"
                log.error("scorer %s failed (%d records scored, kept in the store): %s", name, n_done, e)
                continue
            clash = sorted(set(got) & set(columns))
            if clash:
                raise ConfigError(f"experiment.scorers.{name} writes the columns {clash}, which another scorer "
                                  f"already wrote; give it another name (e.g. {name}: {{name: other}})")
            columns.update(got)
            log.info("scorer %s: %d records from the store, %d scored", name, n_hit, n_done)
        return columns, failed

    # -- step 5: curves and outputs -------------------------------------------------------
    def write(self, cells, vecs, texts, token_counts, columns, failed) -> dict[str, Any]:
        x, meta = self.x, self.meta()
        meta = {**meta, "prompts": self.prompt_set.name, "method": self.method, "preset": x.preset}
        gens = []
        for (condition, cname, sample), said in texts.items():
            _, L, s = next(c for c in cells if c[0] == cname)
            for i, p in enumerate(self.prompts):
                row = {**meta, "prompt_id": p.id, "category": p.category, "label": p.label,
                       "condition": condition, "cell": cname, "layer": L, "strength": s, "sample": sample,
                       "text": said[i], "n_tokens": token_counts[(condition, cname, sample)][i]}
                for col, by in columns.items():
                    row[col] = by[(condition, cname, sample)][i]
                gens.append(row)
        df = pd.DataFrame(gens)
        store.write_parquet(self.out / "generations.parquet", df)
        success = x.success
        summary: dict[str, Any] = {**meta, "n_prompts": len(self.prompts), "cells": len(cells),
                                   "conditions": list(x.conditions), "samples": int(x.samples),
                                   "failed_scorers": [{"scorer": k, "error": v} for k, v in failed.items()]}
        if success.column not in df.columns:
            why = (f"experiment.success.column={success.column!r} is not a score column "
                   f"(have: {', '.join(sorted(columns)) or 'none'})")
            if not failed:
                raise ConfigError(why + "; name a column of the scorers in experiment.scorers")
            summary["error"] = why + f"; the scorers {', '.join(failed)} failed (summary.json); re-run to resume"
            curves = pd.DataFrame()
        else:
            curves = self.curves(df, sorted(columns))
            store.write_parquet(self.out / "results.parquet", curves)
            summary["elbows"] = _elbows(curves)
            summary["curve"] = curves[["condition", "group", "layer", "strength", "n", "success_rate",
                                       "success_low", "success_high", "p_vs_unsteered"]].to_dict("records")
            if failed:
                summary["error"] = (f"scorers failed: {', '.join(failed)} (summary.json); the generations and "
                                    f"the other scores are kept, re-run to resume")
        self.write_vectors(vecs)
        from eas.report.generation import sample_sheet, write_generation_figures

        # the sheet shows each scorer's headline column; every column is in generations.parquet
        shown = [c for c in sorted(columns) if c == x.success.column or not (
            c.endswith(("_pos", "_neg", "_chars", "_words", "_mean_logprob")) or c.startswith("distinct_"))]
        store.write_text(self.out / "sample_sheet.md", sample_sheet(df, self.prompts, int(x.sample_sheet_prompts),
                                                                    shown))
        summary = self.finish(summary, headline(summary))
        if not curves.empty:
            self.figures(write_generation_figures, curves, self.out / "figures")
        return summary

    def curves(self, df: pd.DataFrame, score_cols: list[str]) -> pd.DataFrame:
        """One row per (condition, group, layer, strength): success with its interval, the elbow
        test against unsteered, every score's mean and paired change (see the module docstring)."""
        x, succ = self.x, self.x.success
        hit = (df[succ.column] > succ.threshold) if succ.above else (df[succ.column] < succ.threshold)
        df = df.assign(success=hit.astype(bool))
        groups = [("all", df)]
        if x.by_category:
            groups += [(c, d) for c, d in df.groupby("category", sort=True) if c]
        key = ["prompt_id", "sample"]
        out = []
        for condition in x.conditions:
            for group, d in groups:
                d = d[d.condition == condition]
                base = d[d.cell == UNSTEERED].set_index(key).sort_index()
                for L in self.layers:
                    layer_rows = []
                    for s in sorted({0.0, *self.strengths}):
                        cell = d[d.cell == (UNSTEERED if s == 0 else cell_name(L, s))].set_index(key).sort_index()
                        if cell.empty:
                            continue
                        k, n = int(cell.success.sum()), len(cell)
                        ci = stats.wilson_interval(k, n)
                        row = {"condition": condition, "group": group, "layer": L, "strength": s,
                               "cell": UNSTEERED if s == 0 else cell_name(L, s), "n": n, "successes": k,
                               "success_rate": k / n, "success_low": ci.low, "success_high": ci.high,
                               "p_vs_unsteered": 1.0 if s == 0 else stats.mcnemar(
                                   base.success.to_numpy(), cell.success.to_numpy(), exact=True,
                                   alternative="greater").p_value}
                        for col in ["n_tokens", *score_cols]:
                            row[f"mean_{col}"] = float(cell[col].mean())
                            if s == 0:
                                row[f"delta_{col}"], row[f"p_{col}"] = 0.0, 1.0
                                continue
                            a, b = cell[col].to_numpy(float), base[col].to_numpy(float)
                            row[f"delta_{col}"] = float((a - b).mean())
                            row[f"p_{col}"] = stats.paired_ttest(a, b).p_value if len(a) >= 2 else math.nan
                        layer_rows.append(row)
                    steered = [r for r in layer_rows if r["strength"] != 0]
                    adjusted = stats.holm([r["p_vs_unsteered"] for r in steered]) if steered else []
                    for r, p in zip(steered, adjusted):
                        r["p_holm"] = float(p)
                    for r in layer_rows:
                        r.setdefault("p_holm", 1.0)
                    elbow = _elbow(layer_rows, float(x.alpha))
                    for r in layer_rows:
                        r["elbow"] = elbow is not None and r["strength"] == elbow
                    out += layer_rows
        curves = pd.DataFrame(out)
        if x.by_category:
            curves = _compare_groups(curves, float(x.alpha))
        return curves


def _fits_columns(n: int):
    def check(rec: dict) -> bool:
        cols = rec.get("columns")
        return isinstance(cols, dict) and bool(cols) and all(
            isinstance(v, list) and len(v) == n and all(isinstance(f, (int, float)) and math.isfinite(f) for f in v)
            for v in cols.values())
    return check


def _elbow(layer_rows: list[dict], alpha: float) -> float | None:
    """The first strength (by |strength|, as the sweep goes out from 0) whose success is
    significantly above unsteered after Holm; None if none is."""
    for r in sorted((r for r in layer_rows if r["strength"] != 0), key=lambda r: (abs(r["strength"]), r["strength"])):
        if r["p_holm"] < alpha and r["success_rate"] > 0:
            return r["strength"]
    return None


def _elbows(curves: pd.DataFrame) -> list[dict]:
    out = []
    for (condition, group, layer), d in curves.groupby(["condition", "group", "layer"], sort=True):
        hit = d[d.elbow]
        out.append({"condition": condition, "group": group, "layer": int(layer),
                    "elbow_strength": float(hit.strength.iloc[0]) if len(hit) else None})
    return out


def _compare_groups(curves: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per (condition, layer, strength): each category's success against the other categories'
    (two categories: one against the other), Fisher's exact test; columns ``vs_rest_p``."""
    curves = curves.assign(vs_rest_p=np.nan)  # alpha: the reader's; the p-values are reported as they are
    cats = curves[curves.group != "all"]
    for (_, _, _), d in cats.groupby(["condition", "layer", "strength"]):
        for i, r in d.iterrows():
            rest = d.drop(index=i)
            if rest.empty:
                continue
            k2, n2 = int(rest.successes.sum()), int(rest.n.sum())
            table = [[int(r.successes), int(r.n - r.successes)], [k2, n2 - k2]]
            curves.loc[i, "vs_rest_p"] = float(fisher_exact(table).pvalue)
    del alpha
    return curves


def headline(s: dict) -> list[str]:
    lines = [(f"eas: {s['model']} generating on {s['prompts']} ({s['method']} @ {s['steer_target']}; "
              f"{s['n_prompts']} prompts x {s['cells']} cells x {len(s['conditions'])} conditions x "
              f"{s['samples']} samples)")]
    for e in s.get("elbows", []):
        where = f"{e['condition']}" + ("" if e["group"] == "all" else f"/{e['group']}")
        got = "none significant" if e["elbow_strength"] is None else f"strength {e['elbow_strength']:g}"
        lines.append(f"  elbow at layer {e['layer']} ({where}): {got}")
    if s.get("failed_scorers"):
        lines.append(f"  FAILED scorers: {', '.join(f['scorer'] for f in s['failed_scorers'])} (see summary.json)")
    lines.append("  samples side by side: sample_sheet.md")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Generate(cfg, out_dir).run()


def report(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """``eas-report``'s tables of generate runs: every run's curve, and the elbows."""
    frames, elbows = [], []
    for run_dir in runs:
        path = Path(run_dir) / "results.parquet"
        summary_path = Path(run_dir) / "summary.json"
        if not path.exists() or not summary_path.exists():
            continue
        s = store.read_json(summary_path)
        tag = {k: s.get(k) for k in ("model", "prompts", "method", "preset", "steer_target", "seed")}
        frames.append(pd.read_parquet(path).assign(**tag, run=str(run_dir)))
        elbows += [{**tag, **e, "run": str(run_dir)} for e in s.get("elbows", [])]
    if not frames:
        return {}
    curves = pd.concat(frames, ignore_index=True)
    keep = ["model", "prompts", "method", "preset", "condition", "group", "layer", "strength", "n",
            "success_rate", "success_low", "success_high", "p_holm", "elbow"]
    return {"curves": curves[[c for c in keep if c in curves.columns]], "elbows": pd.DataFrame(elbows)}

