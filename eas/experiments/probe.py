"""experiment=probe: what one site's activations encode, layer by layer, with honest statistics.

1. load model and benchmark (``Experiment.load``) and build the target's rows:
   - trait (A/B behaviour sets): per item, "prompt + behaviour-matching letter" (1) and
     "prompt + other letter" (0), the CAA contrast pair (``eas.methods.base.caa_pairs``);
   - error (multiple choice): per item, the scoring prompt; 1 = the unsteered answer is right;
2. capture every layer's activations once per pooling (``Experiment.activations``, store-cached);
3. per (pooling, layer): a logistic-regression probe (C by inner CV) and a mean-difference
   probe, scored out-of-fold (stratified k-fold over items, pairs kept together) or
   train -> test; AUROC and accuracy with 95% CIs; the AUROC null of random unit
   directions and each probe's empirical p-value against it; CCS on the pairs (trait);
4. lexical ablation: ``experiment.lexical_words`` removed from the item texts, the
   logistic probe re-run, the AUROC drop reported;
5. abstention (error): the accuracy-coverage curve of the best probe's P(right) against the
   model's own max letter probability, and the selective accuracy at ``abstain_threshold``;
6. write ``probe_results.parquet``, ``probe_scores.parquet``, ``probes/*.safetensors``
   (usable as steering vectors: ``eas method=probe method.vector_path=<run dir>``),
   figures, ``summary.json``, ``summary_table.md`` and ``manifest.json``.

Each (pooling, layer) result is a content-addressed record in the store: a re-run, or a
job over more layers, recomputes only what is missing.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig, ListConfig

from eas import store
from eas.config import POSITIONS, ConfigError, choice
from eas.core import probes, stats
from eas.data.schema import MCItem
from eas.experiments.base import SPLITS, Experiment
from eas.experiments.base import Config as BaseConfig
from eas.experiments.verdicts import write_premortem
from eas.methods.base import TooFewExamples, caa_pairs, check_size

log = logging.getLogger("eas")
SUPERVISED = ("logreg", "mean_diff")
PM2_THRESHOLD = 0.55  # the seed plan's: the error probe's accuracy, read as balanced accuracy (0.5 = chance)
TARGETS = ("auto", "trait", "error")


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*``; the values are in ``conf/experiment/probe.yaml``."""

    target: str = MISSING  # auto (trait on A/B sets, error otherwise) | trait | error
    folds: int = MISSING  # stratified k-fold over items; 0 = fit on train, pick the layer on val, report test
    pooling: Any = MISSING  # last | mid | mean, or a list of them; null = method.position
    inner_folds: int = MISSING  # inner CV that picks the logistic-regression C from c_grid
    c_grid: list[float] = MISSING
    n_random: int = MISSING  # random unit directions in the AUROC null
    n_bootstrap: int = MISSING  # resamples of the AUROC confidence intervals
    ccs_restarts: int = MISSING  # CCS random restarts (0 = no CCS)
    ccs_epochs: int = MISSING
    abstain_threshold: float = MISSING  # answer when the error probe's P(right) >= this, else abstain
    lexical_words: list[str] = MISSING  # removed from item texts, probe re-run
    premortem: int | None = None  # 2 (conf/experiment/premortem2.yaml): write pm2.json and pm2_summary.md


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    choice("experiment.target", x.target, TARGETS)
    if x.folds == 1 or x.folds < 0:
        raise ConfigError(f"experiment.folds={x.folds}: use k >= 2 (stratified k-fold) or 0 (the train/val/test split)")
    for p in poolings(cfg):
        choice("experiment.pooling", p, POSITIONS)
    for name, low in (("inner_folds", 2), ("n_random", 1), ("n_bootstrap", 100), ("ccs_restarts", 0),
                      ("ccs_epochs", 1)):
        if x[name] < low:
            raise ConfigError(f"experiment.{name}={x[name]}: must be >= {low}")
    if not x.c_grid or any(not c > 0 for c in x.c_grid):
        raise ConfigError(f"experiment.c_grid={list(x.c_grid)}: give positive inverse strengths, e.g. [0.01,0.1,1]")
    if not 0.0 <= x.abstain_threshold <= 1.0:
        raise ConfigError(f"experiment.abstain_threshold={x.abstain_threshold}: a probability in [0, 1]")


