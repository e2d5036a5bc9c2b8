"""``eas-report DIR [DIR...] [--out OUT]``: merge runs of every experiment kind, write their tables.

Each DIR is a run dir, a Hydra multirun dir, or any folder holding them. Every run below them
is found (a folder with a ``manifest.json`` or a results file) and reported with the other
runs of its experiment kind. The kind is the one its manifest names (``experiment``, the same
as ``config.experiment.name``); only a folder without a manifest config is told by its files
(``RESULTS_FILES``). ``REPORTS`` maps each kind eas reports itself to its writer:

- steer: ``merged_results.parquet``/``.csv``, ``summary_table.md``/``.csv``, ``figures/`` and,
  for groups with two or more seeds, ``seed_summary.csv``/``seed_summary_table.md``;
- probe: ``merged_probe_results.parquet``/``.csv`` and ``probe_table.md``;
- cmaes: ``cmaes_gap.md``/``.csv``.

Any other kind (``eas.experiments.<kind>``, or the module ``config.experiment.module`` names)
is reported by its module's ``report(runs)`` when it defines one (``runs``: its run dirs;
it returns ``{table name: DataFrame}``), else by a generic table of one row per run from its
``summary.json``; both go to ``<kind>_table.md`` and ``<kind>_<table>.csv``. OUT defaults to
``<first DIR>/report``; the markdown of every kind is printed.

Over every run, whatever its kind: ``durations.csv``/``.md`` (``eas.report.durations``: each run's
seconds per phase, with its model, benchmark, grid and device) and ``headline_table.md``/``.csv`` with
``statistics.json`` (``eas.report.summary``: one headline metric per run, its 95% interval,
p-value and Cohen's d where the kind has them).

Runs made with different setups (``eas.report.setups``: every config field that changes
results) are reported as separate rows in every table, with a ``setup`` column and one
``setup.<field>`` column per field that differs. A results file that cannot be read or lacks
columns is skipped and listed with its reason (printed, in its kind's markdown and in
``skipped_runs.md``); the exit status is 2 only when no run is usable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from eas.report.cmaes import write_cmaes_report
from eas.report.durations import write_durations
from eas.report.figures import write_figures
from eas.report.probes import merged_probe_markdown, probe_summaries
from eas.report.seeds import PROBE_FILE, load_probe_runs, write_seed_report
from eas.report.setups import (
    MANIFEST_FILE,
    SETUP,
    UNKNOWN_SETUP,
    setup_columns,
    setup_table,
    tag_setups,
)
from eas.report.study import study_tables, write_study_figures
from eas.report.summary import headline_markdown, runs_by_kind, write_headlines
from eas.report.tables import (
    RESULTS_FILE,
    SUMMARY_FILE,
    NoResultsError,
    cross_benchmark_table,
    load_runs,
    summaries,
    to_markdown,
)

Writer = Callable[[list[Path], Path, list[str] | None], str | None]
"""A kind's report: ``(run dirs, out folder, skipped) -> markdown`` (``None``: no run usable)."""

RESULTS_FILES: dict[str, str] = {
    RESULTS_FILE: "steer",
    PROBE_FILE: "probe",
    "cmaes_history.parquet": "cmaes",
}
"""The file that tells a run's kind when its folder has no manifest config (older runs)."""
SKIPPED_FILE = "skipped_runs.md"


# --------------------------------------------------------------------------- finding runs


def run_kind(run_dir: Path) -> tuple[str, str] | None:
    """``(kind, module)`` of the run in ``run_dir``: the experiment kind its manifest names
    (``config.experiment.name``, else the top-level ``experiment``) and the module that defines
    it (``config.experiment.module``, else the kind); told by its files (``RESULTS_FILES``) when
    it has no manifest naming one; ``None`` when neither tells."""
    try:
        manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
        experiment = (manifest.get("config") or {}).get("experiment") or {}
        kind = experiment.get("name") or manifest.get("experiment")
        if kind:
            return str(kind), str(experiment.get("module") or kind)
    except (OSError, ValueError, AttributeError):
        pass  # no manifest, or not a readable one: tell the kind by the files
    for file, kind in RESULTS_FILES.items():
        if (run_dir / file).is_file():
            return kind, kind
    return None


def find_runs(paths: Sequence[Path]) -> dict[tuple[str, str], list[Path]]:
    """Every run below ``paths``, by ``run_kind``, each once, in a stable order.

    Raises:
        NoResultsError: A path does not exist or holds no run.
    """
    markers = (MANIFEST_FILE, *RESULTS_FILES)
    runs: dict[Path, None] = {}
    for path in paths:
        if not path.exists():
            raise NoResultsError(f"{path}: no such file or directory")
        if path.is_file():
            found = [path.parent] if path.name in markers else []
        else:
            found = sorted({hit.parent for hit in path.rglob("*") if hit.name in markers})
        if not found:
            raise NoResultsError(
                f"{path}: no run in it or any subfolder: no {MANIFEST_FILE}, {RESULTS_FILE} (steering runs), "
                f"{PROBE_FILE} (probe runs) or cmaes_history.parquet (cmaes runs) (is it a run dir, a Hydra "
                "multirun dir, or a folder of those?)")
        runs.update(dict.fromkeys(run.resolve() for run in found))
    by_kind: dict[tuple[str, str], list[Path]] = {}
    for run in runs:
        kind = run_kind(run)
        if kind is not None:  # e.g. a manifest without config next to nothing reportable
            by_kind.setdefault(kind, []).append(run)
    return by_kind


