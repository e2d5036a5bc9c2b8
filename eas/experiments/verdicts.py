"""The seed plan's pre-mortems: one verdict rule and one writer, shared by the kinds that run them.

A pre-mortem is a kind run under its preset (``conf/experiment/premortem<N>.yaml``), which sets
``experiment.premortem: N``; the kind then calls ``write_premortem`` with its headline metric:

- PM1 (``experiment=premortem1``, similarity): the projection correlation of the model pairs;
- PM2 (``experiment=premortem2``, probe): the error probe's accuracy at the model's own errors;
- PM3 (``experiment=premortem3``, patch): the change rate at the strongest layer.

``verdict`` is the rule (``eas.experiments.causal.threshold_verdict``: one rule for all three).
``eas-plan`` reads the ``pm<N>.json`` files this writes.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from eas import store
from eas.experiments.causal import threshold_verdict

PREMORTEMS = {1: "cross-model similarity", 2: "error prediction", 3: "activation patching"}


def verdict(value: float, low: float, high: float, threshold: float) -> str:
    """PASS when the 95% interval ``[low, high]`` of ``value`` lies at or above ``threshold``, FAIL
    when it lies below, INCONCLUSIVE when it straddles ``threshold`` or is undefined (NaN).

    ``value`` is the point estimate; the rule reads only its interval."""
    del value
    return threshold_verdict(low, high, threshold)


def command(n: int) -> str:
    """The command line of this job (its Hydra overrides), else the preset's plain command."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return " ".join(["eas", *HydraConfig.get().overrides.task])
    except (ImportError, ValueError):
        pass
    return f"eas experiment=premortem{n}"


def _num(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def write_premortem(out: Path, n: int, metric: str, value: float, low: float, high: float, threshold: float,
                    seconds: float, model: str, benchmark: str, /, **details: Any) -> dict[str, Any]:
    """Write ``pm<n>.json`` and ``pm<n>_summary.md`` into ``out``; returns the json's content.

    Args:
        metric: What ``value`` is, in words (e.g. "change rate at the strongest layer (L2)").
        value, low, high: The metric and its 95% interval (NaN: undefined, INCONCLUSIVE).
        seconds: The job's wall seconds.
        details: Further numbers the summary lists (a p-value, n, a baseline), as they are.
    """
    v = verdict(value, low, high, threshold)
    rec = {"premortem": n, "name": PREMORTEMS.get(n, f"pre-mortem {n}"),
           "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "seconds": float(seconds),
           "model": model, "benchmark": benchmark, "metric": metric, "value": _num(value), "low": _num(low),
           "high": _num(high), "threshold": float(threshold), "verdict": v, "command": command(n),
           "run_dir": str(Path(out).resolve()), "details": details}

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [f"# Pre-mortem {n}: {rec['name']}", "",
             "| field | value |", "|---|---|",
             f"| date (UTC) | {rec['date']} |",
             f"| duration | {seconds:.1f} s |",
             f"| model | {model} |",
             f"| benchmark | {benchmark} |",
             f"| metric | {metric} |",
             f"| value (95% CI) | {fmt(rec['value'])} [{fmt(rec['low'])}, {fmt(rec['high'])}] |",
             f"| threshold | {threshold:g} |",
             f"| verdict | **{v}** |",
             f"| command | `{rec['command']}` |",
             *(f"| {k} | {val} |" for k, val in details.items()),
             "",
             (f"PASS: the interval lies at or above {threshold:g}; FAIL: below it; INCONCLUSIVE: it straddles "
              f"{threshold:g} (or is undefined). Next phases: `eas-plan {Path(out).parent}`."), ""]
    store.write_json(Path(out) / f"pm{n}.json", rec)
    store.write_text(Path(out) / f"pm{n}_summary.md", "\n".join(lines))
    return rec