@dataclass
class Rows:
    """The probe's data: one row per text.

    Attributes:
        target: ``trait`` or ``error``.
        texts: ``[rows]`` prompts whose activations are the features.
        labels: ``[rows]`` 1 = positive (behaviour-matching text / answered right).
        groups: ``[rows]`` item index; rows of one item share a fold.
        split: ``[rows]`` the item's split (train, val, test).
        item_ids: ``[rows]``.
        option: ``[rows]`` index of the appended answer letter (trait), else -1.
        pairs: ``[items, 2]`` rows of each item's first and second member in letter order
            (trait), for CCS; None for error.
        confidence: ``[rows]`` the model's max letter probability (error), else None.
    """

    target: str
    texts: list[str]
    labels: np.ndarray
    groups: np.ndarray
    split: np.ndarray
    item_ids: list[str]
    option: np.ndarray
    pairs: np.ndarray | None = None
    confidence: np.ndarray | None = None

    @property
    def pair_labels(self) -> np.ndarray:
        """``[items]`` 1 where the first member of the pair is the positive one."""
        return self.labels[self.pairs[:, 0]]

    @property
    def strata(self) -> np.ndarray | None:
        """What folds balance besides the labels: for a trait, the letter of each item's
        positive (pairs balance the labels by themselves; see ``probes.fold_indices``)."""
        if self.pairs is None:
            return None
        positive_letter = np.empty(int(self.groups.max()) + 1, int)
        positive_letter[self.groups[self.labels == 1]] = self.option[self.labels == 1]
        return positive_letter[self.groups]

    def fingerprint(self) -> str:
        return store.key(self.target, self.texts, self.labels.tolist(), self.groups.tolist())


@dataclass
class Protocol:
    """How probes are fitted and scored.

    Attributes:
        splits: ``(train_rows, test_rows)`` per fold; every evaluated row is in one test fold.
        evaluate: ``[rows]`` mask of rows whose out-of-fold scores are reported.
        select: ``[rows]`` mask of rows whose scores pick the best layer.
        refit: ``[rows]`` mask of rows the saved probe is fitted on; None = the one fold's probe.
        name: How to describe it in tables.
    """

    splits: list[tuple[np.ndarray, np.ndarray]]
    evaluate: np.ndarray
    select: np.ndarray
    refit: np.ndarray | None
    name: str


def poolings(cfg: DictConfig) -> list[str]:
    p = cfg.experiment.pooling
    if p is None:
        return [cfg.method.position]
    return [str(v) for v in p] if isinstance(p, (ListConfig, list, tuple)) else [str(p)]


def strip_words(item: MCItem, words: list[str]) -> MCItem:
    """The item with every whole-word occurrence of ``words`` removed (case-insensitive)
    from its context, question and options; the spaces left behind are collapsed."""
    if not words:
        return item
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)

    def clean(text: str) -> str:
        return re.sub(r"[ \t]{2,}", " ", pattern.sub("", text)).strip(" \t")

    return replace(item, context=clean(item.context), question=clean(item.question),
                   options=tuple(clean(o) for o in item.options))


