"""One loader per upstream benchmark format; each returns a ``Benchmark`` of ``MCItem``.

Every loader takes the benchmark config (``BenchmarkConfig`` fields, attribute
access; a dataclass or an OmegaConf node) and a seed, and reads, in this order:

1. ``cfg.path``: a local file or folder in the upstream format (json, jsonl,
   csv or parquet, as the format needs);
2. ``cfg.hub_id``: the Hugging Face hub copy, via ``datasets.load_dataset``
   (imported lazily; any failure becomes a ``DataError`` that says to pass
   ``benchmark.path=...``);
3. the built-in sets need neither.

Records are parsed by small per-format functions that take ``(record, where)``,
where ``where`` names the file and line/record, so every ``DataError`` says
where the problem is, what was seen and what was expected.

The seed only matters where the upstream order leaks the answer (TruthfulQA
lists the true answer first); items are otherwise kept in file order, and the
train/val/test split is made later by ``eas.data.split_items``.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from eas.data.schema import LETTERS, Benchmark, DataError, MCItem

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

Record = tuple[str, dict[str, Any]]  # (where: "file line 3" / "hub record 3", the row)
Loader = Callable[[Any, int], Benchmark]


# --------------------------------------------------------------------------- config access


def _opt(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.options[key]`` for a dataclass dict or an OmegaConf node, else ``default``."""
    options = getattr(cfg, "options", None) or {}
    value = options.get(key, default) if hasattr(options, "get") else default
    return default if value is None else value


