"""experiment=pairs: contrast pairs written by a generator model, validated, as a pair file.

1. load the generator (the job's model: the embedded one locally, any HF model on a GPU, on
   SLURM or Vast.ai) and the scenarios (``prompts``: every prompt is a scenario);
2. write both sides of every scenario: the reply under ``experiment.positive`` and under
   ``experiment.negative`` (each a system prompt), greedy or sampled, in one batched engine
   call per side (``eas.core.generate``, unsteered), each side a store record;
3. validate every candidate pair, each check a column and a reason to drop:
   - ``empty``: a side said nothing;
   - ``judge``: with ``experiment.judge.rubric``, a local judge must say yes to the positive
     side and no to the negative one (P(yes) above / below 0.5);
   - ``sentiment``: the positive side's VADER compound minus the negative side's must be at
     least ``experiment.min_sentiment_gap`` (null: not checked);
   - ``overlap``: the sides' word sets (Jaccard) must overlap less than ``experiment.max_overlap``
     (two near-identical sides contrast nothing);
   - ``duplicate``: a pair whose positive or negative side is a near-duplicate (word-trigram
     Jaccard >= ``experiment.max_duplicate``) of a side of a pair kept before it;
4. write ``pairs.jsonl`` in the ``pairs`` format the other experiments read
   (``eas benchmark=pairs_kindness benchmark.path=<run>/pairs.jsonl``), ``candidates.parquet``
   (every candidate, its scores and why it was dropped) and the manifest of how it was made.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import MISSING, DictConfig

from eas import store
from eas.config import ConfigError
from eas.core import generate as gen
from eas.core import tokens
from eas.data import load_prompts
from eas.data.schema import DataError
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment
from eas.scorers import base as scorers

log = logging.getLogger("eas")
SIDES = ("positive", "negative")


@dataclass
class PairJudgeConfig:
    rubric: str | None = None  # {question}, {response}; yes = the positive trait. null: no judge check
    model: str = "same"  # the generator itself, or a conf/model preset name


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/pairs.yaml``."""

    trait: str = MISSING  # the trait's name, written into the pair file's metadata
    positive: str = MISSING  # the system prompt of the positive side
    negative: str = MISSING  # the system prompt of the negative side
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_p: float = MISSING
    judge: PairJudgeConfig = field(default_factory=PairJudgeConfig)
    min_sentiment_gap: float | None = None  # positive minus negative VADER compound; null: not checked
    max_overlap: float = MISSING  # word-set Jaccard between the sides at or above which a pair is dropped
    max_duplicate: float = MISSING  # word-trigram Jaccard to a kept side at or above which a pair is dropped


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    for side in SIDES:
        if not str(x[side] or "").strip():
            raise ConfigError(f"experiment.{side} is empty: the system prompt that makes the {side} side")
    if x.max_new_tokens < 1:
        raise ConfigError(f"experiment.max_new_tokens={x.max_new_tokens}: must be >= 1")
    if x.temperature < 0 or not 0 < x.top_p <= 1:
        raise ConfigError(f"experiment.temperature={x.temperature}, experiment.top_p={x.top_p}: "
                          f"temperature >= 0 and top_p in (0, 1]")
    for name in ("max_overlap", "max_duplicate"):
        if not 0 < x[name] <= 1:
            raise ConfigError(f"experiment.{name}={x[name]}: a Jaccard similarity in (0, 1]")
    if x.judge.rubric:
        scorers.check("judge", {"rubric": x.judge.rubric, "model": x.judge.model}, "experiment.judge")


def words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'()").lower() for w in text.split() if w.strip(".,;:!?\"'()")]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def trigrams(text: str) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i:i + 3]) for i in range(max(1, len(w) - 2))} if w else set()


