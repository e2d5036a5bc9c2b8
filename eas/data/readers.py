"""What every benchmark format reads through: config access, file readers, hub, field checks.

A format module (``eas.data.formats.<name>``) turns an upstream layout into ``MCItem``
(a benchmark) or ``Prompt`` (a free-form prompt set); the reading it shares lives here. Its
source, in this order:

1. ``benchmark.path``: a local file or folder in the upstream layout (json, jsonl, csv
   or parquet, as the format needs; a ``.gz`` text file is read decompressed);
2. ``benchmark.hub_id``: the Hugging Face hub copy, via ``datasets.load_dataset``
   (imported on first use; any failure becomes a ``DataError`` that says to pass
   ``benchmark.path=...``);
3. eas's own sets need neither.

A prompt set's config has the same source fields under ``prompts.``; the helpers that name a
field in their errors take ``group="prompts"`` for it.

Local files are read by the readers below, not by ``datasets``: its json reader infers one
arrow schema for the whole file, which turns TruthfulQA's ``{answer: 1/0}`` objects into a
struct of every answer in the file, and its errors name neither the file nor the line.
Every record comes with ``where`` ("<file> line 3", "hub <id> record 3"), so a
``DataError`` says where the problem is, what was seen and what was expected.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from eas.data.schema import Benchmark, DataError, MCItem, Prompt, PromptSet

Record = tuple[str, dict[str, Any]]  # (where: "<file> line 3" / "hub <id> record 3", the row)


# --------------------------------------------------------------------------- config access


def option(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.options[key]`` (a dict or an OmegaConf node), else ``default``."""
    options = getattr(cfg, "options", None) or {}
    value = options.get(key, default) if hasattr(options, "get") else default
    return default if value is None else value