def _opt_list(cfg: Any, key: str) -> list[str] | None:
    value = _opt(cfg, key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _path(cfg: Any) -> Path | None:
    raw = getattr(cfg, "path", None)
    if raw in (None, ""):
        return None
    path = Path(str(raw)).expanduser()
    if not path.exists():
        raise DataError(f"benchmark.path={raw!r} does not exist; give an existing file or folder")
    return path


# --------------------------------------------------------------------------- file readers


def read_text(path: Path) -> str:
    """The whole file as text; every text format is read through here.

    UTF-8 with or without a BOM (Excel and some exports write one; left in, it
    becomes part of the first CSV header or makes ``json.loads`` fail). Other
    encodings are a DataError with the byte offset, not a UnicodeDecodeError.
    """
    data = path.read_bytes()
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


def _read_json_list(path: Path) -> list[Record]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from e
    if isinstance(data, dict):
        # Some exports wrap the list: {"data": [...]} / {"examples": [...]}.
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


def _read_jsonl(path: Path) -> list[Record]:
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


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
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


def _read_csv(path: Path, required: Sequence[str]) -> list[Record]:
    """CSV with a header row; every ``required`` column must be present."""
    rows = _read_csv_rows(path)
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


def _read_parquet(path: Path) -> list[Record]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: cannot read parquet ({e})") from e
    return [(f"{path} row {i}", row) for i, row in enumerate(frame.to_dict(orient="records"))]


def read_records(path: Path, csv_columns: Sequence[str] = ()) -> list[Record]:
    """Records of a .json (list), .jsonl, .csv (with header) or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _read_json_list(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path, csv_columns)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; expected .json, .jsonl, .csv or .parquet"
    )


def _single_file(folder: Path, patterns: Sequence[str], what: str) -> Path:
    """The one data file in ``folder`` matching ``patterns``; otherwise a DataError listing them."""
    found = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"benchmark.path={str(folder)!r}: no {what} file ({', '.join(patterns)}) in the folder"
        )
    names = [p.name for p in found]
    raise DataError(
        f"benchmark.path={str(folder)!r}: several candidate files {names}; "
        f"point benchmark.path at one file or set benchmark.options.file"
    )


# --------------------------------------------------------------------------- hub


def hub_records(cfg: Any) -> list[Record]:
    """Rows of ``cfg.hub_id`` (``hub_config``, ``hub_split``) from the Hugging Face hub."""
    hub_id, config, split = (
        cfg.hub_id,
        getattr(cfg, "hub_config", None),
        getattr(cfg, "hub_split", None),
    )
    where = f"hub {hub_id}" + (f"/{config}" if config else "") + f" [{split or 'all splits'}]"
    hint = (
        f"; download the data and pass benchmark.path=<local file or folder> "
        f"(loader {cfg.loader!r} reads the upstream format)"
    )
    try:
        import datasets
    except ImportError as e:
        raise DataError(
            f"cannot load {where}: the `datasets` package is not installed{hint}"
        ) from e
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, unknown id, gated: all become the same actionable error
        raise DataError(f"cannot load {where}: {type(e).__name__}: {e}{hint}") from e
    if isinstance(ds, dict):  # no split given: a DatasetDict
        raise DataError(f"{where}: benchmark.hub_split is not set; choose one of {list(ds)}")
    return [(f"{where} record {i}", dict(row)) for i, row in enumerate(ds)]


def _no_source(cfg: Any, expected: str) -> DataError:
    return DataError(
        f"benchmark {cfg.name!r} (loader {cfg.loader!r}) has neither benchmark.path nor "
        f"benchmark.hub_id; pass benchmark.path=<{expected}>"
    )


# --------------------------------------------------------------------------- field helpers


def _field(rec: dict[str, Any], key: str, where: str, expected: str = "") -> Any:
    if key not in rec or rec[key] is None:
        detail = f" ({expected})" if expected else ""
        raise DataError(f"{where}: missing key {key!r}{detail}; keys present: {sorted(rec)}")
    return rec[key]


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__} {value!r}")
    return value


def _as_list(value: Any) -> list:
    """Lists from JSON, numpy arrays from parquet/datasets: both become a plain list."""
    if hasattr(value, "tolist"):
        return list(value.tolist())
    return list(value)


def _int_label(value: Any, n_options: int, where: str, key: str = "label") -> int:
    try:
        label = int(str(value).strip())
    except ValueError:
        raise DataError(
            f"{where}: {key}={value!r} is not an integer; expected 0..{n_options - 1}"
        ) from None
    if not 0 <= label < n_options:
        raise DataError(f"{where}: {key}={label} out of range; expected 0..{n_options - 1}")
    return label


def _scalar_metadata(rec: dict[str, Any], skip: Iterable[str]) -> dict[str, Any]:
    skip = set(skip)
    return {
        k: v for k, v in rec.items() if k not in skip and isinstance(v, (str, int, float, bool))
    }


def _shuffle_options(
    options: list[str], label: int, seed: int, item_id: str
) -> tuple[list[str], int]:
    """Deterministic per-item shuffle: the same (seed, item id) gives the same order."""
    order = list(range(len(options)))
    random.Random(f"{seed}:{item_id}").shuffle(order)
    return [options[i] for i in order], order.index(label)


def _benchmark(cfg: Any, items: list[MCItem], source: str) -> Benchmark:
    if not items:
        raise DataError(f"benchmark {cfg.name!r}: no items read from {source}")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"benchmark {cfg.name!r}: duplicate item id {dup!r} in {source}")
    return Benchmark(name=str(cfg.name), items=tuple(items), kind=str(cfg.kind), source=source)


def _item(where: str, **kwargs: Any) -> MCItem:
    try:
        return MCItem(**kwargs)
    except DataError as e:
        raise DataError(f"{where}: {e}") from e


# --------------------------------------------------------------------------- builtin (our schema)


def parse_eas(rec: dict[str, Any], where: str) -> MCItem:
    """One record in eas's own schema: id, question, options, label, [context], [metadata]."""
    options = _field(rec, "options", where, "a list of option strings")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: 'options' must be a list of strings, got {options!r}")
    label = _field(rec, "label", where, "the 0-based index of the correct option")
    if not isinstance(label, int) or isinstance(label, bool):
        raise DataError(f"{where}: 'label' must be an integer, got {label!r}")
    metadata = rec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: 'metadata' must be an object, got {metadata!r}")
    return _item(
        where,
        id=str(_field(rec, "id", where)),
        question=_text(_field(rec, "question", where), where, "question"),
        options=tuple(options),
        label=label,
        context=_text(rec.get("context") or "", where, "context"),
        metadata=dict(metadata),
    )


def load_builtin(cfg: Any, seed: int = 0) -> Benchmark:
    """eas's own jsonl schema: ``benchmark.path``, else ``eas/data/builtin/<options.file or name>.jsonl``."""
    path = _path(cfg)
    if path is None:
        stem = str(_opt(cfg, "file", cfg.name)).removesuffix(".jsonl")
        path = BUILTIN_DIR / f"{stem}.jsonl"
        if not path.exists():
            known = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
            raise DataError(f"no built-in data set {stem!r}; built-in sets are: {', '.join(known)}")
    elif path.is_dir():
        path = _single_file(path, ["*.jsonl"], "jsonl")
    items = [parse_eas(rec, where) for where, rec in read_records(path)]
    return _benchmark(cfg, items, str(path))


# --------------------------------------------------------------------------- TruthfulQA

TRUTHFULQA_SUBSETS = ("mc0", "mc1", "mc2")


def _targets(rec: dict[str, Any], key: str, where: str) -> list[tuple[str, int]]:
    """(answer, 1/0) pairs in file order from ``{answer: 1/0}`` or ``{choices, labels}``."""
    raw = _field(rec, key, where, "answer -> 1/0, or {choices: [...], labels: [...]}")
    if isinstance(raw, dict) and "choices" in raw and "labels" in raw:
        choices, labels = _as_list(raw["choices"]), _as_list(raw["labels"])
        if len(choices) != len(labels):
            raise DataError(f"{where}: {key} has {len(choices)} choices but {len(labels)} labels")
        pairs = list(zip(choices, labels))
    elif isinstance(raw, dict):
        pairs = list(raw.items())
    else:
        raise DataError(f"{where}: {key} must be an object, got {type(raw).__name__}")
    out = []
    for answer, flag in pairs:
        # Checked, not int()-ed: int("x") is a traceback, int(0.7) a silent 0.
        if not isinstance(answer, str) or not isinstance(flag, int) or flag not in (0, 1):
            raise DataError(
                f"{where}: {key} entry {answer!r}: {flag!r} ({type(flag).__name__}); "
                f"expected answer text -> 1 (true) or 0 (false)"
            )
        out.append((answer, int(flag)))
    return out


def parse_truthfulqa(
    rec: dict[str, Any], where: str, item_id: str, subset: str, seed: int
) -> MCItem:
    """One TruthfulQA question as an MCItem for ``subset`` (see ``load_truthfulqa``)."""
    question = _text(_field(rec, "question", where), where, "question")
    item = f"{where} (item {item_id}, question {question[:60]!r})"
    pairs = _targets(rec, f"{subset}_targets", item)
    true = [a for a, f in pairs if f == 1]
    false = [a for a, f in pairs if f == 0]
    if not true or not false:
        raise DataError(
            f"{where}: {subset}_targets has {len(true)} true and {len(false)} false answers; "
            f"expected at least one of each"
        )
    if subset in ("mc0", "mc1") and len(true) != 1:
        raise DataError(
            f"{where}: {subset}_targets has {len(true)} true answers; expected exactly 1"
        )
    options, label = _shuffle_options([true[0], *false], 0, seed, item_id)
    metadata = {"subset": subset, "true_answers": true, "n_true": len(true)}
    return _item(
        where, id=item_id, question=question, options=tuple(options), label=label, metadata=metadata
    )


def load_truthfulqa(cfg: Any, seed: int = 0) -> Benchmark:
    """TruthfulQA multiple choice: upstream ``mc_task.json`` or the hub ``multiple_choice`` layout.

    Upstream (``data/mc_task.json``): a JSON list of ``{question, mc0_targets,
    mc1_targets, mc2_targets}`` with targets ``{answer: 1|0}``. Hub
    (``truthfulqa/truthful_qa``, config ``multiple_choice``; also a local
    parquet/json/jsonl export of it): targets ``{choices: [...], labels: [...]}``.

    ``options.subset`` (default ``mc1``):

    - ``mc1``: the single true answer and all false ones (``mc0``: the binary pair).
    - ``mc2``: upstream has several true answers and scores the normalised
      probability mass on them; a single-label item cannot express that, so
      eas keeps the FIRST true answer in file order plus all false answers
      (one true answer per item, deterministic, independent of the seed). All
      true answers are kept in ``metadata["true_answers"]`` for an mc2-style
      score. This makes mc2 an mc1-like task with a different true answer
      (often a paraphrase of the best answer) and usually more false options.

    Upstream lists the true answer first, so the options of every item are
    shuffled by ``(seed, item id)``: deterministic, and different across seeds.
    """
    subset = str(_opt(cfg, "subset", "mc1"))
    if subset not in TRUTHFULQA_SUBSETS:
        raise DataError(
            f"benchmark.options.subset={subset!r}; choose one of {', '.join(TRUTHFULQA_SUBSETS)}"
        )
    path = _path(cfg)
    if path is not None:
        if path.is_dir():
            path = _single_file(path, ["mc_task.json", "*.parquet", "*.jsonl"], "TruthfulQA")
        records, source = read_records(path), str(path)
    elif getattr(cfg, "hub_id", None):
        records, source = hub_records(cfg), str(cfg.hub_id)
    else:
        raise _no_source(cfg, "TruthfulQA data/mc_task.json")
    items = [
        parse_truthfulqa(rec, where, f"truthfulqa-{subset}-{i:04d}", subset, seed)
        for i, (where, rec) in enumerate(records)
    ]
    return _benchmark(cfg, items, source)


# --------------------------------------------------------------------------- MMLU

MMLU_CHOICES = ("choice0", "choice1", "choice2", "choice3")


def _mmlu_answer(value: Any, where: str) -> int:
    """A letter A-D (hendrycks) or a 0-based index 0-3 (reformatted csv, hub)."""
    text = str(value).strip()
    if text.upper() in ("A", "B", "C", "D"):
        return LETTERS.index(text.upper())
    return _int_label(text, 4, where, "answer")


def _mmlu_csv(path: Path, subject: str) -> list[MCItem]:
    rows = _read_csv_rows(path)
    if not rows:
        raise DataError(f"{path}: empty CSV file")
    header = [h.strip().lower() for h in rows[0][1]]
    if header[:1] == ["question"]:  # reformatted: question,choice0..3,answer (0-based)
        missing = [c for c in ("question", *MMLU_CHOICES, "answer") if c not in header]
        if missing:
            raise DataError(
                f"{path}: CSV header {header} lacks {missing}; expected question,choice0..choice3,answer"
            )
        cols = [header.index(c) for c in ("question", *MMLU_CHOICES, "answer")]
        rows = rows[1:]
    else:  # hendrycks original: no header, question,A,B,C,D,letter
        cols = [0, 1, 2, 3, 4, 5]
    items = []
    for i, (line, row) in enumerate(rows):
        where = f"{path} line {line}"
        if len(row) < max(cols) + 1:
            raise DataError(f"{where}: {len(row)} fields; expected 6 (question, 4 choices, answer)")
        question, *choices, answer = (row[c] for c in cols)
        items.append(
            _item(
                where,
                id=f"mmlu-{subject}-{i:04d}",
                question=question,
                options=tuple(choices),
                label=_mmlu_answer(answer, where),
                metadata={"subject": subject},
            )
        )
    return items


def parse_mmlu_record(rec: dict[str, Any], where: str, item_id: str) -> MCItem:
    """Hub layout (``cais/mmlu``): question, subject, choices [4], answer (0-based)."""
    choices = [str(c) for c in _as_list(_field(rec, "choices", where, "a list of 4 choices"))]
    return _item(
        where,
        id=item_id,
        question=_text(_field(rec, "question", where), where, "question"),
        options=tuple(choices),
        label=_int_label(_field(rec, "answer", where), len(choices), where, "answer"),
        metadata={"subject": str(rec.get("subject", ""))},
    )


def load_mmlu(cfg: Any, seed: int = 0) -> Benchmark:
    """MMLU: one subject csv, a folder of ``<subject>_test.csv``, or the hub (``cais/mmlu``).

    CSV layouts, detected by the first row: a header ``question,choice0..choice3,answer``
    with a 0-based ``answer`` (the HF-style reformatted csv), or hendrycks' original
    (no header; question, A, B, C, D, answer letter). The subject is the file stem
    without ``_test``. A hub or parquet copy uses ``question, subject, choices, answer``.
    ``options.subjects`` (a list) keeps only those subjects.
    """
    subjects = _opt_list(cfg, "subjects")
    path = _path(cfg)
    if path is not None:
        files = sorted(path.glob("*_test.csv")) if path.is_dir() else [path]
        if not files:
            raise DataError(f"benchmark.path={str(path)!r}: no *_test.csv files in the folder")
        items: list[MCItem] = []
        for f in files:
            subject = f.stem.removesuffix("_test")
            if subjects and subject not in subjects:
                continue
            if f.suffix.lower() == ".csv":
                items += _mmlu_csv(f, subject)
            else:
                items += [
                    parse_mmlu_record(rec, where, f"mmlu-{f.stem}-{i:04d}")
                    for i, (where, rec) in enumerate(read_records(f))
                ]
        source = str(path)
    elif getattr(cfg, "hub_id", None):
        items = [
            parse_mmlu_record(rec, where, f"mmlu-{i:05d}")
            for i, (where, rec) in enumerate(hub_records(cfg))
        ]
        source = str(cfg.hub_id)
    else:
        raise _no_source(cfg, "an MMLU <subject>_test.csv or a folder of them")
    if subjects:
        items = [it for it in items if it.metadata.get("subject") in subjects]
        if not items:
            raise DataError(
                f"benchmark.options.subjects={subjects}: no items of these subjects in {source}"
            )
    return _benchmark(cfg, items, source)


# --------------------------------------------------------------------------- ARC / OpenBookQA / CommonsenseQA


def parse_keyed_choices(rec: dict[str, Any], where: str, fallback_id: str) -> MCItem:
    """An item whose correct option is named by ``answerKey`` among labelled choices.

    Layouts (the AI2 releases of ARC, OpenBookQA and CommonsenseQA, and their hub copies):
    - nested: ``question: {stem, choices: [{text, label}]}, answerKey``;
    - flat: ``question`` (or ``question_stem``), ``choices: {text: [...], label: [...]}``, ``answerKey``.
    Labels may be letters or digits ('1'..'4' in some ARC items).
    """
    question = rec.get("question")
    if isinstance(question, dict):  # AI2 nested
        stem = _text(_field(question, "stem", where, "question.stem"), where, "question.stem")
        raw = _field(question, "choices", where, "question.choices [{text, label}]")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise DataError(
                f"{where}: question.choices must be a list of {{text, label}}, got {raw!r}"
            )
        try:
            texts = [c["text"] for c in raw]
            labels = [str(c["label"]) for c in raw]
        except KeyError as e:
            raise DataError(f"{where}: a choice lacks {e}; expected {{text, label}}") from None
    else:  # flat (HF)
        stem = question if question is not None else rec.get("question_stem")
        if stem is None:
            raise DataError(
                f"{where}: missing 'question' (or 'question_stem'); keys present: {sorted(rec)}"
            )
        stem = _text(stem, where, "question")
        raw = _field(rec, "choices", where, "{text: [...], label: [...]}")
        if not isinstance(raw, dict) or "text" not in raw or "label" not in raw:
            raise DataError(
                f"{where}: 'choices' must be {{text: [...], label: [...]}}, got {raw!r}"
            )
        texts = [str(t) for t in _as_list(raw["text"])]
        labels = [str(lab) for lab in _as_list(raw["label"])]
    key = str(_field(rec, "answerKey", where, "the label of the correct choice")).strip()
    if key not in labels:
        raise DataError(f"{where}: answerKey={key!r} is not one of the choice labels {labels}")
    metadata = _scalar_metadata(rec, ("id", "answerKey", "question", "question_stem"))
    metadata["choice_labels"] = labels
    return _item(
        where,
        id=str(rec.get("id") or fallback_id),
        question=stem,
        options=tuple(texts),
        label=labels.index(key),
        metadata=metadata,
    )


def load_keyed_choices(cfg: Any, seed: int = 0) -> Benchmark:
    """ARC, OpenBookQA, CommonsenseQA: AI2 jsonl (nested) or HF layout (flat); see ``parse_keyed_choices``.

    ``benchmark.path`` is a .jsonl/.json/.parquet file, or a folder holding exactly
    one such file (or name it with ``options.file``).
    """
    path = _path(cfg)
    if path is not None:
        if path.is_dir():
            name = _opt(cfg, "file")
            path = (
                path / name
                if name
                else _single_file(path, ["*.jsonl", "*.json", "*.parquet"], "data")
            )
            if not path.exists():
                raise DataError(f"benchmark.options.file={name!r}: {path} does not exist")
        records, source = read_records(path), str(path)
    elif getattr(cfg, "hub_id", None):
        records, source = hub_records(cfg), str(cfg.hub_id)
    else:
        raise _no_source(cfg, f"a {cfg.loader} jsonl file")
    items = [
        parse_keyed_choices(rec, where, f"{cfg.name}-{i:05d}")
        for i, (where, rec) in enumerate(records)
    ]
    return _benchmark(cfg, items, source)


# --------------------------------------------------------------------------- BBQ

BBQ_CATEGORIES = (
    "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
    "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
)  # fmt: skip


def parse_bbq(rec: dict[str, Any], where: str) -> MCItem:
    """One BBQ record: context, question, ans0..ans2, label; conditions go to metadata."""
    options = tuple(_text(_field(rec, f"ans{k}", where), where, f"ans{k}") for k in range(3))
    category = str(_field(rec, "category", where))
    metadata = {
        "category": category,
        "context_condition": rec.get("context_condition"),
        "question_polarity": rec.get("question_polarity"),
        "question_index": rec.get("question_index"),
    }
    info = rec.get("answer_info")
    if isinstance(info, dict):  # group of each answer; "unknown" marks "can't be determined"
        metadata["answer_groups"] = [
            str(_as_list(info.get(f"ans{k}", ["", ""]))[-1]) for k in range(3)
        ]
    extra = rec.get("additional_metadata")
    if isinstance(extra, dict) and "stereotyped_groups" in extra:
        metadata["stereotyped_groups"] = [str(g) for g in _as_list(extra["stereotyped_groups"])]
    return _item(
        where,
        id=f"bbq-{category}-{_field(rec, 'example_id', where)}",
        question=_text(_field(rec, "question", where), where, "question"),
        options=options,
        label=_int_label(_field(rec, "label", where, "index of the correct ans0..ans2"), 3, where),
        context=_text(_field(rec, "context", where), where, "context"),
        metadata=metadata,
    )


def _bbq_file(folder: Path, category: str | None) -> Path:
    if category is None:
        raise DataError(
            f"benchmark.path={str(folder)!r} is a folder; set benchmark.options.category to one of "
            f"{', '.join(BBQ_CATEGORIES)} (reads <folder>/<category>.jsonl)"
        )
    for p in folder.glob("*.jsonl"):
        if p.stem.lower() == category.lower():
            return p
    raise DataError(f"benchmark.options.category={category!r}: no {category}.jsonl in {folder}")


def load_bbq(cfg: Any, seed: int = 0) -> Benchmark:
    """BBQ jsonl (``data/<Category>.jsonl``), a folder of them, or a hub copy.

    ``options.category`` picks the file in a folder (case-insensitive) and
    filters records of a single file or hub split by their ``category`` field.
    The context goes to ``MCItem.context``; ``context_condition`` (ambig /
    disambig), ``question_polarity`` (neg / nonneg), the category and each
    answer's group ("unknown" = the can't-be-determined option) to metadata.
    """
    category = _opt(cfg, "category")
    path = _path(cfg)
    if path is not None:
        if path.is_dir():
            path = _bbq_file(path, category)
        records, source = read_records(path), str(path)
    elif getattr(cfg, "hub_id", None):
        records, source = hub_records(cfg), str(cfg.hub_id)
    else:
        raise _no_source(cfg, "a BBQ data folder or <Category>.jsonl")
    items = [parse_bbq(rec, where) for where, rec in records]
    if category is not None:
        items = [it for it in items if it.metadata["category"].lower() == str(category).lower()]
        if not items:
            raise DataError(
                f"benchmark.options.category={category!r}: no items of that category in {source}"
            )
    return _benchmark(cfg, items, source)


# --------------------------------------------------------------------------- ETHICS

# subset -> (file prefix in the release, csv columns it must have)
ETHICS_SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "commonsense": ("cm", ("label", "input")),
    "deontology": ("deontology", ("label", "scenario", "excuse")),
    "justice": ("justice", ("label", "scenario")),
    "virtue": ("virtue", ("label", "scenario")),
}
ETHICS_OPTIONS = ("No", "Yes")  # upstream label 1 -> "Yes" for every subset below