class Probe(Experiment):
    """The probe protocol; loading, prompts and the activation cache are the base's."""

    def __init__(self, cfg: DictConfig, out_dir: Path):
        super().__init__(cfg, out_dir)
        self.poolings = poolings(cfg)

    # -- step 1 -----------------------------------------------------------
    def resolve_target(self) -> str:
        t = self.x.target
        if t == "auto":
            return "trait" if self.bench.kind == "ab" else "error"
        return str(t)

    def items(self) -> tuple[list[MCItem], list[str]]:
        items, split_of = [], []
        for split in SPLITS:
            items += self.splits[split]
            split_of += [split] * len(self.splits[split])
        return items, split_of

    def build_rows(self, target: str, items: list[MCItem], split_of: list[str],
                   correct: np.ndarray | None = None, confidence: np.ndarray | None = None) -> Rows:
        n = len(items)
        ids = [it.id for it in items]
        if target == "error":
            return Rows("error", [self.prompter.mc(it) for it in items], correct.astype(int), np.arange(n),
                        np.asarray(split_of), ids, np.full(n, -1), None, confidence)
        # the CAA pair (steering's mean_diff/probe contrast) with the model's answers taken
        # as right, so the other letter is the seeded random wrong option (A/B: the other one)
        answers = [it.label for it in items]
        c = check_size(caa_pairs(items, answers, self.prompter, self.seed), "probe", items, answers,
                       int(self.cfg.method.min_per_class))
        other = np.array([it.letters.index(neg[len(self.prompter.mc(it)) + 1:])
                          for it, neg in zip(items, c.negatives)])
        label = np.array([it.label for it in items])
        first = np.where(label < other, np.arange(n), n + np.arange(n))
        second = np.where(label < other, n + np.arange(n), np.arange(n))
        return Rows("trait", c.positives + c.negatives, np.r_[np.ones(n, int), np.zeros(n, int)],
                    np.r_[np.arange(n), np.arange(n)], np.asarray(split_of * 2), ids * 2,
                    np.r_[label, other], np.stack([first, second], 1))

    def protocol(self, rows: Rows) -> Protocol:
        folds = int(self.x.folds)
        if folds >= 2:
            try:
                splits = probes.fold_indices(rows.labels, folds, rows.groups, self.seed, rows.strata)
            except ValueError as e:
                raise TooFewExamples(f"experiment.folds={folds}: {e} (target={rows.target}, "
                                               f"{len(set(rows.groups.tolist()))} items)") from None
            every = np.ones(len(rows.labels), bool)
            return Protocol(splits, every, every, every, f"{folds}-fold out-of-fold")
        train = rows.split == "train"
        for split in SPLITS:
            ys = rows.labels[rows.split == split]
            if len(set(ys.tolist())) < 2:
                raise TooFewExamples(
                    f"target={rows.target}: the {split} split has only one class ({len(ys)} rows); "
                    f"use experiment.folds=5 or more items")
        return Protocol([(np.flatnonzero(train), np.flatnonzero(~train))], rows.split == "test",
                        rows.split == "val", None, "train -> val (layer) -> test")

    # -- steps 2 and 3 ----------------------------------------------------
    def probe_key(self, rows: Rows, proto: Protocol, pooling: str, layer: int, kinds: tuple[str, ...]) -> str:
        x = self.x
        folds = store.key([te.tolist() for _, te in proto.splits], proto.evaluate.tolist(), proto.select.tolist())
        return store.key("probe", self.base_key, rows.fingerprint(), folds, self.site, pooling, layer, kinds,
                         int(x.folds), int(x.inner_folds), [float(c) for c in x.c_grid], int(x.n_random),
                         int(x.n_bootstrap), int(x.ccs_restarts), int(x.ccs_epochs), self.seed)

    def probe_layers(self, rows: Rows, proto: Protocol, pooling: str,
                     kinds: tuple[str, ...] = ("logreg", "mean_diff", "random", "ccs")) -> dict[int, dict]:
        """``{layer: record}`` for every requested layer; from the store where done."""
        keys = {L: self.probe_key(rows, proto, pooling, L, kinds) for L in self.layers}
        out = {L: self.store.get_json("probes", k) for L, k in keys.items()}
        todo = [L for L in self.layers if out[L] is None]
        if not todo:
            return out
        self.position = pooling  # Experiment.activations reads this rule
        acts = self.activations(rows.texts)
        ccs = {}
        if "ccs" in kinds and rows.pairs is not None and int(self.x.ccs_restarts) > 0:
            ccs = self.ccs(np.stack([acts[L].numpy() for L in todo]), rows, proto, todo)
        for L in todo:
            t0 = time.perf_counter()
            rec, weights = self.probe_layer(acts[L].numpy(), rows, proto, kinds)
            if L in ccs:
                rec["ccs"], weights["ccs_direction"] = ccs[L]
            self.store.put_json("probes", keys[L], rec, undefined_ok=True)  # e.g. CCS AUROC on one class
            self.store.put_tensors("vectors", keys[L], {k: torch.as_tensor(np.asarray(v), dtype=torch.float32)
                                                         for k, v in weights.items()})
            out[L] = rec
            log.info("%s L%d (%s): %s (%.1fs)", rows.target, L, pooling,
                     ", ".join(f"{k} AUROC {rec[k]['auroc']:.3f}" for k in SUPERVISED if k in rec),
                     time.perf_counter() - t0)
        return out

    def probe_layer(self, x: np.ndarray, rows: Rows, proto: Protocol,
                    kinds: tuple[str, ...]) -> tuple[dict, dict[str, np.ndarray]]:
        """Supervised probes and the random-direction null at one layer."""
        cfg = self.x
        y, ev, sel = rows.labels, proto.evaluate, proto.select
        fits = {
            "logreg": lambda xt, yt, gt: probes.fit_logistic(xt, yt, list(cfg.c_grid), int(cfg.inner_folds), gt,
                                                             self.seed),
            "mean_diff": lambda xt, yt, gt: probes.fit_mean_diff(xt, yt),
        }
        null = probes.random_direction_baseline(x[ev], y[ev], int(cfg.n_random), self.seed) \
            if "random" in kinds else None
        rec: dict[str, Any] = {"n": int(ev.sum()), "n_pos": int(y[ev].sum())}
        if null is not None:
            rec["random"] = {"best": null.best, "low": null.low, "high": null.high, "mean": null.mean,
                             "n_directions": len(null.null)}
        weights: dict[str, np.ndarray] = {}
        for name in SUPERVISED:
            if name not in kinds:
                continue
            cv = probes.cross_validate(x, y, fits[name], proto.splits, rows.groups)
            m = probes.evaluate(y[ev], cv.scores[ev], n_resamples=int(cfg.n_bootstrap), seed=self.seed)
            final = fits[name](x[proto.refit], y[proto.refit], rows.groups[proto.refit]) \
                if proto.refit is not None else cv.probes[0]
            rec[name] = {
                "auroc": m.auroc.point, "auroc_low": m.auroc.low, "auroc_high": m.auroc.high,
                "accuracy": m.accuracy.point, "accuracy_low": m.accuracy.low, "accuracy_high": m.accuracy.high,
                "select_auroc": stats.auroc(y[sel], cv.scores[sel]),
                "p_random": null.p_value(m.auroc.point) if null is not None else None,
                "c": final.c, "fold_c": [p.c for p in cv.probes],
                "scores": [None if np.isnan(s) else float(s) for s in cv.scores],
            }
            weights[f"{name}_weight"] = final.weight
            weights[f"{name}_bias"] = np.array([final.bias])
        if "logreg_weight" in weights and "mean_diff_weight" in weights:
            # steering-ready: the logistic direction at the scale of the mean difference (as
            # eas.core.vectors.probe_direction), so strengths compare across methods
            w = weights["logreg_weight"]
            weights["vector"] = w / (np.linalg.norm(w) or 1.0) * np.linalg.norm(weights["mean_diff_weight"])
        return rec, weights

    def ccs(self, x: np.ndarray, rows: Rows, proto: Protocol, layers: list[int]) -> dict[int, tuple[dict, np.ndarray]]:
        """CCS on each item's pair for ``x`` = ``[layer, rows, d]``, out-of-fold like the probes;
        the sign of each fold's probe is set on its train labels (a reporting convention)."""
        cfg = self.x
        pairs, pl = rows.pairs, rows.pair_labels
        kw = {"n_restarts": int(cfg.ccs_restarts), "epochs": int(cfg.ccs_epochs), "seed": self.seed}
        prob = np.full((len(layers), len(pairs)), np.nan)
        fold_probes = []
        for tr, te in proto.splits:
            in_tr, in_te = np.isin(pairs[:, 0], tr), np.isin(pairs[:, 0], te)
            fitted = probes.fit_ccs_layers(x[:, pairs[in_tr, 0]], x[:, pairs[in_tr, 1]], pl[in_tr], **kw)
            for i, p in enumerate(fitted):
                prob[i, in_te] = p.predict_proba(x[i, pairs[in_te, 0]], x[i, pairs[in_te, 1]])
            fold_probes.append(fitted)
        if proto.refit is not None:
            final = probes.fit_ccs_layers(x[:, pairs[:, 0]], x[:, pairs[:, 1]], pl, **kw)
        else:
            final = fold_probes[0]
        ev = proto.evaluate[pairs[:, 0]]
        out = {}
        for i, L in enumerate(layers):
            p, y = prob[i, ev], pl[ev]
            acc = stats.accuracy_with_ci((p > 0.5) == (y == 1))
            rec = {"accuracy": acc.point, "accuracy_low": acc.low, "accuracy_high": acc.high, "n_pairs": int(ev.sum()),
                   "loss": final[i].loss, "prob": [None if np.isnan(v) else float(v) for v in prob[i]]}
            if len(set(y.tolist())) == 2:
                a = stats.bootstrap_auroc_ci(y, p, n_resamples=int(cfg.n_bootstrap), seed=self.seed)
                rec.update(auroc=a.point, auroc_low=a.low, auroc_high=a.high)
            out[L] = (rec, final[i].direction)
        return out

    # -- the job ----------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from threadpoolctl import threadpool_limits

        self.load()
        target = self.resolve_target()
        items, split_of = self.items()
        correct = confidence = None
        if target == "error":
            base = self.unsteered()
            correct = np.concatenate([base[s].correct for s in SPLITS])
            confidence = np.concatenate([base[s].confidence for s in SPLITS])
            log.info("error target: the model answers %d of %d items right", int(correct.sum()), len(correct))
        rows = self.build_rows(target, items, split_of, correct, confidence)
        proto = self.protocol(rows)
        words = [str(w) for w in self.x.lexical_words]
        lexical_rows = None
        if words:
            lexical_rows = self.build_rows(target, [strip_words(it, words) for it in items], split_of, correct,
                                           confidence)
        # sklearn's solvers on [items, d_model] matrices: BLAS threads cost more than they give
        with threadpool_limits(1, user_api="blas"):
            results = {p: self.probe_layers(rows, proto, p) for p in self.poolings}
            lexical = {p: self.probe_layers(lexical_rows, proto, p, ("logreg",)) for p in self.poolings} \
                if lexical_rows is not None else {}
        return self.write(target, rows, proto, results, lexical, words)

    # -- outputs ----------------------------------------------------------
    def best(self, results: dict[str, dict[int, dict]]) -> tuple[str, int]:
        """The (pooling, layer) with the highest logistic-probe AUROC on the selection rows;
        ties go to the first pooling, then the lower layer."""
        cands = [(rec["logreg"]["select_auroc"], -i, -L, p, L)
                 for i, p in enumerate(self.poolings) for L, rec in results[p].items()]
        _, _, _, p, L = max(cands)
        return p, L

    def write(self, target: str, rows: Rows, proto: Protocol, results: dict, lexical: dict,
              words: list[str]) -> dict[str, Any]:
        from eas.report import probes as probe_report

        meta = {"experiment": self.x.name, "model": self.lm.name, "benchmark": self.bench.name, "target": target,
                "steer_target": self.site, "evaluation": proto.name, "seed": self.seed}
        table = []
        for p in self.poolings:
            for L in self.layers:
                rec = results[p][L]
                rnd = rec.get("random", {})
                base = {**meta, "pooling": p, "layer": L, "n": rec["n"], "n_pos": rec["n_pos"]}
                for name in SUPERVISED:
                    r = rec[name]
                    table.append({**base, "probe": name, **{k: r[k] for k in (
                        "auroc", "auroc_low", "auroc_high", "accuracy", "accuracy_low", "accuracy_high",
                        "select_auroc", "p_random")}, "c": r["c"]})
                table.append({**base, "probe": "random", "auroc": rnd.get("mean"), "auroc_low": rnd.get("low"),
                              "auroc_high": rnd.get("high"), "random_best": rnd.get("best")})
                if "ccs" in rec:
                    c = rec["ccs"]
                    lr_pair = pair_accuracy(rec["logreg"]["scores"], rows, proto)
                    table.append({**base, "probe": "ccs", "n": c["n_pairs"], "n_pos": None,
                                  **{k: c.get(k) for k in ("auroc", "auroc_low", "auroc_high", "accuracy",
                                                           "accuracy_low", "accuracy_high")},
                                  "logreg_pair_accuracy": lr_pair,
                                  "ccs_fraction": c["accuracy"] / lr_pair if lr_pair else None})
                if p in lexical:
                    r = lexical[p][L]["logreg"]
                    table.append({**base, "probe": "logreg_lexical", **{k: r[k] for k in (
                        "auroc", "auroc_low", "auroc_high", "accuracy", "accuracy_low", "accuracy_high",
                        "select_auroc")}, "c": r["c"], "auroc_drop": rec["logreg"]["auroc"] - r["auroc"]})
        df = pd.DataFrame(table)
        for col in ("random_best", "logreg_pair_accuracy", "ccs_fraction", "auroc_drop", "c", "p_random"):
            if col not in df:
                df[col] = np.nan
        df = df.astype({c: "float64" for c in ("auroc", "auroc_low", "auroc_high", "accuracy", "accuracy_low",
                                               "accuracy_high", "select_auroc", "p_random", "random_best", "c",
                                               "logreg_pair_accuracy", "ccs_fraction", "auroc_drop")})
        # the best of many layers (and poolings) is a multiple comparison: Holm over all of them
        df["p_random_holm"] = np.nan
        for name in SUPERVISED:
            m = (df["probe"] == name).to_numpy()
            df.loc[m, "p_random_holm"] = stats.holm(df.loc[m, "p_random"].to_numpy(float))
        store.write_parquet(self.out / "probe_results.parquet", df)
        self._write_scores(rows, results)
        best_pool, best_layer = self.best(results)
        self._write_probes(rows, proto, results)

        summary: dict[str, Any] = {
            **meta, "poolings": self.poolings, "layers": self.layers, "n_items": len(set(rows.groups.tolist())),
            "n_rows": len(rows.labels), "n_pos": int(rows.labels.sum()),
            "best": {"pooling": best_pool, "layer": best_layer,
                     "selected_on": "val" if proto.refit is None else "out-of-fold (all items; optimistic by the "
                                                                      "choice of layer)"},
        }
        rec = results[best_pool][best_layer]
        for name in SUPERVISED:
            summary["best"][name] = {k: rec[name][k] for k in ("auroc", "auroc_low", "auroc_high", "accuracy",
                                                              "accuracy_low", "accuracy_high", "p_random", "c")}
            at = df[(df["probe"] == name) & (df["pooling"] == best_pool) & (df["layer"] == best_layer)]
            summary["best"][name]["p_random_holm"] = float(at["p_random_holm"].iloc[0])
        summary["best"]["n_compared"] = len(self.poolings) * len(self.layers)
        summary["best"]["random"] = rec.get("random")
        if "ccs" in rec:
            lr_pair = pair_accuracy(rec["logreg"]["scores"], rows, proto)
            c = rec["ccs"]
            summary["best"]["ccs"] = {k: c.get(k) for k in ("accuracy", "accuracy_low", "accuracy_high", "auroc",
                                                            "auroc_low", "auroc_high", "n_pairs", "loss")}
            summary["best"]["ccs"].update(logreg_pair_accuracy=lr_pair,
                                          fraction_of_supervised=c["accuracy"] / lr_pair if lr_pair else None)
        if lexical:
            lx = lexical[best_pool][best_layer]["logreg"]
            summary["lexical"] = {"words": words, "auroc": lx["auroc"], "auroc_low": lx["auroc_low"],
                                  "auroc_high": lx["auroc_high"], "auroc_drop": rec["logreg"]["auroc"] - lx["auroc"]}
        summary["baseline"] = self._baseline(rows, proto)
        curves = None
        if target == "error":
            summary["abstention"], curves = self._abstention(rows, proto, rec)
        store.write_text(self.out / "summary_table.md", probe_report.summary_markdown(summary, df))
        summary = self.finish(summary, [probe_report.headline_markdown(summary)])
        if self.x.premortem:  # PM2: the error probe's balanced accuracy at the model's own errors
            # balanced: a model wrong on 79% of items makes "always wrong" 0.79 accurate, 0.5 balanced
            b = summary["best"]["logreg"]
            y_ev = np.asarray(rows.labels)[proto.evaluate]
            s_ev = np.asarray(rec["logreg"]["scores"], float)[proto.evaluate]
            bal = stats.balanced_accuracy_ci(y_ev == 1, s_ev > 0, int(self.cfg.experiment.get("n_bootstrap", 10_000)),
                                             seed=self.seed)
            write_premortem(self.out, int(self.x.premortem),
                            f"{target} probe balanced accuracy (logreg, L{best_layer}, {best_pool}; {proto.name})",
                            bal.point, bal.low, bal.high, PM2_THRESHOLD, summary["seconds"],
                            self.lm.name, self.bench.name, n_evaluated=rec["n"], accuracy=b["accuracy"],
                            auroc=b["auroc"],
                            model_accuracy=summary["baseline"].get("accuracy"),
                            max_prob_auroc=summary["baseline"].get("max_prob_auroc"))
        self.figures(probe_report.write_probe_figures, self.out, df, summary, rows.labels[proto.evaluate],
                     {k: np.asarray(rec[k]["scores"], float)[proto.evaluate] for k in SUPERVISED}, curves)
        return summary

    def _baseline(self, rows: Rows, proto: Protocol) -> dict[str, Any]:
        """What a probe must beat without reading activations: for a trait, which letter was
        appended; for errors, the model's own max letter probability."""
        ev = proto.evaluate
        y = rows.labels[ev]
        if rows.target == "trait":
            a = stats.auroc(y, rows.option[ev]) if len(set(y.tolist())) == 2 else float("nan")
            return {"letter_auroc": max(a, 1 - a), "note": "AUROC of the appended letter's identity alone "
                                                           "(0.5 when labels are balanced over letters)"}
        a = stats.bootstrap_auroc_ci(y, rows.confidence[ev], n_resamples=int(self.x.n_bootstrap), seed=self.seed)
        return {"max_prob_auroc": a.point, "max_prob_auroc_low": a.low, "max_prob_auroc_high": a.high,
                "accuracy": float(y.mean())}

    def _abstention(self, rows: Rows, proto: Protocol, rec: dict) -> tuple[dict, dict]:
        ev = proto.evaluate
        correct = rows.labels[ev].astype(bool)
        p_right = 1.0 / (1.0 + np.exp(-np.asarray(rec["logreg"]["scores"], float)[ev]))
        maxprob = rows.confidence[ev]
        t = float(self.x.abstain_threshold)
        probe_curve = probes.accuracy_coverage(correct, p_right)
        base_curve = probes.accuracy_coverage(correct, maxprob)
        at = probes.abstain(correct, p_right, t)
        base_at = probes.abstain(correct, maxprob, t)

        def block(a: probes.Abstention) -> dict:
            return {"coverage": a.coverage, "n_answered": a.n_answered,
                    "accuracy": a.accuracy.point if a.accuracy else None,
                    "accuracy_low": a.accuracy.low if a.accuracy else None,
                    "accuracy_high": a.accuracy.high if a.accuracy else None}

        out = {
            "threshold": t, "n": len(correct), "accuracy_all": float(correct.mean()),
            "probe": {**block(at), "area": probe_curve.area},
            "max_prob": {**block(base_at), "area": base_curve.area,
                         "accuracy_at_probe_coverage": base_curve.accuracy_at(at.coverage)},
            # thresholds are not comparable across scores; coverage is
            "at_half_coverage": {"probe": probe_curve.accuracy_at(0.5), "max_prob": base_curve.accuracy_at(0.5)},
        }
        curves = {"probe": probe_curve, "max_prob": base_curve, "threshold_point": (at.coverage, out["probe"]["accuracy"])}
        frames = [pd.DataFrame({"score": name, "threshold": c.threshold, "coverage": c.coverage, "accuracy": c.accuracy})
                  for name, c in (("probe", probe_curve), ("max_prob", base_curve))]
        store.write_csv(self.out / "accuracy_coverage.csv", pd.concat(frames, ignore_index=True))
        return out, curves

    def _write_scores(self, rows: Rows, results: dict) -> None:
        frames = []
        for p in self.poolings:
            for L in self.layers:
                rec = results[p][L]
                frames.append(pd.DataFrame({
                    "item_id": rows.item_ids, "split": rows.split, "label": rows.labels, "option": rows.option,
                    "pooling": p, "layer": L, "logreg": np.asarray(rec["logreg"]["scores"], float),
                    "mean_diff": np.asarray(rec["mean_diff"]["scores"], float)}))
        store.write_parquet(self.out / "probe_scores.parquet", pd.concat(frames, ignore_index=True))

    def _write_probes(self, rows: Rows, proto: Protocol, results: dict) -> None:
        kinds = ("logreg", "mean_diff", "random", "ccs")
        for p in self.poolings:
            for L in self.layers:
                w = self.store.get_tensors("vectors", self.probe_key(rows, proto, p, L, kinds))
                if w is None:
                    continue
                meta = {"method": "probe", "target": rows.target, "site": self.site, "layer": str(L),
                        "position": p, "model": self.lm.name, "model_fingerprint": self.lm.fingerprint,
                        "benchmark": self.bench.name, "c": str(results[p][L]["logreg"]["c"])}
                store.write_tensors(self.out / "probes" / f"probe_{self.site}_{p}_L{L}.safetensors", w, meta)


def pair_accuracy(scores: list, rows: Rows, proto: Protocol) -> float | None:
    """Accuracy of a supervised probe on the CCS task: is the pair's higher-scored member the
    positive one (evaluated pairs only)."""
    if rows.pairs is None:
        return None
    s = np.asarray(scores, float)
    ev = proto.evaluate[rows.pairs[:, 0]]
    first, second = s[rows.pairs[ev, 0]], s[rows.pairs[ev, 1]]
    return float(np.mean((first > second) == (rows.pair_labels[ev] == 1)))


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Probe(cfg, out_dir).run()
