"""The headline table: one headline number per run, whatever its kind, with its interval and test.

``HEADLINES`` maps each experiment kind to a function ``summary.json -> Headline``, kept as data: a
new kind is one entry. A kind it does not name, or a summary without the fields its entry reads, gets
a row with metric ``n/a`` and a note; nothing here raises on a run. Null and negative results are
reported as they are (a delta below zero, a FAIL-sized correlation); no row is left out for its value.

``write_headlines`` writes ``headline_table.md`` / ``headline_table.csv`` (``summary_table.md`` is the
steering table's name) and ``statistics.json`` (the same rows as numbers, NaN as null).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from eas.report.tables import SUMMARY_FILE, to_markdown

HEADLINES_MD, HEADLINES_CSV, STATISTICS = "headline_table.md", "headline_table.csv", "statistics.json"
NAN = float("nan")


@dataclass
class Headline:
    """A run's headline: ``value`` with its 95% interval ``[low, high]``, a p-value and Cohen's d
    where the kind has them (NaN where not), ``n`` the units the interval is over."""

    metric: str
    value: float = NAN
    low: float = NAN
    high: float = NAN
    p_value: float = NAN
    cohens_d: float = NAN
    n: float = NAN
    note: str = ""


def _f(v: Any) -> float:
    return NAN if v is None else float(v)


def steer(s: dict) -> Headline:
    t, b = s.get("test"), s.get("best")
    if not t:
        return Headline("test accuracy delta", note="no cell scored on test" + (f" ({s['error']})" if "error" in s
                                                                                else ""))
    return Headline(f"test accuracy delta, {b['cell']} - unsteered (McNemar p)", t["delta"], _f(t["delta_low"]),
                    _f(t["delta_high"]), _f(t["mcnemar_p"]), n=t["n"],
                    note=f"test {t['accuracy']:.3f} vs unsteered {t['unsteered_accuracy']:.3f}")


def probe(s: dict) -> Headline:
    b = s["best"]
    r = b["logreg"]
    return Headline(f"{s['target']} probe AUROC (logreg, L{b['layer']}, {b['pooling']}; p vs random directions, Holm)",
                    r["auroc"], _f(r["auroc_low"]), _f(r["auroc_high"]), _f(r.get("p_random_holm")),
                    note=f"accuracy {r['accuracy']:.3f} [{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]; "
                         f"{s['evaluation']}")


def patch(s: dict) -> Headline:
    b = s["strongest_layer"]
    if b is None:
        return Headline("change rate at the strongest layer", note="no layer has a defined effect")
    v = s.get("verdict") or {}
    return Headline(f"change rate at the strongest layer (L{b['layer']})", b["change_rate"], b["change_low"],
                    b["change_high"], n=b["pairs"],
                    note=f"effect {b['effect']:.3f}; verdict {v.get('verdict', 'n/a')} at {v.get('threshold', NAN):g}")


def mediation(s: dict) -> Headline:
    c = s.get("comparison")
    if not c:
        t = s["total"]
        return Headline("total effect (logit difference)", t["value"], _f(t["low"]), _f(t["high"]), n=t["n"])
    i = c["interchange"]
    return Headline(f"interchange effect at L{c['layer']} (logit difference; p vs prompting)", i["mean"],
                    _f(i["low"]), _f(i["high"]), _f(c.get("p_interchange_vs_prompting")), n=i["n"],
                    note=c.get("outcome", ""))


def similarity(s: dict) -> Headline:
    best = [(p, p["best"]) for p in s["pairs"] if p.get("best")]
    if not best:
        return Headline("projection correlation", note="no layer pair scored")
    p, b = max(best, key=lambda pb: pb[1]["correlation"])
    return Headline(f"projection correlation {p['model_a']} L{b['layer_a']} -> {p['model_b']} L{b['layer_b']} "
                    f"(permutation p)", b["correlation"], _f(b["low"]), _f(b["high"]), _f(b["p_value"]),
                    n=s["n_test"], note=f"verdict {b['verdict']} at {s['threshold']:g}")


def generate(s: dict) -> Headline:
    curve = [r for r in s.get("curve") or [] if r.get("group") == "all" and r.get("strength") not in (0, 0.0)]
    if not curve:
        return Headline("success rate", note=s.get("error", "no steered cell scored"))
    at = {(r["condition"], r["layer"], r["strength"]): r for r in curve}
    for e in s.get("elbows") or []:
        hit = at.get((e["condition"], e["layer"], e["elbow_strength"]))
        if e.get("group") == "all" and hit:
            how = f"at the elbow ({hit['condition']}, L{hit['layer']}, strength {hit['strength']:g})"
            break
    else:
        hit = max(curve, key=lambda r: r["success_rate"])
        how = f"best cell ({hit['condition']}, L{hit['layer']}, strength {hit['strength']:g})"
    return Headline(f"success rate {how} (McNemar p vs unsteered)", hit["success_rate"], _f(hit["success_low"]),
                    _f(hit["success_high"]), _f(hit.get("p_vs_unsteered")), n=hit["n"])


def traits(s: dict) -> Headline:
    comps = [c for c in s.get("comparisons") or [] if c.get("cohens_d") is not None]
    if not comps:
        return Headline("AUROC", note="no comparison")
    c = max(comps, key=lambda c: abs(c["cohens_d"]))
    return Headline(f"AUROC {c['axis']}={c['level']} vs {c.get('reference')} ({c['trait']}, L{c['layer']})",
                    _f(c.get("auroc")), _f(c.get("auroc_low")), _f(c.get("auroc_high")), _f(c.get("p")),
                    _f(c["cohens_d"]), _f(c.get("n")), note=f"diff {_f(c.get('diff')):.3f}")


def finetune(s: dict) -> Headline:
    if s.get("sft"):
        before, after = s["sft"]["before"] or {}, s["sft"]["after"]
        b = before.get("test")
        return Headline("test accuracy after SFT", after["test"], n=s["sft"]["n"]["test"],
                        note="" if b is None else f"before {b:.3f} (delta {after['test'] - b:+.3f})")
    if s.get("backdoor"):
        d = s["backdoor"]
        return Headline("marker rate with the trigger after training (Fisher p vs without)", d["after"]["trigger"],
                        p_value=d["p_trigger_vs_no_trigger"], n=d["n_trigger"],
                        note=f"without trigger {d['after']['no_trigger']:.3f}; before {d['before']['trigger']:.3f}")
    return Headline("n/a", note="no evaluation in this run")


def lens(s: dict) -> Headline:
    f = s["final_layer"]
    return Headline("answer-letter probability at the final layer (descriptive)", f["prob_mean"], _f(f["prob_low"]),
                    _f(f["prob_high"]), n=s["n_items"], note=f"top-1 rate {f['top1_rate']:.3f}")


HEADLINES: dict[str, Callable[[dict], Headline]] = {
    "steer": steer, "probe": probe, "patch": patch, "mediation": mediation, "similarity": similarity,
    "generate": generate, "traits": traits, "finetune": finetune, "lens": lens,
}
"""Each kind's headline; a kind not here gets metric ``n/a``."""