def option_list(cfg: Any, key: str) -> list[str] | None:
    """``cfg.options[key]`` as a list of strings (a single string is a list of one)."""
    value = option(cfg, key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def local_path(cfg: Any, group: str = "benchmark") -> Path | None:
    """``<group>.path`` as an existing path, or None when unset.

    Raises:
        DataError: the path is set but does not exist.
    """
    raw = getattr(cfg, "path", None)
    if raw in (None, ""):
        return None
    path = Path(str(raw)).expanduser()
    if not path.exists():
        raise DataError(f"{group}.path={raw!r} does not exist; give an existing file or folder")
    return path


# --------------------------------------------------------------------------- file readers


def read_text(path: Path) -> str:
    """The whole file as text; every text format is read through here.

    UTF-8 with or without a BOM (Excel and some exports write one; left in, it
    becomes part of the first CSV header or makes ``json.loads`` fail). Other
    encodings are a DataError with the byte offset, not a UnicodeDecodeError. A ``.gz`` file
    (BeaverTails ships ``*.jsonl.gz``) is decompressed first.
    """
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from e
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise DataError(
            f"benchmark file {path} is not UTF-8: invalid byte 0x{data[offset]:02x} at offset "
            f"{offset} (line {line}); re-save it as UTF-8"
        ) from None


def read_json_list(path: Path) -> list[Record]:
    """A JSON list of objects, or an object wrapping one list (``{"data": [...]}``)."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from e
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(
                f"{path}: expected a JSON list of records, got an object with keys {list(data)}"
            )
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise DataError(f"{path} record {i}: expected a JSON object, got {type(row).__name__}")
        out.append((f"{path} record {i}", row))
    return out


def read_jsonl(path: Path) -> list[Record]:
    """One JSON object a line; blank lines are skipped, line numbers count them."""
    out = []
    # StringIO splits lines as a text-mode file does (\n, \r\n, \r), not at the U+2028
    # a JSON string may hold, so line numbers match an editor's.
    for n, line in enumerate(io.StringIO(read_text(path), newline=None), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: not valid JSON ({e.msg}): {line[:80]!r}") from e
        if not isinstance(row, dict):
            raise DataError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        out.append((f"{path} line {n}", row))
    return out


def read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """Raw CSV rows with the line each starts on (quoted fields may span lines)."""
    rows = []
    reader = csv.reader(io.StringIO(read_text(path), newline=""))  # csv wants newline=""
    start = 1
    try:
        for row in reader:
            if row:
                rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: malformed CSV ({e})") from e
    return rows


def read_csv(path: Path, required: Sequence[str]) -> list[Record]:
    """CSV with a header row; every ``required`` column must be present."""
    rows = read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: empty CSV file; expected a header with columns {list(required)}")
    header = [h.strip() for h in rows[0][1]]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{path}: CSV header {header} lacks columns {missing}; expected {list(required)}"
        )
    out = []
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise DataError(
                f"{path} line {line}: {len(row)} fields, expected {len(header)} ({header})"
            )
        out.append((f"{path} line {line}", dict(zip(header, row))))
    return out


def read_parquet(path: Path) -> list[Record]:
    """Rows of a parquet file as dicts (list columns come as numpy arrays: see ``as_list``)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read parquet ({e})") from e
    return [(f"{path} row {i}", row) for i, row in enumerate(frame.to_dict(orient="records"))]


def read_records(path: Path, csv_columns: Sequence[str] = ()) -> list[Record]:
    """Records of a .json (list), .jsonl, .csv (with header, ``csv_columns`` required) or .parquet
    file; the first three also gzipped (``.jsonl.gz``)."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
    if suffix == ".json":
        return read_json_list(path)
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".csv":
        return read_csv(path, csv_columns)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; expected .json, .jsonl, .csv or .parquet"
    )


def single_file(folder: Path, patterns: Sequence[str], what: str, group: str = "benchmark") -> Path:
    """The one data file in ``folder`` matching ``patterns``; otherwise a DataError listing them."""
    found = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{group}.path={str(folder)!r}: no {what} file ({', '.join(patterns)}) in the folder"
        )
    names = [p.name for p in found]
    raise DataError(
        f"{group}.path={str(folder)!r}: several candidate files {names}; "
        f"point {group}.path at one file or set {group}.options.file"
    )


# --------------------------------------------------------------------------- hub


def hub_records(cfg: Any, group: str = "benchmark") -> list[Record]:
    """Rows of ``cfg.hub_id`` (``hub_config``, ``hub_split``) from the Hugging Face hub."""
    hub_id, config, split = (
        cfg.hub_id,
        getattr(cfg, "hub_config", None),
        getattr(cfg, "hub_split", None),
    )
    where = f"hub {hub_id}" + (f"/{config}" if config else "") + f" [{split or 'all splits'}]"
    hint = (
        f"; download the data and pass {group}.path=<local file or folder> "
        f"({group}.format={getattr(cfg, 'format', None)!r} reads the upstream layout)"
    )
    try:
        import datasets  # a second of imports; only a hub read pays it
    except ImportError as e:
        raise DataError(
            f"cannot load {where}: the `datasets` package is not installed{hint}"
        ) from e
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, unknown id, gated: all become the same actionable error
        raise DataError(f"cannot load {where}: {type(e).__name__}: {e}{hint}") from e
    if isinstance(ds, dict):  # no split given: a DatasetDict
        raise DataError(f"{where}: {group}.hub_split is not set; choose one of {list(ds)}")
    return [(f"{where} record {i}", dict(row)) for i, row in enumerate(ds)]


def no_source(cfg: Any, expected: str, group: str = "benchmark") -> DataError:
    """The error for a config with neither ``<group>.path`` nor ``<group>.hub_id``."""
    what = "benchmark" if group == "benchmark" else "prompt set"
    return DataError(
        f"{what} {cfg.name!r} ({group}.format={getattr(cfg, 'format', None)!r}) has neither "
        f"{group}.path nor {group}.hub_id; pass {group}.path=<{expected}>"
    )


def records(
    cfg: Any,
    expected: str,
    in_folder: Callable[[Path], Path],
    csv_columns: Sequence[str] = (),
    group: str = "benchmark",
) -> tuple[list[Record], str]:
    """The records of ``benchmark.path``, else of the hub copy, and where they came from.

    Args:
        cfg: the benchmark (or prompt set) config.
        expected: what ``benchmark.path`` should be, for the error when neither is set.
        in_folder: picks the file when ``benchmark.path`` is a folder (it raises a
            DataError naming what it looked for).
        csv_columns: the columns a csv file must have.
        group: the config group the fields are named under in errors (``benchmark``, ``prompts``).

    Returns:
        ``(records, source)``: the records in file order; the file path or the hub id.
    """
    path = local_path(cfg, group)
    if path is not None:
        if path.is_dir():
            path = in_folder(path)
        return read_records(path, csv_columns), str(path)
    if getattr(cfg, "hub_id", None):
        return hub_records(cfg, group), str(cfg.hub_id)
    raise no_source(cfg, expected, group)


# --------------------------------------------------------------------------- field helpers


def require(rec: dict[str, Any], key: str, where: str, expected: str = "") -> Any:
    """``rec[key]``; a missing or null key is a DataError listing the keys present."""
    if key not in rec or rec[key] is None:
        detail = f" ({expected})" if expected else ""
        raise DataError(f"{where}: missing key {key!r}{detail}; keys present: {sorted(rec)}")
    return rec[key]


def as_text(value: Any, where: str, key: str) -> str:
    """``value``, which must be a string."""
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__} {value!r}")
    return value


def as_list(value: Any) -> list:
    """Lists from JSON, numpy arrays from parquet/datasets: both become a plain list."""
    if hasattr(value, "tolist"):
        return list(value.tolist())
    return list(value)


def as_index(value: Any, n_options: int, where: str, key: str = "label") -> int:
    """``value`` (an int or its text) as an option index in ``0..n_options-1``."""
    try:
        label = int(str(value).strip())
    except ValueError:
        raise DataError(
            f"{where}: {key}={value!r} is not an integer; expected 0..{n_options - 1}"
        ) from None
    if not 0 <= label < n_options:
        raise DataError(f"{where}: {key}={label} out of range; expected 0..{n_options - 1}")
    return label


def scalar_metadata(rec: dict[str, Any], skip: Iterable[str]) -> dict[str, Any]:
    """The str/int/float/bool fields of ``rec`` not in ``skip``."""
    skip = set(skip)
    return {
        k: v for k, v in rec.items() if k not in skip and isinstance(v, (str, int, float, bool))
    }


def shuffle_options(
    options: list[str], label: int, seed: int, item_id: str
) -> tuple[list[str], int]:
    """Deterministic per-item shuffle: the same (seed, item id) gives the same order."""
    order = list(range(len(options)))
    random.Random(f"{seed}:{item_id}").shuffle(order)
    return [options[i] for i in order], order.index(label)


RULES = ("eas", "pas_reference")  # benchmark.item_rules, eas.data.split_items(rule=...)


def item_rules(cfg: Any) -> str:
    """``benchmark.item_rules`` (``eas`` when a config node predates the field), checked."""
    rules = getattr(cfg, "item_rules", None) or "eas"
    if rules not in RULES:
        raise DataError(f"benchmark.item_rules={rules!r} is not allowed; choose one of {', '.join(RULES)}")
    return rules


def make_item(where: str, **kwargs: Any) -> MCItem:
    """``MCItem(**kwargs)``, its DataError prefixed with ``where``."""
    try:
        return MCItem(**kwargs)
    except DataError as e:
        raise DataError(f"{where}: {e}") from e


def make_benchmark(cfg: Any, items: Sequence[MCItem], source: str) -> Benchmark:
    """The ``Benchmark`` named by ``cfg`` (name, kind) holding ``items`` read from ``source``."""
    return Benchmark(name=str(cfg.name), items=tuple(items), kind=str(cfg.kind), source=source)


def make_prompt(where: str, **kwargs: Any) -> Prompt:
    """``Prompt(**kwargs)``, its DataError prefixed with ``where``."""
    try:
        return Prompt(**kwargs)
    except DataError as e:
        raise DataError(f"{where}: {e}") from e


def make_prompt_set(cfg: Any, prompts: Sequence[Prompt], source: str) -> PromptSet:
    """The ``PromptSet`` named by ``cfg.name`` holding ``prompts`` read from ``source``."""
    return PromptSet(name=str(cfg.name), prompts=tuple(prompts), source=source)
