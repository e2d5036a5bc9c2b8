"""``eas-plan DIR [DIR...]``: the three pre-mortems' verdicts and the phases they call for.

Reads every ``pm1.json``, ``pm2.json`` and ``pm3.json`` below the folders (written by the pre-mortem
presets, ``eas.experiments.verdicts``), keeps the newest of each (by its ``date``), prints a table of
the three verdicts, then the phases ``DECISIONS`` prescribes, each with the command that runs it.

The decision table (the execution plan's, written down here as data; one entry per pre-mortem and
verdict):

- PM1 cross-model similarity. PASS: the cross-model transfer phase (vectors carried through the
  fitted maps and used on the other model). FAIL: skip it, the representations do not align
  linearly at the threshold. INCONCLUSIVE: rerun with more texts (``experiment.max_texts``).
- PM2 error prediction. PASS: the error-probe phase (per-layer error probes over poolings, with
  abstention at a stricter threshold). FAIL: skip it, the activations do not predict the model's
  errors. INCONCLUSIVE: rerun with more items (``max_sample_size``, a larger benchmark).
- PM3 activation patching. PASS: the causal phase (patching over layer x position, mediation of
  the steering direction). FAIL: skip it, no single layer carries the answer. INCONCLUSIVE: rerun
  with more pairs (``experiment.max_pairs``).
- A pre-mortem with no json: the command that runs it.

Exit status: 0 when a pre-mortem was found, 2 when no folder holds any (or a folder is missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eas.report.tables import to_markdown

NAMES = {1: "cross-model similarity", 2: "error prediction", 3: "activation patching"}


@dataclass(frozen=True)
class Step:
    """A phase the plan prescribes (``command`` None: skipped, ``why`` says so)."""

    phase: str
    command: str | None
    why: str


DECISIONS: dict[int, dict[str, list[Step]]] = {
    1: {
        "PASS": [Step("cross-model transfer",
                      "eas experiment=similarity experiment.transfer=true experiment.max_texts=256",
                      "representations align linearly: carry the steering vectors of models[0] into the others "
                      "and steer with them (against a same-norm random control)")],
        "FAIL": [Step("cross-model transfer", None,
                      "skipped: the projection correlation lies below the threshold; vectors would not carry over")],
        "INCONCLUSIVE": [Step("pre-mortem 1 again, more texts", "eas experiment=premortem1 experiment.max_texts=512",
                              "the interval straddles the threshold: raise experiment.max_texts (held-out texts "
                              "narrow the interval)")],
    },
    2: {
        "PASS": [Step("error probes and abstention",
                      "eas experiment=probe experiment.target=error experiment.pooling=[last,mean] "
                      "experiment.abstain_threshold=0.7",
                      "activations predict the model's errors: probe every layer and pooling, and abstain on the "
                      "items the probe calls wrong (accuracy-coverage against the model's max probability)")],
        "FAIL": [Step("error probes and abstention", None,
                      "skipped: the error probe's balanced accuracy lies below the threshold")],
        "INCONCLUSIVE": [Step("pre-mortem 2 again, more items", "eas experiment=premortem2 max_sample_size=2000",
                              "the interval straddles the threshold: raise max_sample_size (or use a larger "
                              "benchmark); the interval is over items")],
    },
    3: {
        "PASS": [Step("causal: patching by layer and position",
                      "eas experiment=patch experiment.grid=layer_position experiment.positions=16",
                      "one layer's patch flips most answers: find the positions that carry it"),
                 Step("causal: mediation of the steering direction", "eas experiment=mediation",
                      "interchange along the steering vector against steering and prompting")],
        "FAIL": [Step("causal phases", None, "skipped: patching at one layer flips fewer answers than the threshold")],
        "INCONCLUSIVE": [Step("pre-mortem 3 again, more pairs", "eas experiment=premortem3 experiment.max_pairs=96",
                              "the interval straddles the threshold: raise experiment.max_pairs (the interval is "
                              "over pairs)")],
    },
}
"""Pre-mortem -> verdict -> the phases it calls for (module docstring)."""


def find_premortems(dirs: Sequence[Path]) -> dict[int, dict[str, Any]]:
    """The newest ``pm<N>.json`` (by its ``date``, then the file's mtime) of each N below ``dirs``."""
    found: dict[int, tuple[tuple[str, float], dict[str, Any]]] = {}
    for d in dirs:
        for n in NAMES:
            for f in Path(d).rglob(f"pm{n}.json"):
                try:
                    rec = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                if not isinstance(rec, dict) or "verdict" not in rec:
                    continue
                rec.setdefault("run_dir", str(f.parent))
                key = (str(rec.get("date", "")), f.stat().st_mtime)
                if n not in found or key > found[n][0]:
                    found[n] = (key, rec)
    return {n: rec for n, (_, rec) in sorted(found.items())}


def _carry(n: int, rec: dict[str, Any], command: str) -> str:
    """``command`` with the pre-mortem's model and benchmark (the phase runs on what was checked)."""
    if n == 1:
        models = str(rec.get("model") or "").split("+")
        extra = f" experiment.models=[{','.join(models)}]" if len(models) > 1 and "experiment.models" not in command \
            else ""
    else:
        extra = f" model={rec['model']}" if rec.get("model") else ""
    bench = f" benchmark={rec['benchmark']}" if rec.get("benchmark") else ""
    return command + extra + bench


def plan(found: dict[int, dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(verdict rows, step rows)``: one verdict row per pre-mortem (missing ones too), the steps of each."""
    verdicts, steps = [], []
    for n, name in NAMES.items():
        rec = found.get(n)
        if rec is None:
            verdicts.append({"pre-mortem": f"PM{n}", "name": name, "metric": None, "value": None, "95% CI": None,
                             "threshold": None, "verdict": "missing", "run": None})
            steps.append({"pre-mortem": f"PM{n}", "phase": f"pre-mortem {n}", "command": f"eas experiment=premortem{n}",
                          "why": "not run yet: run it first"})
            continue
        lo, hi = rec.get("low"), rec.get("high")
        verdicts.append({"pre-mortem": f"PM{n}", "name": name, "metric": rec.get("metric"), "value": rec.get("value"),
                         "95% CI": "n/a" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]",
                         "threshold": rec.get("threshold"), "verdict": rec["verdict"], "run": rec.get("run_dir")})
        for s in DECISIONS[n].get(rec["verdict"], []):
            steps.append({"pre-mortem": f"PM{n}", "phase": s.phase,
                          "command": None if s.command is None else _carry(n, rec, s.command), "why": s.why})
    return verdicts, steps


def render(verdicts: list[dict[str, Any]], steps: list[dict[str, Any]]) -> str:
    import pandas as pd

    lines = ["# eas plan", "", "## Pre-mortems", "", to_markdown(pd.DataFrame(verdicts)), "",
             "## Next phases", ""]
    for s in steps:
        lines.append(f"- {s['pre-mortem']} {s['phase']}: {s['why']}")
        if s["command"]:
            lines.append(f"    {s['command']}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: 0 when a pre-mortem was found, 2 when none was (or a folder is missing)."""
    parser = argparse.ArgumentParser(prog="eas-plan", description="The pre-mortems' verdicts and the phases they "
                                                                  "call for (pm1.json, pm2.json, pm3.json below DIR).")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders holding pre-mortem runs")
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        print(f"eas-plan: error: {missing[0]}: no such folder", file=sys.stderr)
        return 2
    found = find_premortems(args.dirs)
    if not found:
        print(f"eas-plan: error: no pm1.json, pm2.json or pm3.json below {', '.join(map(str, args.dirs))}; run "
              f"eas experiment=premortem1 (2, 3) first", file=sys.stderr)
        return 2
    print(render(*plan(found)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
