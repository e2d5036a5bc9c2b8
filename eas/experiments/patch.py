"""experiment=patch: activation patching between the two prompts of each pair, layer by layer
(and layer x position), with the layer of the strongest effect and the change rate.

1. load the benchmark (split as every kind), the model and the letter head;
2. pairs (``eas.experiments.causal``): clean prompt (source) and corrupted prompt (target) of
   each item of ``experiment.split``, the readout's two letters;
3. per pair, one call of the tiled engine (``eas.core.patch.patch``, one store record per pair):
   every layer's site at ``experiment.span`` (the last position, the positions whose tokens differ,
   or every aligned position) at once (``grid=layer``), and with
   ``grid=layer_position`` each (layer, position) of the last ``experiment.positions`` aligned
   positions as well; optionally attribution patching (``experiment.attribution``) over the same
   (layer, position) grid, with its agreement with exact patching;
4. per layer: the effect (the fraction of the clean - corrupted logit difference a patch
   recovers, as a ratio of means over pairs: ``mean(patched - corrupted) / mean(clean -
   corrupted)``, stable where single pairs have a tiny gap; per pair it is in ``patches.parquet``)
   with a bootstrap interval over pairs, the change
   rate (pairs whose answer moves from the corrupted run's) with its Wilson interval, the mean KL
   to the unpatched run; the strongest layer (the earliest within 1% of the largest mean effect)
   and the verdict at it: the change rate's interval
   at or above ``experiment.threshold`` PASS, below it FAIL, else INCONCLUSIVE
   (``eas.experiments.verdicts``; with ``experiment.premortem=3``, as ``premortem3`` sets, also
   ``pm3.json`` and ``pm3_summary.md``).

Writes ``results.parquet`` (per layer), ``patches.parquet`` (per pair and patch), ``figures/``,
``summary.json`` and ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import MISSING, DictConfig

from eas import store
from eas.config import ConfigError, choice
from eas.core import patch as P
from eas.data.schema import DataError
from eas.experiments import causal, verdicts
from eas.experiments.causal import CausalExperiment

GRIDS = ("layer", "layer_position")
SPANS = ("last", "differing", "all", *causal.ROLES)


@dataclass
class Config(causal.Config):
    """The types of ``experiment.*``; the values are in ``conf/experiment/patch.yaml``."""

    grid: str = MISSING  # layer | layer_position
    span: str = MISSING  # what a layer's patch writes: last | differing | all (aligned positions) | a token role
    # (answer | question | options | subject: the target prompt's tokens of that part, causal.ROLES)
    positions: int | None = None  # layer_position: the last k aligned positions (null: all of them)
    all_layers: bool = MISSING  # every block of the model; false: the ``layer`` list
    attribution: bool = MISSING  # attribution patching over the (layer, position) grid too
    threshold: float = MISSING  # the change rate the verdict tests
    premortem: int | None = None  # 3 (conf/experiment/premortem3.yaml): write pm3.json and pm3_summary.md


def validate(cfg: DictConfig) -> None:
    causal.validate(cfg)
    x = cfg.experiment
    choice("experiment.grid", x.grid, GRIDS)
    choice("experiment.span", x.span, SPANS)
    if x.span == "differing" and x.pairs == "prompt":
        raise ConfigError("experiment.span=differing: pairs=prompt differ only in their system turn, which has no "
                          "aligned position; use experiment.span=last or all")
    if x.positions is not None and x.positions < 1:
        raise ConfigError(f"experiment.positions={x.positions}: the last k positions, k >= 1, or null for all")
    if x.attribution and x.grid != "layer_position":
        raise ConfigError("experiment.attribution=true estimates single-position patches: set "
                          "experiment.grid=layer_position")
    if not 0 < x.threshold < 1:
        raise ConfigError(f"experiment.threshold={x.threshold}: a change rate in (0, 1)")


class Patching(CausalExperiment):
    def run(self) -> dict[str, Any]:
        self.load()
        x = self.x
        layers = list(range(self.lm.sites.n_layers)) if x.all_layers else self.layers
        pairs = self.pairs()
        rows, attr = [], []
        with self.phase("patch"), self.bar(len(pairs), f"patch ({len(pairs)} pairs x {len(layers)} layers)") as bar:
            for pair in pairs:
                rows += self.one_pair(pair, layers, attr)
                bar.update(1)
        df = pd.DataFrame(rows)
        df["effect"] = P.normalised(causal.to_tensor(df.logit_diff.to_numpy(float)), causal.to_tensor(df.target_logit_diff.to_numpy(float)),
                                    causal.to_tensor(df.source_logit_diff.to_numpy(float))).numpy()
        df["changed"] = df.pick != df.target_pick
        df["to_source"] = (df.pick == df.source_pick) & (df.source_pick != df.target_pick)
        return self.write(df, pd.DataFrame(attr), layers, pairs)

    def one_pair(self, pair: causal.Pair, layers: list[int], attr: list[dict]) -> list[dict]:
        x = self.x
        aligned = self.aligned(pair)
        span = self.span(pair, aligned)
        patches = [P.Patch(L, span) for L in layers]
        singles = aligned[-int(x.positions):] if x.positions else aligned
        if x.grid == "layer_position":
            patches += [P.Patch(L, (q,)) for L in layers for q in singles]
        rec = self.patched(pair, "replace", patches, P.Value(), [x.grid, x.positions])
        n = len(pair.target)
        t, s = rec["target"], rec["source"]
        out = []
        for j, p in enumerate(patches):
            out.append({"item": pair.item, "layer": p.layer,
                        "patch_position": "span" if j < len(layers) else str(p.positions[0] - n),
                        **{m: rec[m][j] for m in causal.METRICS},
                        "target_logit_diff": t["logit_diff"], "source_logit_diff": s["logit_diff"],
                        "target_pick": t["pick"], "source_pick": s["pick"]})
        if x.attribution:
            good, bad = self.letter_ids[pair.good], self.letter_ids[pair.bad]

            def metric(logits):
                return logits[good].logsumexp(-1) - logits[bad].logsumexp(-1)

            est = P.attribution(self.lm.model, self.lm.sites, self.site, pair.target, pair.source, layers, metric,
                                align_rule=x.align)
            for i, L in enumerate(layers):
                for q in singles:
                    attr.append({"item": pair.item, "layer": L, "patch_position": str(q - n),
                                 "attribution": float(est[i, q])})
        return out

    def span(self, pair: causal.Pair, aligned: tuple[int, ...]) -> tuple[int, ...]:
        """The positions a layer's patch writes (``experiment.span``)."""
        if self.x.span == "all":
            return aligned
        if self.x.span == "last":
            return (len(pair.target) - 1,)
        if self.x.span in causal.ROLES:
            role = pair.roles.get(self.x.span)
            if not role:
                need = " (a 'subject' string in the item's metadata, inside its question)" \
                    if self.x.span == "subject" else ""
                raise DataError(f"item {pair.item!r}: its prompt has no {self.x.span} tokens{need}; "
                                f"experiment.span={self.x.span} needs them on every pair")
            outside = [q for q in role if q not in set(aligned)]
            if outside:
                raise DataError(f"item {pair.item!r}: {self.x.span} tokens at {outside} have no aligned source "
                                f"position under experiment.align={self.x.align}")
            return role
        amap = P.align(len(pair.target), len(pair.source), self.x.align)
        diff = tuple(q for q in aligned if pair.target[q] != pair.source[amap[q]])
        if not diff:
            raise DataError(f"item {pair.item!r}: its two prompts have no differing aligned token; "
                            f"experiment.span=differing needs one: use experiment.span=last or all")
        return diff

    def per_layer(self, df: pd.DataFrame) -> pd.DataFrame:
        x = self.x
        whole = df[df.patch_position == "span"]
        rows = []
        for L, g in whole.groupby("layer", sort=True):
            m, lo, hi = causal.recovered(g, int(x.n_bootstrap), self.seed, float(x.alpha))
            c, c_lo, c_hi, n = causal.rate(g.changed.to_numpy(), float(x.alpha))
            rows.append({"layer": L, "effect": m, "effect_low": lo, "effect_high": hi, "change_rate": c,
                         "change_low": c_lo, "change_high": c_hi, "to_source_rate": float(g.to_source.mean()),
                         "kl": float(g.kl.mean()), "pairs": n})
        return pd.DataFrame(rows)

    def write(self, df: pd.DataFrame, attr: pd.DataFrame, layers: list[int], pairs: list) -> dict[str, Any]:
        x = self.x
        meta = {**self.meta(), "preset": x.preset, "pairs": x.pairs, "grid": x.grid, "align": x.align}
        table = self.per_layer(df)
        best = None
        if table.effect.notna().any():
            # the earliest layer within 1% of the largest effect: at the residual stream a patch of the
            # last position reproduces the clean run from some layer on, and every later layer ties
            top = float(table.effect.max())
            best = table[table.effect >= top - 0.01 * abs(top)].iloc[0].to_dict()
        heat = None
        if x.grid == "layer_position":
            single = df[df.patch_position != "span"]
            heat = single.groupby(["layer", "patch_position"], sort=False).effect.mean().reset_index()
        agreement = None
        if len(attr):
            exact = df[df.patch_position != "span"].assign(delta=lambda d: d.logit_diff - d.target_logit_diff)
            both = exact.merge(attr, on=["item", "layer", "patch_position"])
            ok = np.isfinite(both.delta) & np.isfinite(both.attribution)
            r = float(np.corrcoef(both.delta[ok], both.attribution[ok])[0, 1]) if ok.sum() > 2 else float("nan")
            agreement = {"pearson_r": r, "n": int(ok.sum())}
            store.write_parquet(self.out / "attribution.parquet", both)
        informative = int(sum(1 for _, g in df.groupby("item") if (g.source_pick != g.target_pick).iloc[0]))
        store.write_parquet(self.out / "results.parquet", table.assign(**meta))
        store.write_parquet(self.out / "patches.parquet", df.assign(**meta))
        verdict = None
        if best is not None:
            verdict = {"threshold": float(x.threshold), "layer": int(best["layer"]),
                       "change_rate": best["change_rate"], "low": best["change_low"], "high": best["change_high"],
                       "verdict": verdicts.verdict(best["change_rate"], best["change_low"], best["change_high"],
                                                   float(x.threshold))}
        summary = {**meta, "n_pairs": len(pairs), "informative_pairs": informative, "layers": layers,
                   "strongest_layer": None if best is None else {
                       k: (int(v) if k in ("layer", "pairs") else float(v)) for k, v in best.items()},
                   "verdict": verdict, "attribution": agreement}
        if verdict is not None:
            store.write_json(self.out / "verdict.json", verdict)
        summary = self.finish(summary, headline(summary))
        if x.premortem:
            v = verdict or {"layer": None, "change_rate": float("nan"), "low": float("nan"), "high": float("nan")}
            verdicts.write_premortem(self.out, int(x.premortem), f"change rate at the strongest layer (L{v['layer']})",
                                     v["change_rate"], v["low"], v["high"], float(x.threshold), summary["seconds"],
                                     self.lm.name, self.bench.name, pairs=len(pairs), informative_pairs=informative)
        from eas.report.causal import write_patch_figures

        self.figures(write_patch_figures, table, heat, self.out / "figures")
        return summary


