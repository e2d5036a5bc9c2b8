"""The end of a sweep: record every cell's state and merge the finished runs into one report.

``finalize(DIR)`` writes ``DIR/sweep_status.json`` and ``DIR/sweep_status.md`` (every
cell: state, the backend's job id, error) and, through ``eas-report``, ``DIR/report/`` (merged
results table, summary table, figures) from the latest run of every finished job.
It runs at the end of a multirun (``SweepCallback``), in the dependent job a
detached sweep submits, and as ``eas-sweep report DIR``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import pandas as pd

from eas.report.tables import to_markdown
from eas.sweep.status import RESUMABLE, SweepStatus, sweep_status

log = logging.getLogger("eas")
STATUS_JSON = "sweep_status.json"
STATUS_MD = "sweep_status.md"
REPORT_DIR = "report"


def _markdown(st: SweepStatus, report: Path | None) -> str:
    lines = [f"# sweep {st.sweep_dir}", "", st.counts(), ""]
    if report is not None:
        lines += [f"Merged results: {report}/summary_table.md", ""]
    table = pd.DataFrame([{"state": c.state, "job": str(c.job_id or c.num or ""), "cell": " ".join(c.cell),
                           "error": ((c.error or "").strip().splitlines() or [""])[-1]} for c in st.cells],
                         columns=["state", "job", "cell", "error"])
    lines.append(to_markdown(table))
    failed = [j for j in st.jobs if j.state in RESUMABLE and j.error]
    if failed:
        lines += ["", "## Errors", ""]
        for j in failed:
            lines += [f"### job {j.num} ({' '.join(j.overrides)})", "", "```", j.error.strip(), "```", ""]
    return "\n".join(lines) + "\n"


def merge(st: SweepStatus, quiet: bool = False) -> Path | None:
    """Merge the finished runs of a sweep into ``<sweep dir>/report`` with ``eas-report``."""
    dirs = st.result_dirs()
    if not dirs:
        return None
    from eas.report import cli as report_cli

    out = st.sweep_dir / REPORT_DIR
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf) if quiet else contextlib.nullcontext():
            rc = report_cli.main([*map(str, dirs), "--out", str(out)])
    except Exception as e:  # noqa: BLE001 - the cell records matter more than the report
        log.warning("merged report not written: %s: %s", type(e).__name__, e)
        return None
    return out if rc == 0 else None


def finalize(sweep_dir: str | Path, quiet: bool = False) -> SweepStatus:
    """Write the sweep's status files and merged report; return the status.

    Args:
        sweep_dir: A Hydra multirun dir.
        quiet: Do not print the merged table (``eas-report`` prints it).
    """
    from eas import store

    st = sweep_status(sweep_dir)
    report = merge(st, quiet=quiet)
    store.write_json(st.sweep_dir / STATUS_JSON, {**st.as_dict(), "report": str(report) if report else None})
    store.write_text(st.sweep_dir / STATUS_MD, _markdown(st, report))
    return st