class Pairs(Experiment):
    def run(self) -> dict[str, Any]:
        x, cfg = self.x, self.cfg
        self.prompt_set = load_prompts(cfg.prompts)
        self.load_model(steered=False)
        prompts = list(self.prompt_set.prompts)
        sides = {side: self.write_side(prompts, str(x[side])) for side in SIDES}
        df = self.validate_pairs(prompts, sides)
        kept = df[df.kept]
        out = self.out / "pairs.jsonl"
        lines = [json.dumps({"id": r.id, "prompt": r.prompt, "positive": r.positive, "negative": r.negative,
                             "metadata": {"trait": x.trait, "scenario": r.scenario, "category": r.category,
                                          **({"judge_positive": r.judge_positive, "judge_negative": r.judge_negative}
                                             if "judge_positive" in df else {}),
                                          "sentiment_gap": r.sentiment_gap}})
                 for r in kept.itertuples()]
        store.write_text(out, "".join(line + "\n" for line in lines))
        store.write_parquet(self.out / "candidates.parquet", df)
        dropped = {k: int(v) for k, v in df[~df.kept].reason.value_counts().items()}
        summary = {"experiment": x.name, "model": self.lm.name, "prompts": self.prompt_set.name, "trait": x.trait,
                   "candidates": len(df), "kept": int(df.kept.sum()), "dropped": dropped,
                   "pair_file": str(out), "how": {"positive": x.positive, "negative": x.negative,
                                                  "max_new_tokens": int(x.max_new_tokens),
                                                  "temperature": float(x.temperature), "top_p": float(x.top_p),
                                                  "judge": x.judge.rubric, "min_sentiment_gap": x.min_sentiment_gap,
                                                  "max_overlap": float(x.max_overlap),
                                                  "max_duplicate": float(x.max_duplicate), "seed": self.seed}}
        if not summary["kept"]:
            summary["error"] = (f"no pair passed validation ({dropped}); see candidates.parquet, and loosen the "
                                f"checks or change experiment.positive / experiment.negative")
        headline = [(f"eas: {self.lm.name} wrote {len(df)} candidate {x.trait} pairs from {self.prompt_set.name}; "
                     f"kept {summary['kept']} (dropped: {dropped or 'none'})"),
                    f"  use them: eas benchmark=pairs_kindness benchmark.name={x.trait} benchmark.path={out}"]
        return self.finish(summary, headline)

    def data_identity(self) -> dict[str, str]:
        return {"data_fingerprint": self.prompt_set.fingerprint(), "data_source": self.prompt_set.source}

    def write_side(self, prompts, system: str) -> list[str]:
        """Every scenario answered under ``system``: one store record per side."""
        x = self.x
        texts = [self.prompter.generation(p.text, "\n\n".join(t for t in (p.system, system) if t)) for p in prompts]
        rows = tokens.encode(self.lm.tokenizer, texts, self.prompter.add_special_tokens)
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        for p, row in zip(prompts, rows):
            if limit and len(row) + int(x.max_new_tokens) > limit:
                raise DataError(f"prompt {p.id!r} of prompt set {self.prompt_set.name} is {len(row)} tokens; with "
                                f"experiment.max_new_tokens={x.max_new_tokens} the model's context ({limit}) is exceeded")
        sampling = gen.Sampling(int(x.max_new_tokens), float(x.temperature), float(x.top_p), self.seed)
        eos = self.lm.model.generation_config.eos_token_id
        k = store.key("pair_side", self.lm.fingerprint, rows, [sampling.max_new_tokens, sampling.temperature,
                                                                 sampling.top_p, sampling.seed], eos)
        rec = self.store.get_json("generations", k, lambda r: isinstance(r.get("texts"), list)
                                  and len(r["texts"]) == len(rows) and all(isinstance(t, str) for t in r["texts"]))
        if rec is None:
            with self.bar(len(rows), "write side") as bar:
                got = self.oom_safe(lambda bs: gen.generate(self.lm.model, self.lm.sites, rows, "residual",
                                                            [gen.GenCell()], sampling, batch_size=bs, pad=self.pad,
                                                            progress=bar.update))
            rec = {"texts": [self.lm.tokenizer.decode(t, skip_special_tokens=True).strip() for t in got[0]]}
            self.store.put_json("generations", k, rec)
        return rec["texts"]

    def validate_pairs(self, prompts, sides: dict[str, list[str]]) -> pd.DataFrame:
        x = self.x
        ctx = scorers.Context(self.lm.model, self.lm.tokenizer, self.pad, self.batch_size, self.cfg.prompt.format,
                              str(self.store.root))
        pos, neg = sides["positive"], sides["negative"]
        df = pd.DataFrame({"id": [f"{x.trait}-{i:04d}" for i in range(len(prompts))],
                           "scenario": [p.id for p in prompts], "category": [p.category for p in prompts],
                           "prompt": [p.text for p in prompts], "positive": pos, "negative": neg})

        def samples(texts):
            return [scorers.Sample(p.text, t, [], []) for p, t in zip(prompts, texts)]

        sentiment = scorers.load("sentiment", {}, ctx)
        df["sentiment_gap"] = [a - b for a, b in zip(sentiment(samples(pos))["sentiment"],
                                                     sentiment(samples(neg))["sentiment"])]
        if x.judge.rubric:
            judge = scorers.load("judge", {"rubric": x.judge.rubric, "model": x.judge.model}, ctx, "experiment.judge")
            df["judge_positive"] = judge(samples(pos))["judge"]
            df["judge_negative"] = judge(samples(neg))["judge"]
        df["overlap"] = [jaccard(set(words(a)), set(words(b))) for a, b in zip(pos, neg)]
        reasons = []
        kept_sides: list[set] = []
        for r in df.itertuples():
            if not r.positive or not r.negative:
                why = "empty"
            elif x.judge.rubric and not (r.judge_positive > 0.5 > r.judge_negative):
                why = "judge"
            elif x.min_sentiment_gap is not None and r.sentiment_gap < float(x.min_sentiment_gap):
                why = "sentiment"
            elif r.overlap >= float(x.max_overlap):
                why = "overlap"
            elif any(jaccard(trigrams(side), k) >= float(x.max_duplicate)
                     for side in (r.positive, r.negative) for k in kept_sides):
                why = "duplicate"
            else:
                why = ""
                kept_sides += [trigrams(r.positive), trigrams(r.negative)]
            reasons.append(why)
        return df.assign(reason=reasons, kept=[not w for w in reasons])


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Pairs(cfg, out_dir).run()
