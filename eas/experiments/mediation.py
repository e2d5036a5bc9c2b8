"""experiment=mediation: causal mediation of a direction layer by layer (Vig et al. 2020), and the
direction's interchange against additive steering and against prompting, on the same items.

1. load the benchmark (split as every kind), the model and the letter head; the unsteered train
   predictions and one vector per layer from the method (``experiment=steer``'s vectors: the
   method's train contrast, ``method.vector_path``, or the store);
2. pairs (``eas.experiments.causal``; by default ``pairs=prompt``: the clean run is the item
   under ``experiment.source_system``, the corrupted one without it);
3. per pair, the change of the logit difference (good - bad letter) from the corrupted run:
   - ``total``: the clean run itself (the effect of the prompt; of prompting);
   - ``indirect_direction`` at layer L: the corrupted run with the component of the site along
     the layer's vector set to its value in the clean run (an interchange intervention), at
     ``experiment.span``;
   - ``indirect_site``: the whole site vector set to the clean run's there;
   - ``direct_direction``: the clean run with the direction held at the corrupted run's value
     (the effect that does not go through the direction), measured from the corrupted run;
   - ``steer`` at each strength: the corrupted run plus ``strength x vector`` there.
   Every effect is also given as Vig et al.'s ratio ``y / y_corrupted - 1`` with ``y = p(good) /
   p(bad)`` (column ``vig``). One store record per pair and plan;
4. per (effect, layer): the mean over pairs with a bootstrap interval; the layer with the largest
   indirect effect of the direction, and there the three effects side by side with paired t-tests
   (interchange vs prompting, steering vs prompting, interchange vs steering) and the outcome
   in words ("interchange has no effect but steering does" is a result, not an error).

Writes ``results.parquet`` (per effect and layer), ``effects.parquet`` (per pair), ``figures/``,
``summary.json`` and ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import MISSING, DictConfig

from eas import store
from eas.config import ConfigError, choice
from eas.core import patch as P
from eas.core import stats
from eas.experiments import causal
from eas.experiments.causal import CausalExperiment
from eas.methods import base as methods

SPANS = ("last", "all")


@dataclass
class Config(causal.Config):
    """The types of ``experiment.*``; the values are in ``conf/experiment/mediation.yaml``."""

    span: str = MISSING  # where the interventions write: last (token) | all (aligned positions)


def validate(cfg: DictConfig) -> None:
    causal.validate(cfg)
    choice("experiment.span", cfg.experiment.span, SPANS)
    if not cfg.strength:
        raise ConfigError("strength is empty: mediation compares steering at these strengths; give e.g. strength=[4]")


class Mediation(CausalExperiment):
    def run(self) -> dict[str, Any]:
        self.load()
        base = self.unsteered()
        vecs = self.vectors(base["train"])
        pairs = self.pairs()
        rows = []
        with self.bar(len(pairs), f"mediation ({len(pairs)} pairs x {len(self.layers)} layers)") as bar:
            for pair in pairs:
                rows += self.one_pair(pair, vecs)
                bar.update(1)
        return self.write(pd.DataFrame(rows), vecs, pairs)

    def one_pair(self, pair: causal.Pair, vecs: dict[int, torch.Tensor]) -> list[dict]:
        aligned = self.aligned(pair)
        span = aligned if self.x.span == "all" else (aligned[-1],)
        # the spans of the two runs: the clean run's positions aligned with the corrupted run's
        amap = P.align(len(pair.target), len(pair.source), self.x.align)
        src_span = tuple(amap[q] for q in span)
        vid = methods.vector_id(vecs)
        plan, values = [], []
        for L in self.layers:
            plan += [("indirect_direction", L, None), ("indirect_site", L, None)]
            values += [P.Value("direction", vecs[L]), P.Value()]
            for s in self.strengths:
                plan.append(("steer", L, s))
                values.append(P.Value("add", value=float(s) * vecs[L]))
        patches = [P.Patch(L, span) for _, L, _ in plan]
        rec = self.patched(pair, "mediation", patches, values, [vid, self.strengths, self.x.span])
        # the direct effect: the clean run, the direction held at the corrupted run's value
        direct = self.patched(pair, "direct", [P.Patch(L, src_span) for L in self.layers],
                              [P.Value("direction", vecs[L]) for L in self.layers], [vid, self.x.span],
                              swap=True)
        t = rec["target"]["logit_diff"]
        out = [{"item": pair.item, "effect": "total", "layer": -1, "strength": 0.0,
                "value": rec["source"]["logit_diff"] - t}]
        for j, (effect, L, s) in enumerate(plan):
            out.append({"item": pair.item, "effect": effect if s is None else f"steer_{s:g}", "layer": L,
                        "strength": 0.0 if s is None else float(s), "value": rec["logit_diff"][j] - t})
        for j, L in enumerate(self.layers):
            out.append({"item": pair.item, "effect": "direct_direction", "layer": L, "strength": 0.0,
                        "value": direct["logit_diff"][j] - t})
        for r in out:
            r["vig"] = float(P.vig_effect(torch.tensor(r["value"]), torch.tensor(0.0)))
        return out

    def write(self, df: pd.DataFrame, vecs: dict[int, torch.Tensor], pairs: list) -> dict[str, Any]:
        x = self.x
        n_boot, alpha = int(x.n_bootstrap), float(x.alpha)
        meta = {**self.meta(), "method": self.method, "preset": x.preset, "pairs": x.pairs, "span": x.span}
        table = causal.summarise(df, ["effect", "layer"], "value", n_boot, self.seed, alpha).rename(
            columns={"value_low": "low", "value_high": "high"})
        vig = df.groupby(["effect", "layer"]).vig.mean().rename("vig").reset_index()
        table = table.merge(vig, on=["effect", "layer"])
        total = table[table.effect == "total"].iloc[0].to_dict()
        ind = table[table.effect == "indirect_direction"]
        best_layer = int(ind.loc[ind.value.idxmax(), "layer"]) if ind.value.notna().any() else None
        comparison = None
        if best_layer is not None:
            comparison = self.compare(df, best_layer, alpha)
        self.store_tables(table.assign(**meta), df.assign(**meta))
        summary = {**meta, "n_pairs": len(pairs), "layers": self.layers, "strengths": self.strengths,
                   "vector_norms": {str(L): float(v.norm()) for L, v in vecs.items()},
                   "total": {k: total[k] for k in ("value", "low", "high", "vig", "n")},
                   "largest_indirect_layer": best_layer, "comparison": comparison}
        summary = self.finish(summary, headline(summary))
        from eas.report.causal import write_mediation_figures

        self.figures(write_mediation_figures, table, self.out / "figures")
        return summary

    def compare(self, df: pd.DataFrame, layer: int, alpha: float) -> dict[str, Any]:
        """At ``layer``: interchange, the best steering strength and prompting, per pair, with paired tests."""
        def per_pair(effect: str, L: int) -> pd.Series:
            g = df[(df.effect == effect) & (df.layer == L)]
            return g.set_index("item").value

        inter, total = per_pair("indirect_direction", layer), per_pair("total", -1)
        steer_names = sorted({e for e in df.effect if e.startswith("steer_")})
        best_steer = max(steer_names, key=lambda e: float(per_pair(e, layer).mean()))
        steer = per_pair(best_steer, layer)
        items = inter.index.intersection(total.index).intersection(steer.index)
        inter, total, steer = inter[items].to_numpy(), total[items].to_numpy(), steer[items].to_numpy()
        n_boot = int(self.x.n_bootstrap)

        def effect(v):
            m, lo, hi, n = causal.interval(v, n_boot, self.seed, alpha)
            return {"mean": m, "low": lo, "high": hi, "n": n, "works": bool(np.isfinite(lo) and lo > 0)}

        def test(a, b):
            try:
                return stats.paired_ttest(a, b).p_value
            except ValueError:  # fewer than 2 pairs or no variance: undefined
                return float("nan")

        out = {"layer": layer, "steer": best_steer, "interchange": effect(inter), "steering": effect(steer),
               "prompting": effect(total), "p_interchange_vs_prompting": test(inter, total),
               "p_steering_vs_prompting": test(steer, total), "p_interchange_vs_steering": test(inter, steer)}
        works = {k: out[k]["works"] for k in ("interchange", "steering", "prompting")}
        yes = [k for k, v in works.items() if v]
        no = [k for k, v in works.items() if not v]
        out["outcome"] = (f"{' and '.join(yes) or 'nothing'} moves the answer"
                          + (f"; {', '.join(no)}: no effect (the interval includes 0)" if no else ""))
        return out

    def store_tables(self, table: pd.DataFrame, per_pair: pd.DataFrame) -> None:
        store.write_parquet(self.out / "results.parquet", table)
        store.write_parquet(self.out / "effects.parquet", per_pair)


def headline(s: dict) -> list[str]:
    t = s["total"]
    lines = [f"eas mediation: {s['model']} on {s['benchmark']} ({s['method']} direction @ {s['steer_target']}, "
             f"{s['pairs']} pairs, n={s['n_pairs']})",
             f"  total effect (prompting): {t['value']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}] logit difference"]
    c = s["comparison"]
    if c is None:
        return [*lines, "  no indirect effect is defined"]
    for name in ("interchange", "steering", "prompting"):
        e = c[name]
        lines.append(f"  layer {c['layer']} {name:<11}: {e['mean']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
                     + (f" ({c['steer']})" if name == "steering" else ""))
    lines.append(f"  paired t: interchange vs prompting p={c['p_interchange_vs_prompting']:.3g}, steering vs "
                 f"prompting p={c['p_steering_vs_prompting']:.3g}, interchange vs steering "
                 f"p={c['p_interchange_vs_steering']:.3g}")
    lines.append(f"  outcome: {c['outcome']}")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Mediation(cfg, out_dir).run()


def report(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """``eas-report``'s table of mediation runs: every run's (effect, layer) rows."""
    table = CausalExperiment.results_table(runs)
    return {} if table is None else {"effects": table}