def _load(runs: Sequence[Path], name: str, loader: Callable, skipped: list[str] | None
          ) -> tuple[pd.DataFrame | None, list[str]]:
    """``loader`` (``load_runs``, ``load_probe_runs``) over the file ``name`` of each run, and the
    reasons of the runs left out: a run without the file (a job that did not finish) or with
    an unusable one. The frame is ``None`` when no run is usable.

    Raises:
        NoResultsError: A run lacks the file, or none is usable, and ``skipped`` is ``None``.
        BadResultsError: A file is unusable and ``skipped`` is ``None``.
    """
    mine: list[str] = []
    for run in runs:
        if not (run / name).is_file():
            reason = f"{run}: no {name} (a run of experiment={run_kind(run)[0]}; did the job finish?)"
            if skipped is None:
                raise NoResultsError(reason)
            mine.append(reason)
    files = [run / name for run in runs if (run / name).is_file()]
    try:
        frame = loader(files, None if skipped is None else mine) if files else None
    except NoResultsError:
        if skipped is None:
            raise
        frame = None
    if skipped is not None:
        skipped += mine
    return frame, mine


# --------------------------------------------------------------------------- markdown parts


def _skipped_section(skipped: Sequence[str]) -> list[str]:
    """The "Skipped runs" section: each unusable results file with its reason."""
    if not skipped:
        return []
    return ["", "## Skipped runs", "", "Not reported: their results files are unusable.", "",
            *(f"- {line}" for line in skipped)]


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


# --------------------------------------------------------------------------- steer


def _failed_cells(runs: Sequence[Path]) -> list[str]:
    """``"run_dir: cell: error"`` lines from every ``summary.json`` that lists failed cells."""
    try:
        found = summaries([run / SUMMARY_FILE for run in runs if (run / SUMMARY_FILE).is_file()])
    except NoResultsError:  # summaries are optional for the report
        return []
    if found.empty or "failed_cells" not in found:
        return []
    return [f"{r.run_dir}: {r.failed_cells}" for r in found.itertuples() if r.failed_cells]