def headline(s: dict) -> list[str]:
    lines = [(f"eas patch: {s['model']} on {s['benchmark']} ({s['pairs']} pairs @ {s['steer_target']}, "
             f"{s['n_pairs']} pairs, {s['informative_pairs']} whose clean and corrupted answers differ)")]
    b = s["strongest_layer"]
    if b is None:
        lines.append("  no layer has a defined effect (the clean and corrupted logit differences are equal)")
        return lines
    lines.append(f"  strongest layer {b['layer']}: effect {b['effect']:.3f} [{b['effect_low']:.3f}, "
                 f"{b['effect_high']:.3f}] of the clean - corrupted gap; change rate {b['change_rate']:.2f} "
                 f"[{b['change_low']:.2f}, {b['change_high']:.2f}]")
    v = s["verdict"]
    lines.append(f"  verdict (change rate >= {v['threshold']:.2f} at layer {v['layer']}): {v['verdict']}")
    if s.get("attribution"):
        lines.append(f"  attribution patching vs exact: Pearson r {s['attribution']['pearson_r']:.3f} "
                     f"(n={s['attribution']['n']})")
    return lines


def run(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    return Patching(cfg, out_dir).run()


def report(runs: list[Path]) -> dict[str, pd.DataFrame]:
    """``eas-report``'s table of patch runs: every run's per-layer rows."""
    table = CausalExperiment.results_table(runs)
    return {} if table is None else {"layers": table}
