"""Reports over experiment=cmaes runs: the fitness curve of one run and the
extraction-vs-optimisation gap table across runs (benchmarks, traits, methods, layers).

    eas-report RUN_DIR [RUN_DIR ...]                          # cmaes_gap.md/.csv among the rest
    python -m eas.report.cmaes RUN_DIR [RUN_DIR ...] --out gap.md
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from eas import store
from eas.report.figures import save_figure
from eas.report.setups import SETUP, setup_columns, tag_setups
from eas.report.tables import to_markdown

GAP_FILE = "cmaes_gap"
_GAP_INTRO = ("Accuracy of the extracted vector (best val cell) and of its CMA-ES refinement; gap = refined - "
              "extracted. Val is what CMA-ES optimised; test is held out.")


def fitness_curve(history: pd.DataFrame, path: str | Path | None = None, extracted: float | None = None,
                  title: str = "") -> Figure:
    """Best and mean fitness per generation (plus best so far and the distribution mean).

    Args:
        history: ``cmaes_history.parquet`` (generation 0 is the start point).
        extracted: the full extracted vector's fitness, drawn as a horizontal line.
    """
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    g = history["generation"]
    ax.plot(g, history["best"], marker="o", ms=3, label="best of generation")
    ax.plot(g, history["mean"], marker="o", ms=3, label="mean of generation")
    ax.plot(g, history["best_so_far"], ls="--", color="black", lw=1, label="best so far")
    ax.plot(g, history["centre"], ls=":", color="grey", label="distribution mean")
    if extracted is not None:
        ax.axhline(extracted, color="tab:red", lw=1, label="extracted vector")
    ax.set_xlabel("generation")
    ax.set_ylabel("val fitness")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


GAP_COLUMNS = ["benchmark", "model", "method", "layer", "fitness", "k", "popsize", "sigma0", "generations",
               "val_extracted", "val_refined", "val_gap", "test_extracted", "test_refined", "test_gap",
               "val_fitness_gap", "test_fitness_gap", "cosine", "n_test"]


def gap_table(summaries: Sequence[dict]) -> pd.DataFrame:
    """One row per cmaes run: accuracy of the extracted and the refined vector on val and test,
    the gaps (refined - extracted) in accuracy and in the run's fitness, and the cosine
    between the two vectors."""
    rows = []
    for s in summaries:
        e, r = s["extracted"], s["refined"]
        rows.append({
            "benchmark": s["benchmark"], "model": s["model"], "method": s["method"], "layer": s["layer"],
            "fitness": s["fitness"], "k": s.get("k"), "popsize": s.get("popsize"), "sigma0": s.get("sigma0"),
            "generations": s["generations"],
            "val_extracted": e["val"]["accuracy"], "val_refined": r["val"]["accuracy"],
            "val_gap": r["val"]["accuracy"] - e["val"]["accuracy"],
            "test_extracted": e["test"]["accuracy"], "test_refined": r["test"]["accuracy"],
            "test_gap": r["test"]["accuracy"] - e["test"]["accuracy"],
            "val_fitness_gap": r["val"].get("fitness", float("nan")) - e["val"].get("fitness", float("nan")),
            "test_fitness_gap": r["test"].get("fitness", float("nan")) - e["test"].get("fitness", float("nan")),
            "cosine": s["cosine"]["refined_vs_extracted"], "n_test": s["n"]["test"],
        })
    df = pd.DataFrame(rows, columns=GAP_COLUMNS)
    return df.sort_values(["benchmark", "model", "method", "layer"], ignore_index=True)


def load_summaries(run_dirs: Sequence[str | Path]) -> list[dict]:
    """``summary.json`` of every cmaes run under the given dirs (searched recursively)."""
    out = []
    for d in run_dirs:
        for p in sorted(Path(d).rglob("summary.json")):
            s = store.read_json(p)
            if s.get("experiment") == "cmaes":
                out.append(s)
    return out


def write_gap_table(run_dirs: Sequence[str | Path], path: str | Path) -> pd.DataFrame:
    """The gap table of every cmaes run under ``run_dirs`` as markdown at ``path``.

    Raises:
        FileNotFoundError: no cmaes ``summary.json`` under any of the dirs.
    """
    summaries = load_summaries(run_dirs)
    if not summaries:
        raise FileNotFoundError(f"no experiment=cmaes summary.json under {', '.join(map(str, run_dirs))}")
    df = gap_table(summaries)
    text = f"# Extraction vs optimisation (CMA-ES)\n\n{_GAP_INTRO}\n\n{to_markdown(df)}\n"
    store.write_text(Path(path), text)
    return df


def write_cmaes_report(runs: Sequence[Path], out: Path, skipped: list[str] | None = None) -> str | None:
    """``cmaes_gap.md``/``.csv`` in ``out``: the gap table of the cmaes run dirs ``runs``, one row
    per run, with its ``setup`` (and the ``setup.<field>`` columns where runs differ).

    Args:
        runs: cmaes run dirs (each with a ``summary.json``).
        out: The report folder.
        skipped: Given a list, a run whose ``summary.json`` is unreadable or lacks a field is
            left out and ``"<file>: <reason>"`` appended; ``None`` raises.

    Returns:
        The markdown written, or ``None`` (nothing written) when no run is usable.

    Raises:
        ValueError: A ``summary.json`` is unusable and ``skipped`` is ``None``.
    """
    frames = []
    for run in runs:
        file = Path(run) / "summary.json"
        try:
            frames.append(gap_table([store.read_json(file)]).assign(run_dir=str(run)))
        except (OSError, ValueError, KeyError, TypeError) as err:
            reason = f"{file}: cannot be reported ({type(err).__name__}: {err}); rerun that job or remove it"
            if skipped is None:
                raise ValueError(reason) from err
            skipped.append(reason)
    if not frames:
        return None
    df = tag_setups(pd.concat(frames, ignore_index=True))
    df = df.sort_values(["benchmark", "model", "method", "layer", SETUP], ignore_index=True)
    df = df[[*GAP_COLUMNS, SETUP, *setup_columns(df), "run_dir"]]
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{GAP_FILE}.csv", index=False)
    shown = df.drop(columns="run_dir") if df[SETUP].nunique() > 1 else df.drop(columns=["run_dir", SETUP])
    text = f"# Extraction vs optimisation (CMA-ES)\n\n{len(df)} cmaes run(s). {_GAP_INTRO}\n\n{to_markdown(shown)}\n"
    store.write_text(out / f"{GAP_FILE}.md", text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m eas.report.cmaes", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="+")
    ap.add_argument("--out", default="cmaes_gap.md")
    args = ap.parse_args(argv)
    df = write_gap_table(args.run_dirs, args.out)
    print(json.dumps({"runs": len(df), "out": args.out}))


if __name__ == "__main__":
    main()
