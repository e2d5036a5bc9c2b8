"""experiment=steer: the PAS protocol as one job.

1. load model and benchmark; split train/val/test by proportions and seed;
2. score the unsteered model on every split;
3. build one vector per layer from train activations at the site (the method's contrast
   and aggregation);
4. score every (layer, strength) cell on val with the fast engine;
5. pick the best cell by val accuracy, score it on test, report the change, its 95%
   interval and the flips.

The PAS study's comparisons, each off by default (outputs of a default job are unchanged):

- ``experiment.icl_k`` > 0, the in-context baseline: k exemplars drawn (by ``seed``) from the
  train items the unsteered model answered wrong, each shown with its correct answer before the
  same val and test items; scored alone and with the selected cell's vector (``icl.parquet``);
- ``experiment.side_effects``, other benchmarks: the selected cell's vector applied to their
  test splits (each split by the same rule), unsteered vs steered, McNemar, Holm over them
  (``side_effects.parquet``);
- ``experiment.split_sizes``, absolute ``[train, val, test]`` sizes instead of proportions, from
  one seeded shuffle: across sizes the test items stay the same and a smaller train (val) split
  is a part of a larger one (the sample-size study).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from eas import store
from eas.config import CONF_DIR, BenchmarkConfig, ConfigError
from eas.core import stats
from eas.data import load_benchmark, split_items
from eas.data.schema import Benchmark, DataError, MCItem
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment, Scored, cell_name
from eas.methods import base as methods

log = logging.getLogger("eas")


@dataclass
class Config(BaseConfig):
    """The types of ``experiment.*`` (values in ``conf/experiment/steer.yaml`` and its presets)."""

    icl_k: int = 0  # in-context exemplars before every val/test prompt (0: none, the plain job)
    side_effects: list[str] = field(default_factory=list)  # conf/benchmark names the selected cell is tried on
    split_sizes: list[int] | None = None  # [train, val, test] items; None: the *_proportion fields


def validate(cfg: DictConfig) -> None:
    x = cfg.experiment
    if x.icl_k < 0:
        raise ConfigError(f"experiment.icl_k={x.icl_k}: must be >= 0 (0 = no in-context exemplars)")
    for name in x.side_effects:
        benchmark_preset(str(name))
    if x.split_sizes is not None:
        sizes = list(x.split_sizes)
        if len(sizes) != 3 or min(sizes) < 1:
            raise ConfigError(f"experiment.split_sizes={sizes}: give [train, val, test], each >= 1, "
                              f"e.g. experiment.split_sizes=[12,4,60]; null uses the *_proportion fields")


def benchmark_preset(name: str) -> DictConfig:
    """The ``BenchmarkConfig`` of ``conf/benchmark/<name>.yaml``.

    Raises:
        ConfigError: no such preset (names those there are).
    """
    path = CONF_DIR / "benchmark" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"experiment.side_effects: {name!r} is not a conf/benchmark preset; "
                          f"choose from: {', '.join(names)}")
    return OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), OmegaConf.load(path))


def sized_split(items: Sequence[MCItem], sizes: Sequence[int], seed: int, rule: str = "eas"
                ) -> dict[str, list[MCItem]]:
    """``{"train", "val", "test"}`` of ``sizes = [train, val, test]`` items from one shuffle by
    ``seed`` (``rule`` as ``split_items`` shuffles): test takes the first items, train the next,
    val the last, so across sizes test does not move and a larger train (val) split holds every
    smaller one.

    Raises:
        DataError: the sizes add up to more items than there are.
    """
    n_train, n_val, n_test = (int(v) for v in sizes)
    if n_train + n_val + n_test > len(items):
        raise DataError(f"experiment.split_sizes={list(sizes)} needs {n_train + n_val + n_test} items; the "
                        f"benchmark has {len(items)}: lower the sizes")
    if rule == "pas_reference":
        order = pd.RangeIndex(len(items)).to_series().sample(frac=1, random_state=seed).tolist()
    else:
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
    parts = {"train": order[n_test:n_test + n_train], "val": order[len(order) - n_val:], "test": order[:n_test]}
    return {split: [items[i] for i in part] for split, part in parts.items()}


def paired(before: Scored, after: Scored, seed: int) -> dict[str, Any]:
    """``after`` against ``before`` on the same items: both accuracies, the change with its 95%
    interval (items resampled in pairs), the flips and the exact McNemar p."""
    u, a = before.correct, after.correct
    ci = stats.bootstrap_ci(a.astype(float), paired_with=u.astype(float), seed=seed)
    return {"accuracy": after.accuracy, "unsteered_accuracy": before.accuracy,
            "delta": after.accuracy - before.accuracy, "delta_low": ci.low, "delta_high": ci.high, "n": len(a),
            "wrong_to_right": int((~u & a).sum()), "right_to_wrong": int((u & ~a).sum()),
            "mcnemar_p": stats.mcnemar(u, a, exact=True).p_value}


class Steer(Experiment):
    def run(self) -> dict[str, Any]:
        self.load()
        base = self.unsteered()
        vecs = self.vectors(base["train"])
        failed: dict[str, str] = {}
        grid = [(L, s) for L in self.layers for s in self.strengths]
        val = self.score_cells(grid, "val", vecs, failed)
        best = self.select(val)
        test = self.score_cells([best], "test", vecs, failed) if best else {}
        best_test = test.get(best) if best else None
        icl = self.in_context(base, vecs, best, failed) if self.x.icl_k else None
        side = self.side_effects(base, vecs, best, best_test, failed) if self.x.side_effects and best_test else None
        return self.write(base, vecs, val, best, best_test, failed, icl, side)

    # -- splits -------------------------------------------------------------
    def _load(self) -> None:
        super()._load()
        if self.x.split_sizes is not None:
            self.splits = self.split(self.bench)
            log.info("experiment.split_sizes: %s", {k: len(v) for k, v in self.splits.items()})

    def split(self, bench: Benchmark) -> dict[str, list[MCItem]]:
        """``bench``'s train/val/test by ``experiment.split_sizes``, else by the proportions."""
        cfg = self.cfg
        if self.x.split_sizes is not None:
            return sized_split(list(bench.items), self.x.split_sizes, cfg.seed, cfg.split_rule)
        return split_items(list(bench.items), cfg.n_train_proportion, cfg.n_val_proportion, cfg.n_test_proportion,
                           seed=cfg.seed, max_sample_size=cfg.max_sample_size, rule=cfg.split_rule)

    def scoring_setup(self) -> None:
        super().scoring_setup()
        if self.x.split_sizes is not None:  # other splits, other records; keys without it stay as they were
            self.base_key.append(["split_sizes", [int(v) for v in self.x.split_sizes]])

    # -- in-context baseline --------------------------------------------------
    def exemplars(self, train: Scored) -> list[MCItem]:
        """``icl_k`` train items the unsteered model answered wrong, drawn by ``seed``, in draw order.

        Raises:
            DataError: fewer wrong train items than ``icl_k``.
        """
        k = int(self.x.icl_k)
        wrong = [it for it, ok in zip(self.splits["train"], train.correct) if not ok]
        if len(wrong) < k:
            raise DataError(f"experiment.icl_k={k}: the unsteered model answered only {len(wrong)} of "
                            f"{len(train.preds)} train items wrong; lower experiment.icl_k")
        return random.Random(self.seed).sample(wrong, k)

    @contextmanager
    def shown(self, shots: list[MCItem]) -> Iterator[None]:
        """Within the block every scoring prompt comes after ``shots`` and every record's key
        names them (other token rows, other records)."""
        keep = self.prompter, self.base_key
        self.prompter = dataclasses.replace(self.prompter, shots=tuple(shots))
        self.base_key = [*self.base_key, ["icl", len(shots), [it.id for it in shots]]]
        try:
            yield
        finally:
            self.prompter, self.base_key = keep

    def in_context(self, base, vecs, best, failed) -> dict[str, Any]:
        """The exemplars, the ICL predictions on val and test, and the selected cell on the ICL test prompts."""
        shots = self.exemplars(base["train"])
        log.info("icl: %d exemplars %s", len(shots), [it.id for it in shots])
        with self.shown(shots):
            alone = self.unsteered(["val", "test"])
            steered = self.score_cells([best], "test", vecs, failed).get(best) if best else None
        return {"shots": shots, "alone": alone, "steered": steered}

    # -- side effects ---------------------------------------------------------
    @contextmanager
    def on_benchmark(self, bench: Benchmark) -> Iterator[None]:
        """Within the block the job scores ``bench`` (its splits, letter head and keys)."""
        keep = self.bench, self.splits
        self.bench, self.splits = bench, self.split(bench)
        self.scoring_setup()
        try:
            yield
        finally:
            self.bench, self.splits = keep
            self.scoring_setup()

    def side_effects(self, base, vecs, best, best_test, failed) -> pd.DataFrame:
        """The selected cell on the test split of every ``side_effects`` benchmark, the target first."""
        rows = [{"benchmark": self.bench.name, "role": "target", **paired(base["test"], best_test, self.seed)}]
        keep_id = self.vector_id
        self.vector_id = keep_id or methods.vector_id(vecs)  # another benchmark's vectors: key them by content
        try:
            for name in dict.fromkeys(str(n) for n in self.x.side_effects):
                if name == self.bench.name:
                    continue  # the target is the first row
                cfg = benchmark_preset(name)
                cfg.item_rules, cfg.duplicates = self.cfg.benchmark.item_rules, self.cfg.benchmark.duplicates
                with self.on_benchmark(load_benchmark(cfg, seed=self.seed)):
                    u = self.unsteered(["test"])["test"]
                    a = self.score_cells([best], "test", vecs, failed).get(best)
                    if a is None:
                        continue  # a failed cell is in failed_cells
                    self.write_predictions(self.out / "predictions" / "side_effects" / name / "unsteered.csv",
                                           {"test": u})
                    self.write_predictions(self.out / "predictions" / "side_effects" / name /
                                           f"{cell_name(*best)}.csv", {"test": a})
                    rows.append({"benchmark": name, "role": "side_effect", **paired(u, a, self.seed)})
        finally:
            self.vector_id = keep_id
        table = pd.DataFrame(rows)
        others = table["role"] == "side_effect"
        table["p_holm"] = np.nan  # Holm over the side-effect benchmarks; the target is not in the family
        if others.any():
            table.loc[others, "p_holm"] = stats.holm(table.loc[others, "mcnemar_p"].to_numpy(float))
        meta = self.meta()
        head = {"model": meta["model"], "source_benchmark": meta["benchmark"], "method": self.method,
                "steer_target": self.site, "seed": self.seed, "cell": f"{self.method}/{cell_name(*best)}",
                "layer": best[0], "strength": best[1]}
        return pd.concat([pd.DataFrame([head] * len(table)), table], axis=1)

    # -- outputs --------------------------------------------------------------
    def write(self, base, vecs, val, best, best_test, failed, icl=None, side=None) -> dict[str, Any]:
        meta = self.meta()
        rows = []
        for split, sc in base.items():
            rows.append({**meta, "method": "unsteered", "layer": -1, "strength": 0.0, "split": split,
                         "accuracy": sc.accuracy, "n": len(sc.preds), "n_correct": int(sc.correct.sum()),
                         "vector_norm": float("nan"), "cell": "unsteered", "selected": False})
        scored = [("val", c, sc) for c, sc in val.items()]
        if best_test is not None:
            scored.append(("test", best, best_test))
        for split, (L, s), sc in scored:
            rows.append({**meta, "method": self.method, "layer": L, "strength": s, "split": split,
                         "accuracy": sc.accuracy, "n": len(sc.preds), "n_correct": int(sc.correct.sum()),
                         "vector_norm": float(vecs[L].norm()), "cell": f"{self.method}/{cell_name(L, s)}",
                         "selected": (L, s) == best})
        store.write_parquet(self.out / "results.parquet", pd.DataFrame(rows))

        self.write_predictions(self.out / "predictions" / "unsteered.csv", base)
        for (L, s), sc in val.items():
            both = {"val": sc}
            if best_test is not None and (L, s) == best:
                both["test"] = best_test
            self.write_predictions(self.out / "predictions" / self.method / f"{cell_name(L, s)}.csv", both)
        self.write_vectors(vecs)

        test_block = None
        if best_test is not None:
            test_block = {**paired(base["test"], best_test, self.seed),
                          # how often each letter is answered: a change that only moves these is a letter
                          # preference, not the behaviour (labels are balanced over letters in most sets)
                          "letters": {"unsteered": letter_counts(base["test"].preds, self.bench),
                                      "steered": letter_counts(best_test.preds, self.bench)}}
        summary = {
            **meta, "method": self.method,
            "unsteered": {k: v.accuracy for k, v in base.items()},
            "best": None if best is None else {"cell": f"{self.method}/{cell_name(*best)}", "layer": best[0],
                                               "strength": best[1], "val_accuracy": val[best].accuracy},
            "test": test_block,
            "failed_cells": [{"cell": c, "error": tb} for c, tb in failed.items()],
        }
        if icl is not None:
            summary["icl"] = self.write_icl(base, icl, best, meta)
        if side is not None:
            store.write_parquet(self.out / "side_effects.parquet", side)
            summary["side_effects"] = side[["benchmark", "role", "unsteered_accuracy", "accuracy", "delta",
                                            "mcnemar_p", "p_holm"]].to_dict("records")
        if failed and best is None:  # no cell landed: the job failed, whatever else it wrote
            tb = next(iter(failed.values())).strip().splitlines()
            summary["error"] = (f"every cell failed ({len(failed)}); the first: {tb[-1] if tb else '?'} "
                                f"(tracebacks in {self.out / 'summary.json'})")
        summary = self.finish(summary, headline(summary))
        from eas.report.figures import write_run_figures

        self.figures(write_run_figures, self.out)
        if side is not None:
            from eas.report.study import side_effects_heatmap

            self.figures(side_effects_heatmap, side, self.out / "figures" / "side_effects.png")
        return summary

    def write_icl(self, base, icl, best, meta) -> dict[str, Any]:
        """``icl.parquet`` (ICL alone on val and test, ICL with the selected cell on test, each against
        the unsteered model on the same items), ``predictions/icl/``; returns the summary's block."""
        shots, k = icl["shots"], int(self.x.icl_k)
        ids = [it.id for it in shots]
        runs = [("icl", split, "icl", sc) for split, sc in icl["alone"].items()]
        if icl["steered"] is not None:
            runs.append((f"icl+{self.method}", "test", f"icl+{self.method}/{cell_name(*best)}", icl["steered"]))
        rows, block = [], {"k": k, "exemplars": ids}
        for condition, split, cell, sc in runs:
            p = paired(base[split], sc, self.seed)
            rows.append({**meta, "condition": condition, "icl_k": k, "exemplars": ",".join(ids), "split": split,
                         "cell": cell, "n_correct": int(sc.correct.sum()), **p})
            block[split if condition == "icl" else "steered_test"] = {"cell": cell, **p}
        store.write_parquet(self.out / "icl.parquet", pd.DataFrame(rows))
        self.write_predictions(self.out / "predictions" / "icl" / "unsteered.csv", icl["alone"])
        if icl["steered"] is not None:
            self.write_predictions(self.out / "predictions" / "icl" / self.method / f"{cell_name(*best)}.csv",
                                   {"test": icl["steered"]})
        return block


