"""How long each run took, phase by phase: one row per run from its ``manifest.json``.

Every job writes ``seconds`` (the whole job) and ``phases`` (``eas.experiments.base.Experiment.phase``:
``load``, ``unsteered``, ``capture``, ``sweep_<split>``, each the wall seconds spent in it) into its
manifest. ``duration_table`` puts them side by side with what sizes a run: the model, the benchmark,
the experiment kind, the grid (``len(layer) x len(strength)`` of the run's config) and the device.
A run written before phases were recorded has empty phase columns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eas.report.setups import MANIFEST_FILE
from eas.report.tables import to_markdown

DURATIONS_CSV = "durations.csv"
DURATIONS_MD = "durations.md"
PHASE = "phase."  # the prefix of the phase columns


def _count(v: Any) -> int:
    """How many values a config's ``layer`` / ``strength`` holds (a list, a number, ``"[1,2]"``)."""
    if isinstance(v, (list, tuple)):
        return len(v)
    if isinstance(v, str) and v.strip().startswith("["):
        return len([p for p in v.strip()[1:-1].split(",") if p.strip()])
    return 0 if v is None else 1


def duration_row(run: Path) -> dict[str, Any] | None:
    """One run's row, or None when it has no readable ``manifest.json``."""
    try:
        m = json.loads((Path(run) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    cfg = m.get("config") or {}
    layers, strengths = _count(cfg.get("layer")), _count(cfg.get("strength"))
    row = {"model": (cfg.get("model") or {}).get("name"), "benchmark": (cfg.get("benchmark") or {}).get("name"),
           "experiment": (cfg.get("experiment") or {}).get("name") or m.get("experiment"),
           "grid": f"{layers} x {strengths}", "cells": layers * strengths, "device": m.get("device"),
           **{f"{PHASE}{k}": float(v) for k, v in (m.get("phases") or {}).items()},
           "total": m.get("seconds"), "run_dir": str(run)}
    return row


def duration_table(runs: Sequence[Path]) -> pd.DataFrame:
    """One row per run with a manifest: model, benchmark, experiment, grid (``"L x S"``), cells,
    device, ``phase.<name>`` seconds (phases in the order first seen), ``total`` seconds, run_dir."""
    rows = [r for r in (duration_row(run) for run in runs) if r is not None]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    phases = [c for c in df.columns if c.startswith(PHASE)]
    head = ["model", "benchmark", "experiment", "grid", "cells", "device"]
    return df[[*head, *phases, "total", "run_dir"]]


def durations_markdown(df: pd.DataFrame) -> str:
    lines = ["# eas report: run durations", "",
             (f"{len(df)} run(s); seconds of wall time per phase (eas.experiments.base.Experiment.phase) "
              "and in total (the whole job, phases and what lies between them)."), "",
             to_markdown(df.rename(columns=lambda c: c.removeprefix(PHASE)), floatfmt=".1f")]
    return "\n".join(lines) + "\n"


def write_durations(runs: Sequence[Path], out: Path) -> pd.DataFrame:
    """``durations.csv`` and ``durations.md`` of ``runs`` in ``out``; returns the table (empty: nothing
    written)."""
    df = duration_table(runs)
    if df.empty:
        return df
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / DURATIONS_CSV, index=False)
    (out / DURATIONS_MD).write_text(durations_markdown(df))
    return df