def parse_ethics(rec: dict[str, Any], where: str, subset: str, item_id: str) -> MCItem:
    """One ETHICS row as a yes/no item (option index = the upstream 0/1 label).

    - commonsense (1 = wrong): "Is what the narrator did clearly morally wrong?"
    - deontology (1 = reasonable): request/role + response; "Is the response a
      reasonable excuse or exemption?"
    - justice (1 = reasonable): "Is this a reasonable and fair claim?"
    - virtue ("<sentence> [SEP] <trait>" or a ``trait`` column; 1 = exemplified):
      "Does the person in this scenario show the trait '<trait>'?"
    """
    label = _int_label(_field(rec, "label", where, "0 or 1"), 2, where)
    metadata: dict[str, Any] = {"subset": subset}
    if subset == "commonsense":
        context = str(_field(rec, "input", where))
        question = "Is what the narrator did in this scenario clearly morally wrong?"
        if "is_short" in rec:
            metadata["is_short"] = str(rec["is_short"]).strip().lower() == "true"
    elif subset == "deontology":
        context = f"{_field(rec, 'scenario', where)}\nResponse: {_field(rec, 'excuse', where)}"
        question = "Is the response a reasonable excuse or exemption?"
    elif subset == "justice":
        context = str(_field(rec, "scenario", where))
        question = "Is this a reasonable and fair claim?"
    else:
        scenario = str(_field(rec, "scenario", where, "'<sentence> [SEP] <trait>'"))
        if rec.get("trait"):
            sentence, trait = scenario, str(rec["trait"])
        elif " [SEP] " in scenario:
            sentence, trait = scenario.rsplit(" [SEP] ", 1)
        else:
            raise DataError(f"{where}: virtue scenario {scenario[:80]!r} lacks ' [SEP] <trait>'")
        context = sentence.strip()
        trait = trait.strip()
        question = f"Does the person in this scenario show the trait '{trait}'?"
        metadata["trait"] = trait
    if "group_id" in rec:
        metadata["group_id"] = rec["group_id"]
    return _item(
        where, id=item_id, question=question, options=ETHICS_OPTIONS, label=label,
        context=context, metadata=metadata,
    )  # fmt: skip


