"""Run setups: which runs of a report may be merged into each other.

A run's *setup* is every field of its resolved config (``manifest.json`` -> ``config``) that
changes its results, other than the fields its ``results.parquet`` rows already carry as
columns (model and benchmark name, method, position, steer target, seed, layer, strength).
``setup_fields`` is the one list of those fields; ``setup_id`` names a setup by a short hash.

The report groups by setup (the ``setup`` column), so runs of different setups are reported
as separate rows and never deduplicated into each other; runs of one setup that scored the
same cell still dedupe. Fields that only decide how a run is computed, not what it computes
(device, device_map, attn_implementation, compile, batch and chunk sizes, store, progress,
resources, fan-out workers), are left out: they move numbers by float rounding at most.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

SETUP = "setup"
"""The results column that names a run's setup (``setup_id``); ``load_runs`` adds one more,
``setup.<field>``, per field whose value differs between the runs it loaded."""

UNKNOWN_SETUP = "unknown"
"""The setup of a run whose ``manifest.json`` is missing, unreadable or has no ``config``."""

MANIFEST_FILE = "manifest.json"

_MISSING = object()


def setup_fields(config: Mapping) -> dict[str, object]:
    """The fields of a resolved run config that change its results: the run's setup.

    This is the one list of them; add a field here when a new config field changes results.

    - model: ``source``, ``id``, ``revision``, ``architecture``, ``random_config`` (the
      weights), ``dtype``, ``quantization``;
    - benchmark: ``format``, ``path``, ``hub_id``, ``hub_config``, ``hub_split``, ``kind``,
      ``options``, ``item_rules`` (the items);
    - prompt: ``format``, ``system``, ``instruction``, ``letters``;
    - split: ``n_train_proportion``, ``n_val_proportion``, ``n_test_proportion``,
      ``max_sample_size``, ``split_rule``; ``selection_rule`` (which cell is reported);
    - method: ``normalize``, ``min_per_class``, ``vector_path``, ``source``, ``read``, ``module`` (the vectors);
    - experiment: everything but ``fanout`` and the judge's endpoint (``judge.api_base``,
      ``judge.api_key_env``): selection metric, CMA-ES and probe settings.

    Left out: the fields results rows carry as columns (``model.name``, ``benchmark.name``,
    ``method.name``, ``method.position``, ``steer_target.site``, ``seed``, ``layer``,
    ``strength``; ``layer``/``strength`` so that one-cell jobs merge with a grid job), and
    the fields that only decide how a run is computed (see the module docstring).

    Args:
        config: A run's resolved config, ``manifest.json["config"]``.

    Returns:
        Dotted field name -> value, in a fixed order; a field the config lacks (an older
        run) is ``None``.
    """
    paths = (
        "model.source", "model.id", "model.revision", "model.architecture", "model.random_config",
        "model.dtype", "model.quantization",
        "benchmark.format", "benchmark.path", "benchmark.hub_id", "benchmark.hub_config",
        "benchmark.hub_split", "benchmark.kind", "benchmark.options", "benchmark.item_rules",
        "prompt.format", "prompt.system", "prompt.instruction", "prompt.letters",
        "n_train_proportion", "n_val_proportion", "n_test_proportion", "max_sample_size", "split_rule",
        "selection_rule",
        "method.normalize", "method.min_per_class", "method.vector_path", "method.source", "method.read",
        "method.module",
    )  # fmt: skip
    experiment_left_out = {"fanout", "judge.api_base", "judge.api_key_env"}
    fields = {path: _get(config, path) for path in paths}
    for path, value in sorted(_flatten(config.get("experiment") or {}).items()):
        if not any(path == x or path.startswith(x + ".") for x in experiment_left_out):
            fields[f"experiment.{path}"] = value
    return {k: None if v is _MISSING else v for k, v in fields.items()}


def _get(config: Mapping, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"judge": {"model": "same"}}`` -> ``{"judge.model": "same"}`` (lists stay values)."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def setup_id(fields: Mapping[str, object] | None) -> str:
    """An 8-hex-digit name of a setup (``setup_fields``); ``UNKNOWN_SETUP`` for ``None``."""
    if fields is None:
        return UNKNOWN_SETUP
    text = json.dumps(dict(fields), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def read_setup(run_dir: str | Path) -> dict[str, object] | None:
    """``setup_fields`` of the run in ``run_dir``; ``None`` without a readable manifest config."""
    try:
        config = json.loads((Path(run_dir) / MANIFEST_FILE).read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        return None
    return setup_fields(config) if isinstance(config, Mapping) and config else None


def show(value: object) -> str:
    """A setup field's value as text: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def differing_fields(setups: Mapping[str, Mapping[str, object] | None]) -> list[str]:
    """The fields whose value is not the same in every known setup of ``setups`` (id -> fields)."""
    known = [f for f in setups.values() if f is not None]
    names = dict.fromkeys(name for f in known for name in f)
    return [n for n in names if len({show(f.get(n)) for f in known}) > 1]


def tag_setups(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (with a ``run_dir`` column) tagged with each run's setup.

    Every table of the report (steering results, probe results, CMA-ES gaps, one row per run of
    any other kind) is tagged here, so all of them keep setups apart the same way.

    Args:
        rows: Rows of one or more runs; ``run_dir`` names the folder of each row's run.

    Returns:
        A copy with ``setup`` (``setup_id`` of the run's manifest config; ``UNKNOWN_SETUP``
        without one) and one ``setup.<field>`` column (the value as text, ``None`` for an unknown
        setup) per field of ``setup_fields`` whose value differs between the runs.
    """
    setups = {run: read_setup(run) for run in dict.fromkeys(rows["run_dir"])}
    ids = {run: setup_id(fields) for run, fields in setups.items()}
    out = rows.assign(**{SETUP: rows["run_dir"].map(ids)})
    by_id = {ids[run]: fields for run, fields in setups.items()}
    for name in differing_fields(by_id):
        values = {sid: None if fields is None else show(fields.get(name)) for sid, fields in by_id.items()}
        out[f"{SETUP}.{name}"] = out[SETUP].map(values)
    return out


def with_setup(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with a ``setup`` column: rows built without ``load_runs`` get ``UNKNOWN_SETUP``."""
    return results if SETUP in results else results.assign(**{SETUP: UNKNOWN_SETUP})


def setup_columns(results: pd.DataFrame) -> list[str]:
    """The ``setup.<field>`` columns ``load_runs`` added to ``results``: the differing fields."""
    return [c for c in results.columns if str(c).startswith(SETUP + ".")]


def setup_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per setup in ``results``: ``setup``, ``runs`` (run dirs) and the differing fields."""
    results = with_setup(results)
    cols = setup_columns(results)
    runs = results.groupby(SETUP, sort=True)["run_dir"].nunique() if "run_dir" in results else None
    table = results[[SETUP, *cols]].drop_duplicates(SETUP).sort_values(SETUP, ignore_index=True)
    table.insert(1, "runs", table[SETUP].map(runs) if runs is not None else 1)
    return table