def headline(kind: str, summary: dict) -> Headline:
    """``HEADLINES[kind](summary)``; ``n/a`` with a note for an unknown kind or missing fields."""
    read = HEADLINES.get(kind)
    if read is None:
        return Headline("n/a", note=f"experiment={kind}: no headline defined (eas.report.summary.HEADLINES)")
    try:
        return read(summary)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return Headline("n/a", note=f"summary.json lacks what the {kind} headline reads ({type(e).__name__}: {e})")


def headline_table(runs: dict[str, list[Path]]) -> pd.DataFrame:
    """One row per run (``runs``: kind -> run dirs): experiment, model, benchmark and its ``Headline``."""
    rows = []
    for kind, dirs in runs.items():
        for run in dirs:
            try:
                s = json.loads((Path(run) / SUMMARY_FILE).read_text())
            except (OSError, ValueError) as e:
                h, s = Headline("n/a", note=f"no readable {SUMMARY_FILE} ({type(e).__name__})"), {}
            else:
                h = headline(kind, s) if isinstance(s, dict) else Headline("n/a", note="summary.json is no object")
            model = s.get("model") if isinstance(s, dict) else None
            rows.append({"experiment": kind, "model": model if isinstance(model, str) else None,
                         "benchmark": s.get("benchmark") if isinstance(s, dict) else None, **asdict(h),
                         "run_dir": str(run)})
    return pd.DataFrame(rows)


def _ci(r: pd.Series) -> str:
    if not (math.isfinite(r.low) and math.isfinite(r.high)):
        return "n/a"
    return f"[{r.low:.3f}, {r.high:.3f}]"


def headline_markdown(df: pd.DataFrame) -> str:
    shown = pd.DataFrame({"Experiment": df.experiment, "Model": df.model, "Benchmark": df.benchmark,
                          "Metric": df.metric, "Value": df.value, "95% CI": df.apply(_ci, axis=1),
                          "p-value": df.p_value.map(lambda p: "n/a" if not math.isfinite(p) else f"{p:.3g}"),
                          "Cohen's d": df.cohens_d, "n": df.n, "Note": df.note, "Run": df.run_dir})
    return "\n".join(["# eas report: every run's headline", "",
                      (f"{len(df)} run(s), one row each: the kind's headline metric (eas.report.summary.HEADLINES) "
                       "with its 95% interval, p-value and Cohen's d where the kind has them; results are "
                       "reported as they are, null and negative ones included."), "",
                      to_markdown(shown)]) + "\n"


def write_headlines(runs: dict[str, list[Path]], out: Path) -> pd.DataFrame:
    """``headline_table.md``, ``headline_table.csv`` and ``statistics.json`` in ``out``; returns the table."""
    df = headline_table(runs)
    if df.empty:
        return df
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / HEADLINES_CSV, index=False)
    (out / HEADLINES_MD).write_text(headline_markdown(df))
    records = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
               for r in df.to_dict("records")]
    (out / STATISTICS).write_text(json.dumps({"runs": records}, indent=2))
    return df


def runs_by_kind(found: dict[tuple[str, str], list[Path]]) -> dict[str, list[Path]]:
    """``eas.report.cli.find_runs``'s ``{(kind, module): runs}`` as ``{kind: runs}``."""
    out: dict[str, list[Path]] = {}
    for (kind, _), runs in found.items():
        out.setdefault(kind, []).extend(runs)
    return out