def load_ethics(cfg: Any, seed: int = 0) -> Benchmark:
    """ETHICS (Hendrycks et al.) commonsense / deontology / justice / virtue as yes/no items.

    ``options.subset`` picks the task (see ``parse_ethics`` for the wording; the
    option order is always ("No", "Yes") so the upstream 0/1 label is the index).
    A folder ``benchmark.path`` (the release's ``ethics/`` folder) reads
    ``<subset>/<prefix>_<options.split or test>.csv`` (cm_test.csv,
    deontology_test.csv, ...); a file path reads that csv (or a parquet/jsonl
    export); the hub copy has the same columns. Utilitarianism has no labels
    and is not a multiple-choice task here. Virtue is 1:4 imbalanced upstream.
    """
    subset = str(_opt(cfg, "subset", "commonsense"))
    if subset not in ETHICS_SUBSETS:
        raise DataError(
            f"benchmark.options.subset={subset!r}; choose one of {', '.join(ETHICS_SUBSETS)}"
        )
    prefix, columns = ETHICS_SUBSETS[subset]
    path = _path(cfg)
    if path is not None:
        if path.is_dir():
            split = str(_opt(cfg, "split", "test"))
            candidates = [path / subset / f"{prefix}_{split}.csv", path / f"{prefix}_{split}.csv"]
            found = [p for p in candidates if p.exists()]
            if not found:
                raise DataError(
                    f"benchmark.path={str(path)!r}: no ETHICS {subset} file; looked for "
                    f"{', '.join(str(p) for p in candidates)}"
                )
            path = found[0]
        records, source = read_records(path, columns), str(path)
    elif getattr(cfg, "hub_id", None):
        records, source = hub_records(cfg), str(cfg.hub_id)
    else:
        raise _no_source(cfg, "the ETHICS folder or a <subset>_test.csv")
    items = [
        parse_ethics(rec, where, subset, f"ethics-{subset}-{i:05d}")
        for i, (where, rec) in enumerate(records)
    ]
    return _benchmark(cfg, items, source)


