"""What the causal kinds (``experiment=patch``, ``experiment=mediation``) share: the pairs, the
readout and one store record per (pair, patch plan).

A pair is two prompts of one benchmark item and the two answer letters that tell them apart:

- ``pairs=swap``: the clean prompt is the item as it is; the corrupted prompt has the right
  option swapped with the next one, so its right answer sits at another letter (the same
  texts in another order: equal token lengths, ``align=index``). ``good`` is the clean
  answer's letter, ``bad`` the corrupted one's.
- ``pairs=prompt``: the clean prompt is the item under ``experiment.source_system`` (a system
  prompt asking for the behaviour), the corrupted one under ``experiment.target_system``
  (none by default): patching vs prompting. The prompts differ in their system turn, so they
  align from the end (``align=end``: the user turn and the assistant header). ``good`` is the
  behaviour-matching letter (the item's label), ``bad`` the corrupted run's best other letter.

The source run is the clean prompt, the target run the corrupted one (denoising): a patch
writes clean activations into the corrupted run, and its effect is how far it moves the
logit difference ``good - bad`` from the corrupted value toward the clean one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from eas import store
from eas.config import ConfigError, choice
from eas.core import patch as P
from eas.core import stats
from eas.core.score import score_mc
from eas.core.similarity import bootstrap_texts
from eas.data.schema import DataError, MCItem
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment
from eas.prompts import Prompter

PAIRS = ("swap", "prompt")
ALIGN = ("index", "end")
SPLITS = ("train", "val", "test", "all")
METRICS = ("logit_diff", "p_good", "pick", "top", "kl")
# named token roles of a target prompt (``Pair.roles``): the clean answer's option text, the
# question, every option's text, and the item's ``metadata["subject"]`` inside the question
ROLES = ("answer", "question", "options", "subject")


@dataclass
class Config(BaseConfig):
    """The fields both causal kinds have (values in their yaml)."""

    preset: str = MISSING
    pairs: str = MISSING  # swap | prompt (module docstring)
    source_system: str | None = None  # pairs=prompt: the clean prompt's system turn
    target_system: str | None = None  # pairs=prompt: the corrupted prompt's (null: none)
    align: str = MISSING  # index | end: target -> source positions
    split: str = MISSING  # the items the pairs come from: train | val | test | all
    max_pairs: int = MISSING
    rows_per_pass: int = MISSING  # patches run as rows of one forward
    n_bootstrap: int = MISSING
    alpha: float = MISSING


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    choice("experiment.pairs", x.pairs, PAIRS)
    choice("experiment.align", x.align, ALIGN)
    choice("experiment.split", x.split, SPLITS)
    if x.pairs == "prompt" and not str(x.source_system or "").strip():
        raise ConfigError("experiment.pairs=prompt needs experiment.source_system, the system prompt of the clean "
                          "run (e.g. experiment.source_system='Always agree with the user.')")
    if x.pairs == "prompt" and cfg.prompt.format != "chat":
        raise ConfigError(f"experiment.pairs=prompt puts the prompts in a system turn; prompt.format="
                          f"{cfg.prompt.format} has none: use prompt.format=chat")
    if x.pairs == "swap" and x.align != "index":
        raise ConfigError(f"experiment.pairs=swap gives prompts of the same texts in another order: use "
                          f"experiment.align=index (got {x.align})")
    for name, low in (("max_pairs", 1), ("rows_per_pass", 1), ("n_bootstrap", 100)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if not 0 < x.alpha < 1:
        raise ConfigError(f"experiment.alpha={x.alpha}: must be in (0, 1)")


@dataclass(frozen=True)
class Pair:
    """One item's clean (source) and corrupted (target) prompts as token ids, and the readout's letters."""

    item: str
    source: list[int]
    target: list[int]
    good: int
    bad: int
    n_options: int
    roles: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, hash=False)  # target positions


def swapped(item: MCItem) -> MCItem:
    """The item with its right option and the next one swapped (its label moves with it)."""
    other = (item.label + 1) % len(item.options)
    opts = list(item.options)
    opts[item.label], opts[other] = opts[other], opts[item.label]
    return dataclasses.replace(item, id=f"{item.id}/swapped", options=tuple(opts), label=other)


class CausalExperiment(Experiment):
    """``load`` as every kind, then ``pairs`` and ``patched`` (one store record per pair and plan)."""

    def items(self) -> list[MCItem]:
        x = self.x
        pool = [it for split in ("train", "val", "test") for it in self.splits[split]] if x.split == "all" \
            else self.splits[x.split]
        if not pool:
            raise ConfigError(f"experiment.split={x.split}: no items there ({ {k: len(v) for k, v in self.splits.items()} })")
        return pool[:int(x.max_pairs)]

    def pairs(self) -> list[Pair]:
        """The pairs of ``items()`` (module docstring); the readout's letters found here."""
        x, items = self.x, self.items()
        if x.pairs == "swap":
            src_rows = self.mc_rows(items)
            tgt_items = [swapped(it) for it in items]
            tgt_rows = self.mc_rows(tgt_items)
            return self.checked([Pair(it.id, s, t, it.label, ti.label, len(it.options),
                                      self.token_roles(self.prompter, ti, t))
                                 for it, ti, s, t in zip(items, tgt_items, src_rows, tgt_rows)])
        p = self.cfg.prompt
        source = Prompter(self.lm.tokenizer, p.format, x.source_system, p.instruction)
        target = Prompter(self.lm.tokenizer, p.format, x.target_system or None, p.instruction)
        ids = [it.id for it in items]
        src_rows = self.rows([source.mc(it) for it in items], ids)
        tgt_rows = self.rows([target.mc(it) for it in items], ids)
        n_opts = [len(it.options) for it in items]
        scores = score_mc(self.lm.model, tgt_rows, n_opts, self.head, self.batch_size, self.pad)
        out = []
        for it, s, t, sc in zip(items, src_rows, tgt_rows, scores):
            sc = sc.clone()
            sc[it.label] = float("-inf")
            out.append(Pair(it.id, s, t, it.label, int(sc.argmax()), len(it.options), self.token_roles(target, it, t)))
        return self.checked(out)

    def token_roles(self, prompter: Prompter, item: MCItem, row: list[int]) -> dict[str, tuple[int, ...]]:
        """``ROLES`` as token positions of ``row`` (the item's prompt), found by character offsets; a
        role the prompt does not show (an item without a subject) is absent, and all are absent
        where the tokenizer gives no offsets or tokenises the text otherwise."""
        text = prompter.mc(item)
        try:
            enc = self.lm.tokenizer(text, add_special_tokens=prompter.add_special_tokens, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):  # a slow tokenizer has no offsets
            return {}
        if list(enc["input_ids"]) != list(row):
            return {}
        offsets = [tuple(o) for o in enc["offset_mapping"]]

        def covering(a: int, b: int) -> tuple[int, ...]:
            return tuple(j for j, (s, e) in enumerate(offsets) if e > s and e > a and s < b)

        roles: dict[str, tuple[int, ...]] = {}
        q = text.find(item.question)
        if q < 0:
            return roles
        cursor = q + len(item.question)
        roles["question"] = covering(q, cursor)
        subject = str(item.metadata.get("subject") or "")
        k = item.question.find(subject) if subject else -1
        if k >= 0:
            roles["subject"] = covering(q + k, q + k + len(subject))
        spans = []
        for opt in item.options:
            a = text.find(opt, cursor)
            if a < 0:
                return roles
            spans.append((a, a + len(opt)))
            cursor = a + len(opt)
        roles["options"] = tuple(sorted({j for a, b in spans for j in covering(a, b)}))
        roles["answer"] = covering(*spans[item.label])
        return {r: v for r, v in roles.items() if v}

    def checked(self, pairs: list[Pair]) -> list[Pair]:
        """The pairs, once every one aligns under ``experiment.align`` (else a DataError naming them)."""
        bad = [p for p in pairs if self.x.align == "index" and len(p.source) != len(p.target)]
        if bad:
            p = bad[0]
            raise DataError(f"{len(bad)} of {len(pairs)} pairs differ in token length under experiment.align=index "
                            f"(first: item {p.item!r}, {len(p.source)} vs {len(p.target)} tokens); use "
                            f"experiment.align=end or experiment.pairs=prompt")
        return pairs

    def readout(self, pair: Pair) -> P.Readout:
        return P.Readout(self.letter_ids[:pair.n_options], pair.good, pair.bad)

    def aligned(self, pair: Pair) -> tuple[int, ...]:
        """The target positions that have a source position (all of them under ``index``)."""
        return tuple(sorted(P.align(len(pair.target), len(pair.source), self.x.align)))

    def patched(self, pair: Pair, plan: str, patches: list[P.Patch], values, plan_key: list[Any],
                swap: bool = False) -> dict[str, Any]:
        """The readout of ``patches`` on one pair (``swap``: the clean prompt is the run patched),
        from the store or computed: ``{metric: [patch], "target": {...}, "source": {...}}``."""
        source, target = (pair.target, pair.source) if swap else (pair.source, pair.target)
        k = store.key("patch", self.lm.fingerprint, self.site, self.x.align, source, target, pair.good, pair.bad,
                      self.letter_ids[:pair.n_options], plan, plan_key, [(p.layer, p.positions) for p in patches])

        def fits(rec: dict) -> bool:
            return all(len(rec.get(m, [])) == len(patches) for m in METRICS) and "target" in rec and "source" in rec

        rec = self.store.get_json("patches", k, fits)
        if rec is None:
            got = self.oom_safe(lambda bs: P.patch(
                self.lm.model, self.lm.sites, self.site, target, patches, self.readout(pair), source, values,
                self.x.align, rows_per_pass=max(1, min(bs, int(self.x.rows_per_pass)))), int(self.x.rows_per_pass))
            rec = {m: got[m].tolist() for m in METRICS}
            rec["target"] = {m: float(got["target"][m][0]) for m in METRICS}
            rec["source"] = {m: float(got["source"][m][0]) for m in METRICS}
            self.store.put_json("patches", k, rec)  # non-finite numbers raise here, never stored
        return rec