def _steer_markdown(table: pd.DataFrame, results: pd.DataFrame, failed: list[str],
                    skipped: Sequence[str] = ()) -> str:
    n_runs = results["run_dir"].nunique() if "run_dir" in results else 1
    n_setups = results[SETUP].nunique() if SETUP in results else 1
    lines = [
        "# eas report",
        "",
        (
            f"{n_runs} run(s) in {n_setups} setup(s), {len(results)} result rows. The best cell "
            "of each group is selected on val accuracy (ties: smaller |strength|, then lower "
            "layer; eas.core.select) and reported on test; delta = test - unsteered test; "
            "wrong_to_right / right_to_wrong count test items that steering fixed / broke."
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


def write_steer_report(runs: list[Path], out: Path, skipped: list[str] | None = None) -> str | None:
    """The steering report of ``runs`` in ``out``; returns the summary table as markdown.

    Raises:
        BadResultsError: A ``results.parquet`` is unusable and ``skipped`` is ``None``.
    """
    results, mine = _load(runs, RESULTS_FILE, load_runs, skipped)
    if results is None:
        return None
    table = cross_benchmark_table(results)
    out.mkdir(parents=True, exist_ok=True)
    results.to_parquet(out / "merged_results.parquet", index=False)
    results.to_csv(out / "merged_results.csv", index=False)
    table.to_csv(out / "summary_table.csv", index=False)
    report = _steer_markdown(table, results, _failed_cells(runs), mine)
    seeds = write_seed_report(results, out)  # across-seed statistics when a group has >= 2 seeds
    (out / "summary_table.md").write_text(report if seeds is None else f"{report}\n{seeds}")
    write_figures(results, out / "figures")
    return to_markdown(table)


# --------------------------------------------------------------------------- probe


def write_probe_report(runs: list[Path], out: Path, skipped: list[str] | None = None) -> str | None:
    """``merged_probe_results.parquet``/``.csv`` and ``probe_table.md`` of the probe runs ``runs``.

    Raises:
        BadResultsError: A ``probe_results.parquet`` is unusable and ``skipped`` is ``None``.
    """
    results, mine = _load(runs, PROBE_FILE, load_probe_runs, skipped)
    if results is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    results.to_parquet(out / "merged_probe_results.parquet", index=False)
    results.to_csv(out / "merged_probe_results.csv", index=False)
    text = merged_probe_markdown(probe_summaries(results["run_dir"].unique()), results)
    text = "\n".join([text.rstrip("\n"), *_setups_section(results), *_skipped_section(mine)]) + "\n"
    (out / "probe_table.md").write_text(text)
    return text


# --------------------------------------------------------------------------- other kinds


def summary_rows(runs: Sequence[Path], skipped: list[str] | None = None) -> pd.DataFrame:
    """The generic table of a kind: one row per run, its ``summary.json`` flattened (nested
    fields as ``a.b``), with ``run_dir`` and its setup.

    Raises:
        NoResultsError: No run has a readable ``summary.json`` and ``skipped`` is ``None``.
    """
    rows = []
    for run in runs:
        try:
            rows.append({**json.loads((run / SUMMARY_FILE).read_text()), "run_dir": str(run)})
        except (OSError, ValueError) as err:
            if skipped is None:
                raise NoResultsError(f"{run / SUMMARY_FILE}: cannot be read ({err})") from err
            skipped.append(f"{run / SUMMARY_FILE}: cannot be read ({type(err).__name__}: {err})")
    if not rows:
        return pd.DataFrame()
    return tag_setups(pd.json_normalize(rows, max_level=1))


def _module_writer(kind: str, module: str) -> Writer:
    """The writer of a kind ``REPORTS`` does not name: its module's ``report(runs)`` if it defines
    one, else the generic one-row-per-run table."""
    from eas import extensions

    try:
        report = getattr(extensions.load("experiment", module, "manifest.json config.experiment.name"),
                         "report", None)
    except (extensions.ExtensionError, ImportError):  # a kind written elsewhere, not importable here
        report = None

    def write(runs: list[Path], out: Path, skipped: list[str] | None) -> str | None:
        mine: list[str] = []
        tables = report(runs) if report is not None else {"runs": summary_rows(runs, mine)}
        if isinstance(tables, pd.DataFrame):
            tables = {"runs": tables}
        if skipped is not None:
            skipped += mine
        tables = {name: t for name, t in tables.items() if len(t.columns)}
        if not tables:
            return None
        out.mkdir(parents=True, exist_ok=True)
        lines = [f"# eas report: experiment={kind}", "", f"{len(runs)} run(s)."]
        for name, table in tables.items():
            if "run_dir" in table and SETUP not in table:  # every table keeps setups apart
                table = tag_setups(table)
            table.to_csv(out / f"{kind}_{name}.csv", index=False)
            lines += ["", f"## {name}", "", to_markdown(table)]
        text = "\n".join([*lines, *_skipped_section(mine)]) + "\n"
        (out / f"{kind}_table.md").write_text(text)
        return text

    return write


REPORTS: dict[str, Writer] = {
    "steer": write_steer_report,
    "probe": write_probe_report,
    "cmaes": write_cmaes_report,
}
"""The writer of each kind eas reports itself; other kinds: ``_module_writer``."""


def write_report(paths: Sequence[str | Path], out: str | Path | None = None,
                 skipped: list[str] | None = None) -> dict[str, str]:
    """Report every run under ``paths`` into ``out``, each kind with its writer.

    Args:
        paths: Run dirs, multirun dirs or folders holding them.
        out: Output folder; default ``<paths[0]>/report``.
        skipped: Given a list, unusable results files are left out, appended to it (as
            ``"<file>: <reason>"``) and listed in their kind's markdown; ``None`` raises.

    Returns:
        Kind -> the markdown to print (for steer, the summary table), for each kind with a
        usable run, and ``headlines``: the table of every run's headline (``eas.report.summary``).

    Raises:
        NoResultsError: A path does not exist or holds no run, or no run under ``paths`` is
            usable (the message lists why).
        BadResultsError: A results file is unusable and ``skipped`` is ``None``.
    """
    paths = [Path(p) for p in paths]
    out = Path(out) if out is not None else paths[0] / "report"
    reasons: list[str] = [] if skipped is None else skipped
    texts: dict[str, str] = {}
    found = find_runs(paths)
    for (kind, module), runs in found.items():
        writer = REPORTS.get(kind) or _module_writer(kind, module)
        text = writer(runs, out, None if skipped is None else reasons)
        if text is not None:
            texts[kind] = text
    if not texts:
        raise NoResultsError("no usable run among the paths given: " + ("; ".join(reasons) or
                                                                         "no run with a known experiment kind"))
    every = [run for runs in found.values() for run in runs]
    write_durations(every, out)
    headlines = write_headlines(runs_by_kind(found), out)
    if not headlines.empty:
        texts["headlines"] = headline_markdown(headlines)
    study = study_tables(every)  # the PAS study's tables: cross-benchmark, flips, sample size, ICL, side effects, SFT
    for name, table in study.items():
        table.to_csv(out / f"study_{name}.csv", index=False)
    if study:
        (out / "study.md").write_text("\n\n".join(f"## {name}\n\n{to_markdown(t)}" for name, t in study.items()) + "\n")
        write_study_figures(study, out / "figures")
    if reasons:  # also those of a kind with no usable run, which has no markdown of its own
        (out / SKIPPED_FILE).write_text("\n".join(["# eas report", *_skipped_section(reasons)]) + "\n")
    return texts


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
        texts = write_report(args.dirs, args.out, skipped)
    except NoResultsError as err:
        print(f"eas-report: error: {err}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else args.dirs[0] / "report"
    for text in texts.values():
        print(text)
    if skipped:
        print("\n".join(_skipped_section(skipped)))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