def letter_counts(preds: list[int], bench) -> dict[str, int]:
    """``{letter: how many items were answered with it}`` over the benchmark's letters."""
    n = max(len(it.options) for it in bench.items)
    counts = np.bincount(np.asarray(preds, int), minlength=n)
    return {chr(ord("A") + i): int(c) for i, c in enumerate(counts)}


def headline(s: dict) -> list[str]:
    u = s["unsteered"]
    read = s.get("read_site", s["steer_target"])
    where = s["steer_target"] if read == s["steer_target"] else f"{s['steer_target']}, read at {read}"
    lines = [f"eas: {s['model']} on {s['benchmark']} ({s['method']} @ {where})",
             f"  unsteered accuracy: train {u['train']:.3f}  val {u['val']:.3f}  test {u['test']:.3f}"]
    if s["best"]:
        b, t = s["best"], s["test"]
        lines.append(f"  best val cell: {b['cell']} (val {b['val_accuracy']:.3f})")
        if t:
            lines.append(f"  test: {t['accuracy']:.3f} vs unsteered {t['unsteered_accuracy']:.3f} "
                         f"(delta {t['delta']:+.3f}, 95% CI [{t['delta_low']:+.3f}, {t['delta_high']:+.3f}], "
                         f"exact McNemar p {t['mcnemar_p']:.3f}; wrong->right {t['wrong_to_right']}, "
                         f"right->wrong {t['right_to_wrong']}, n={t['n']})")
            u, st = t["letters"]["unsteered"], t["letters"]["steered"]
            lines.append(f"  test answers {'/'.join(u)}: unsteered {'/'.join(map(str, u.values()))} -> "
                         f"steered {'/'.join(map(str, st.values()))}")
    icl = s.get("icl")
    if icl:
        with_cell = f"with {s['best']['cell']}" if s["best"] else ""
        for name, t in (("alone", icl.get("test")), (with_cell, icl.get("steered_test"))):
            if t:
                lines.append(f"  ICL k={icl['k']} {name}: test {t['accuracy']:.3f} vs unsteered "
                             f"{t['unsteered_accuracy']:.3f} (delta {t['delta']:+.3f}, 95% CI [{t['delta_low']:+.3f}, "
                             f"{t['delta_high']:+.3f}], exact McNemar p {t['mcnemar_p']:.3f})")
    for r in s.get("side_effects") or []:
        p = "" if r["p_holm"] != r["p_holm"] else f", Holm p {r['p_holm']:.3f}"
        lines.append(f"  {r['role']} {r['benchmark']}: test {r['unsteered_accuracy']:.3f} -> {r['accuracy']:.3f} "
                     f"(delta {r['delta']:+.3f}, McNemar p {r['mcnemar_p']:.3f}{p})")
    if s["failed_cells"]:
        lines.append(f"  FAILED cells: {len(s['failed_cells'])} (see summary.json)")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Steer(cfg, out_dir).run()