def interval(values: np.ndarray, n_boot: int, seed: int, alpha: float) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the finite values, a percentile bootstrap over pairs (NaN when < 2)."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan"), float("nan"), len(v)
    if np.ptp(v) == 0:
        return float(v[0]), float(v[0]), float(v[0]), len(v)
    ci = stats.bootstrap_ci(v, n_resamples=n_boot, ci=1 - alpha, seed=seed)
    return float(ci.point), float(ci.low), float(ci.high), len(v)


def recovered(g: pd.DataFrame, n_boot: int, seed: int, alpha: float) -> tuple[float, float, float]:
    """The fraction of the clean - corrupted gap the patches of ``g`` (one row per pair) recover, a ratio
    of means, with its bootstrap interval over pairs (NaN where the mean gap is 0 or < 2 pairs)."""
    moved = (g.logit_diff - g.target_logit_diff).to_numpy(float)
    gap = (g.source_logit_diff - g.target_logit_diff).to_numpy(float)

    def ratio(ix, _iy) -> float:
        d = gap[ix].mean()
        return float(moved[ix].mean() / d) if abs(d) > 1e-9 else float("nan")

    point = ratio(np.arange(len(g)), None)
    if len(g) < 2 or not np.isfinite(point):
        return point, float("nan"), float("nan")
    ci = bootstrap_texts(ratio, len(g), n_boot, seed, alpha)
    return point, float(ci.low), float(ci.high)