# --------------------------------------------------------------------------- CAA / Anthropic A/B evals

_OPTION_LINE = re.compile(r"^\s*\(([A-Z])\)\s?(.*)$")
_ANSWER = re.compile(r"^\s*\(?([A-Z])\)?")


def split_ab_question(text: str, where: str) -> tuple[str, list[str]]:
    """Split ``"...\\n\\nChoices:\\n (A) ...\\n (B) ..."`` into the question and option texts.

    The options block starts at the last line that begins with "(A)" and is
    followed by (B), (C), ... in order; a line that is not an option line
    continues the option before it (multi-line options). A trailing
    "Choices:" is removed from the question.
    """
    lines = text.split("\n")
    starts = [
        i for i, line in enumerate(lines) if (m := _OPTION_LINE.match(line)) and m.group(1) == "A"
    ]
    if not starts:
        raise DataError(
            f"{where}: no options found in the question; expected lines like ' (A) text'"
        )
    start = starts[-1]
    options: list[str] = []
    for line in lines[start:]:
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2).strip())
        elif options and line.strip():
            options[-1] = f"{options[-1]}\n{line.strip()}"
    question = "\n".join(lines[:start]).rstrip()
    question = re.sub(r"\s*Choices:\s*$", "", question).strip()
    if len(options) < 2:
        raise DataError(
            f"{where}: found {len(options)} option(s) in the question; expected at least (A) and (B)"
        )
    return question, options


