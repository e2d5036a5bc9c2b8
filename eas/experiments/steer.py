"""experiment=steer: the PAS protocol as one job.

1. load model and benchmark; split train/val/test by proportions and seed;
2. score the unsteered model on every split;
3. build one vector per layer from train activations at the site (the method's contrast
   and aggregation);
4. score every (layer, strength) cell on val with the fast engine;
5. pick the best cell by val accuracy, score it on test, report the change, its 95%
   interval and the flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from eas import store
from eas.core import stats
from eas.experiments.base import Config as BaseConfig
from eas.experiments.base import Experiment, cell_name


@dataclass
class Config(BaseConfig):
    pass


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
        return self.write(base, vecs, val, best, test.get(best) if best else None, failed)

    def write(self, base, vecs, val, best, best_test, failed) -> dict[str, Any]:
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
            u, a = base["test"].correct, best_test.correct
            # the 95% interval of the change, items resampled in pairs
            ci = stats.bootstrap_ci(a.astype(float), paired_with=u.astype(float), seed=self.seed)
            test_block = {"accuracy": best_test.accuracy, "unsteered_accuracy": base["test"].accuracy,
                          "delta": best_test.accuracy - base["test"].accuracy, "delta_low": ci.low,
                          "delta_high": ci.high, "n": len(a), "wrong_to_right": int((~u & a).sum()),
                          "right_to_wrong": int((u & ~a).sum()), "mcnemar_p": stats.mcnemar(u, a, exact=True).p_value,
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
        if failed and best is None:  # no cell landed: the job failed, whatever else it wrote
            tb = next(iter(failed.values())).strip().splitlines()
            summary["error"] = (f"every cell failed ({len(failed)}); the first: {tb[-1] if tb else '?'} "
                                f"(tracebacks in {self.out / 'summary.json'})")
        summary = self.finish(summary, headline(summary))
        from eas.report.figures import write_run_figures

        self.figures(write_run_figures, self.out)
        return summary


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
    if s["failed_cells"]:
        lines.append(f"  FAILED cells: {len(s['failed_cells'])} (see summary.json)")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Steer(cfg, out_dir).run()