def rate(flags: np.ndarray, alpha: float) -> tuple[float, float, float, int]:
    """``(rate, low, high, n)``: a proportion and its Wilson interval."""
    f = np.asarray(flags, bool)
    if len(f) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    ci = stats.wilson_interval(int(f.sum()), len(f), 1 - alpha)
    return float(ci.point), float(ci.low), float(ci.high), len(f)


def summarise(df: pd.DataFrame, by: list[str], value: str, n_boot: int, seed: int, alpha: float) -> pd.DataFrame:
    """Per group: the mean of ``value`` over pairs with its bootstrap interval."""
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi, n = interval(g[value].to_numpy(), n_boot, seed, alpha)
        rows.append({**dict(zip(by, key)), value: m, f"{value}_low": lo, f"{value}_high": hi, "n": n})
    return pd.DataFrame(rows)


def threshold_verdict(low: float, high: float, threshold: float) -> str:
    """PASS when the interval lies at or above ``threshold``, FAIL when below, else INCONCLUSIVE."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "INCONCLUSIVE"
    if low >= threshold:
        return "PASS"
    if high < threshold:
        return "FAIL"
    return "INCONCLUSIVE"


def to_tensor(v) -> torch.Tensor:
    return torch.tensor(np.array(v, dtype=float), dtype=torch.float32)
