"""``eas-report DIR [DIR...] [--out OUT]``: merge runs, select on val, write tables and figures.

Each DIR is a run dir, a Hydra multirun dir, or any folder holding them; every
``results.parquet`` (steering runs) below it is merged. OUT (default: ``<first DIR>/report``)
receives ``merged_results.parquet``, ``merged_results.csv``, ``summary_table.md``,
``summary_table.csv`` and ``figures/``. Probe runs (``probe_results.parquet``) add
``merged_probe_results.parquet``/``.csv`` and ``probe_table.md``. The markdown table is printed.

Runs made with different setups (``eas.report.setups``: every config field that changes
results) are reported as separate rows, with a ``setup`` column and one ``setup.<field>``
column per field that differs; ``summary_table.md`` names those fields. A ``results.parquet``
that cannot be read or lacks columns is skipped and listed with its reason (printed and in
``summary_table.md``); the exit status is 2 only when no run is usable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eas.report.figures import write_figures
from eas.report.seeds import write_seed_report
from eas.report.setups import SETUP, UNKNOWN_SETUP, setup_columns, setup_table
from eas.report.tables import (
    RESULTS_FILE,
    NoResultsError,
    cross_benchmark_table,
    load_runs,
    summaries,
    to_markdown,
)

PROBE_FILE = "probe_results.parquet"


def _failed_cells(paths: Sequence[Path]) -> list[str]:
    """``"run_dir: cell: error"`` lines from every ``summary.json`` that lists failed cells."""
    try:
        runs = summaries(paths)
    except NoResultsError:  # summaries are optional for the report
        return []
    if runs.empty or "failed_cells" not in runs:
        return []
    return [f"{r.run_dir}: {r.failed_cells}" for r in runs.itertuples() if r.failed_cells]


def _setups_section(results: pd.DataFrame) -> list[str]:
    """The "Setups" section when the runs were made with more than one setup, else nothing."""
    setups = setup_table(results)
    if len(setups) < 2:
        return []
    fields = [c.removeprefix(f"{SETUP}.") for c in setup_columns(results)]
    differ = f" They differ in: {', '.join(f'`{f}`' for f in fields)}." if fields else ""
    lines = ["", "## Setups", "",
             (f"These runs were made with {len(setups)} different setups (config fields that change "
              f"results, see eas.report.setups.setup_fields); each is reported in its own rows "
              f"(column `setup`) and never merged with another.{differ}"),
             "", to_markdown(setups)]
    if (setups[SETUP] == UNKNOWN_SETUP).any():
        lines += ["", (f"`{UNKNOWN_SETUP}`: runs without a config in manifest.json; they cannot be told "
                       "apart and are merged with each other.")]
    return lines


def _skipped_section(skipped: Sequence[str]) -> list[str]:
    """The "Skipped runs" section: each unusable ``results.parquet`` with its reason."""
    if not skipped:
        return []
    return ["", "## Skipped runs", "", "Not reported: their results.parquet is unusable.", "",
            *(f"- {line}" for line in skipped)]


def _markdown_report(table: pd.DataFrame, results: pd.DataFrame, failed: list[str],
                     skipped: Sequence[str] = ()) -> str:
    n_runs = results["run_dir"].nunique() if "run_dir" in results else 1
    n_setups = results[SETUP].nunique() if SETUP in results else 1
    lines = [
        "# eas report",
        "",
        (
            f"{n_runs} run(s) in {n_setups} setup(s), {len(results)} result rows. The best cell "
            "of each group is selected on val accuracy (ties: smaller |strength|, then lower "
            "layer) and reported on test; delta = test - unsteered test; wrong_to_right / "
            "right_to_wrong count test items that steering fixed / broke."
        ),
        "",
        to_markdown(table),
        *_setups_section(results),
    ]
    if table.empty:
        lines += ["", "No steered cell was scored on val in these runs."]
    missing = table[table["note"].astype(str) != ""]["note"] if "note" in table else []
    if len(missing):
        lines += ["", "## Missing test scores", "", *(f"- {note}" for note in missing)]
    if failed:
        lines += ["", "## Failed cells", "", *(f"- {line}" for line in failed)]
    lines += _skipped_section(skipped)
    return "\n".join(lines) + "\n"


def write_report(paths: Sequence[str | Path], out: str | Path | None = None,
                 skipped: list[str] | None = None) -> pd.DataFrame:
    """Merge the runs under ``paths`` and write the report files into ``out``.

    Args:
        paths: Run dirs, multirun dirs or folders holding them.
        out: Output folder; default ``<paths[0]>/report``.
        skipped: As for ``load_runs``: given a list, unusable ``results.parquet`` files are
            left out, appended to it and listed in ``summary_table.md``; ``None`` raises.

    Returns:
        The summary table (``cross_benchmark_table`` of the merged steering results; an
        empty frame without columns when the paths hold probe runs only).

    Raises:
        NoResultsError: A path has neither ``results.parquet`` nor ``probe_results.parquet`` in it,
            or no run under ``paths`` is usable.
        BadResultsError: A ``results.parquet`` is unusable and ``skipped`` is ``None``.
    """
    paths = [Path(p) for p in paths]
    out = Path(out) if out is not None else paths[0] / "report"
    steer = [p for p in paths if _holds(p, RESULTS_FILE)]
    probe = [p for p in paths if _holds(p, PROBE_FILE)]
    for p in paths:
        if not p.exists():
            raise NoResultsError(f"{p}: no such file or directory")
        if p not in steer and p not in probe:
            raise NoResultsError(f"{p}: no {RESULTS_FILE} (steering runs) or {PROBE_FILE} (probe runs) in it or any "
                                 f"subfolder (is it a run dir, a Hydra multirun dir, or a folder of those?)")
    if probe:
        write_probe_report(probe, out)
    if not steer:
        return pd.DataFrame()
    try:
        results = load_runs(steer, skipped)
    except NoResultsError:
        if not probe:  # no usable run at all
            raise
        out.mkdir(parents=True, exist_ok=True)  # the probe runs are reported; say what was not
        (out / "summary_table.md").write_text("\n".join(["# eas report", *_skipped_section(skipped or [])]) + "\n")
        return pd.DataFrame()
    table = cross_benchmark_table(results)
    out.mkdir(parents=True, exist_ok=True)
    results.to_parquet(out / "merged_results.parquet", index=False)
    results.to_csv(out / "merged_results.csv", index=False)
    table.to_csv(out / "summary_table.csv", index=False)
    report = _markdown_report(table, results, _failed_cells(steer), skipped or [])
    seeds = write_seed_report(results, out)  # across-seed statistics when a group has >= 2 seeds
    (out / "summary_table.md").write_text(report if seeds is None else f"{report}\n{seeds}")
    write_figures(results, out / "figures")
    return table


def _holds(path: Path, filename: str) -> bool:
    if path.is_file():
        return path.name == filename
    return path.is_dir() and next(path.rglob(filename), None) is not None


def write_probe_report(paths: Sequence[Path], out: Path) -> str:
    """``merged_probe_results.parquet``/``.csv`` and ``probe_table.md`` of the probe runs under ``paths``."""
    from eas.report.probes import merged_probe_markdown, probe_summaries
    from eas.report.seeds import load_probe_runs

    results = load_probe_runs(paths)
    out.mkdir(parents=True, exist_ok=True)
    results.to_parquet(out / "merged_probe_results.parquet", index=False)
    results.to_csv(out / "merged_probe_results.csv", index=False)
    text = merged_probe_markdown(probe_summaries(results["run_dir"].unique()), results)
    (out / "probe_table.md").write_text(text)
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eas-report",
        description="Merge eas run dirs, select the best cell on val, write tables and figures.",
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="run dir, Hydra multirun dir, or a folder holding them",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <first DIR>/report)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (0 ok, 2 no usable results found)."""
    args = _parser().parse_args(argv)
    skipped: list[str] = []
    try:
        table = write_report(args.dirs, args.out, skipped)
    except NoResultsError as err:
        print(f"eas-report: error: {err}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.dirs[0] / "report"
    if any(_holds(d, PROBE_FILE) for d in args.dirs):
        print((out / "probe_table.md").read_text())
    if len(table.columns):  # steering runs were merged
        print(to_markdown(table))
    if skipped:
        print("\n".join(_skipped_section(skipped)))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