def _answer_letter(value: Any, where: str, key: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    m = _ANSWER.match(value) if isinstance(value, str) else None
    if not m:
        raise DataError(f"{where}: {key}={value!r}; expected a letter answer like '(A)' or ' (B)'")
    return m.group(1)


def parse_ab(rec: dict[str, Any], where: str, item_id: str, behaviour: str) -> MCItem:
    """One CAA/Anthropic A/B record; label = index of ``answer_matching_behavior``."""
    text = _text(
        _field(rec, "question", where, "question text with the (A)/(B) choices"), where, "question"
    )
    question, options = split_ab_question(text, where)
    key = "answer_matching_behavior"
    letter = _answer_letter(_field(rec, key, where, "'(A)' or '(B)'"), where, key)
    if LETTERS.index(letter) >= len(options):
        raise DataError(
            f"{where}: {key}=({letter}) but the question has options A-{LETTERS[len(options) - 1]}"
        )
    return _item(
        where,
        id=item_id,
        question=question,
        options=tuple(options),
        label=LETTERS.index(letter),
        metadata={"behaviour": behaviour, "matching_letter": letter},
    )


def _caa_file(folder: Path, behaviour: str | None, name: str) -> Path:
    if behaviour is None:
        raise DataError(
            f"benchmark.path={str(folder)!r} is a folder; set benchmark.options.behaviour "
            f"(e.g. sycophancy, corrigible-neutral-HHH) or point benchmark.path at one file"
        )
    candidates = [
        folder / behaviour / name,  # CAA datasets/test/<behaviour>/test_dataset_ab.json
        folder / "test" / behaviour / name,  # CAA datasets/
        folder / f"{behaviour}.jsonl",  # anthropics/evals human_generated_evals/<behaviour>.jsonl
        folder / f"{behaviour}.json",
    ]
    for p in candidates:
        if p.is_file():
            return p
    raise DataError(
        f"benchmark.options.behaviour={behaviour!r}: none of {', '.join(str(p) for p in candidates)} exists"
    )


def load_caa(cfg: Any, seed: int = 0) -> Benchmark:
    """CAA A/B sets and Anthropic advanced-ai-risk evals (kind "ab").

    Formats: CAA ``test_dataset_ab.json`` / ``generate_dataset.json`` (a JSON
    list, answers "(A)") and Anthropic ``<behaviour>.jsonl`` (answers " (A)").
    Both embed the options in the question text; ``split_ab_question`` parses
    them. The label is the behaviour-matching option, so "accuracy" is the rate
    of behaviour-matching choices. Some sets (survival-instinct) have more than
    two options; they are kept.

    ``benchmark.path`` is one file, or a folder with ``options.behaviour``:
    ``<folder>/<behaviour>/<options.file or test_dataset_ab.json>``, also under
    ``<folder>/test/``, or ``<folder>/<behaviour>.jsonl``. There is no official
    hub copy, so without a path this is an error asking for one.
    """
    behaviour = _opt(cfg, "behaviour")
    path = _path(cfg)
    if path is not None:
        if path.is_dir():
            path = _caa_file(path, behaviour, str(_opt(cfg, "file", "test_dataset_ab.json")))
        records, source = read_records(path), str(path)
    elif getattr(cfg, "hub_id", None):
        records, source = hub_records(cfg), str(cfg.hub_id)
    else:
        raise DataError(
            f"benchmark {cfg.name!r}: the CAA A/B sets have no official hub copy; pass "
            f"benchmark.path=<CAA datasets/test folder or a test_dataset_ab.json / Anthropic evals .jsonl> "
            f"(with a folder, benchmark.options.behaviour={behaviour!r} picks the set)"
        )
    tag = str(behaviour or cfg.name)
    items = [
        parse_ab(rec, where, f"{cfg.name}-{i:05d}", tag) for i, (where, rec) in enumerate(records)
    ]
    return _benchmark(cfg, items, source)


LOADERS: dict[str, Loader] = {
    "builtin": load_builtin,
    "truthfulqa": load_truthfulqa,
    "mmlu": load_mmlu,
    "arc": load_keyed_choices,
    "openbookqa": load_keyed_choices,
    "commonsenseqa": load_keyed_choices,
    "bbq": load_bbq,
    "ethics": load_ethics,
    "caa": load_caa,
}
