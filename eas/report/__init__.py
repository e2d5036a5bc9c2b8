"""Reports over steering runs: merged tables, val-to-test selection, figures.

Reads what steering jobs write into their run dirs (``results.parquet``, ``summary.json``,
``predictions/``); ``eas-report DIR...`` (``eas.report.cli``) writes the merged report.
"""

from eas.report.figures import (
    test_bars,
    val_heatmap,
    wilson_interval,
    write_figures,
    write_run_figures,
)
from eas.report.tables import (
    DEFAULT_BY,
    NoResultsError,
    cross_benchmark_table,
    flips,
    load_runs,
    select_best,
    summaries,
    to_markdown,
    unsteered_accuracy,
)

__all__ = [
    "DEFAULT_BY",
    "NoResultsError",
    "cross_benchmark_table",
    "flips",
    "load_runs",
    "select_best",
    "summaries",
    "test_bars",
    "to_markdown",
    "unsteered_accuracy",
    "val_heatmap",
    "wilson_interval",
    "write_figures",
    "write_run_figures",
]
