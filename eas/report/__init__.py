"""Reports over runs: merged tables, val-to-test selection, figures.

Reads what jobs write into their run dirs (``results.parquet``, ``probe_results.parquet``,
``summary.json``, ``predictions/``, ``manifest.json``); ``eas-report DIR...``
(``eas.report.cli``) writes the merged report of every experiment kind it finds. Runs are
grouped by setup (``eas.report.setups``), so runs whose configs differ in a field that changes
results are never merged into each other.
"""

from eas.report.figures import (
    test_bars,
    val_heatmap,
    write_figures,
    write_run_figures,
)
from eas.report.setups import setup_fields, setup_id
from eas.report.tables import (
    DEFAULT_BY,
    BadResultsError,
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
    "BadResultsError",
    "NoResultsError",
    "cross_benchmark_table",
    "flips",
    "load_runs",
    "select_best",
    "setup_fields",
    "setup_id",
    "summaries",
    "test_bars",
    "to_markdown",
    "unsteered_accuracy",
    "val_heatmap",
    "write_figures",
    "write_run_figures",
]
