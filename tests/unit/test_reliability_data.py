"""eas.data reliability: duplicate items, file encodings, non-integer TruthfulQA flags.

The files are small edits of the real upstream samples (read in place from
../shared/data/samples), written into tmp_path.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.config import BenchmarkConfig, ConfigError
from eas.data import DataError, load_benchmark, split_items
from eas.experiments.base import prepare

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "samples"
pytestmark = pytest.mark.skipif(
    not SAMPLES.is_dir(),
    reason=f"upstream samples not present at {SAMPLES} (../shared is not checked out)",
)

ETHICS_CSV = SAMPLES / "ethics" / "commonsense" / "cm_test.csv"
MMLU_CSV = SAMPLES / "mmlu_csv" / "global_facts_test.csv"
TRUTHFULQA_JSON = SAMPLES / "truthfulqa" / "mc_task.json"
OPENBOOKQA_JSONL = SAMPLES / "openbookqa" / "test.jsonl"


def cfg(fmt: str, path: Path, duplicates: str = "drop", **options) -> BenchmarkConfig:
    return BenchmarkConfig(
        name="t", format=fmt, path=str(path), options=options, duplicates=duplicates
    )


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


# --------------------------------------------------------------------------- 1. duplicate items


def test_duplicate_ethics_rows_are_dropped_before_the_split(tmp_path, caplog):
    header, *rows = _lines(ETHICS_CSV)
    path = tmp_path / "cm_test.csv"
    path.write_text("".join([header, *rows, rows[0], rows[3], rows[0]]), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="eas"):
        bench = load_benchmark(cfg("ethics", path, subset="commonsense"))
    assert len(bench) == len(rows)
    # the first copy in file order is the one kept
    assert [it.id for it in bench.items] == [
        f"ethics-commonsense-{i:05d}" for i in range(len(rows))
    ]
    assert "t: dropped 3 duplicate items (same question and options" in caplog.text
    splits = split_items(bench.items, 0.4, 0.3, 0.3, seed=0)
    texts = [{it.context for it in split} for split in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert load_benchmark(cfg("ethics", path, subset="commonsense")).items == bench.items


def test_duplicate_truthfulqa_question_is_found_despite_the_option_shuffle(tmp_path):
    raw = json.loads(TRUTHFULQA_JSON.read_text(encoding="utf-8"))
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps([*raw, raw[2]]), encoding="utf-8")
    bench = load_benchmark(cfg("truthfulqa", path, subset="mc2"))
    assert len(bench) == len(raw)
    assert bench.items[2].id == "truthfulqa-mc2-0002"


def test_duplicate_mmlu_rows_with_duplicates_error_name_file_and_ids(tmp_path):
    header, *rows = _lines(MMLU_CSV)
    path = tmp_path / "global_facts_test.csv"
    path.write_text("".join([header, *rows, rows[1]]), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_benchmark(cfg("mmlu", path, duplicates="error"))
    msg = str(e.value)
    assert str(path) in msg and "1 duplicate item" in msg
    assert f"'mmlu-global_facts-{len(rows):04d}' repeats 'mmlu-global_facts-0001'" in msg
    assert "benchmark.duplicates=drop" in msg


def test_duplicates_value_is_checked(tmp_path):
    with pytest.raises(DataError, match=r"benchmark.duplicates='keep'.*drop, error"):
        load_benchmark(cfg("mmlu", MMLU_CSV, duplicates="keep"))
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        composed = compose("config", overrides=["benchmark.duplicates=keep"])
    with pytest.raises(ConfigError, match=r"benchmark.duplicates='keep'.*drop, error"):
        prepare(composed)


# --------------------------------------------------------------------------- 2. encodings

# (format, sample, options): one per text format; mmlu and ethics both read csv headers
FORMATS = {
    "csv-mmlu": ("mmlu", MMLU_CSV, {}),
    "csv-ethics": ("ethics", ETHICS_CSV, {"subset": "commonsense"}),
    "json-truthfulqa": ("truthfulqa", TRUTHFULQA_JSON, {}),
    "jsonl-openbookqa": ("keyed_choices", OPENBOOKQA_JSONL, {}),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_utf8_bom_is_accepted(tmp_path, fmt):
    name, sample, options = FORMATS[fmt]
    path = tmp_path / sample.name
    path.write_bytes(codecs.BOM_UTF8 + sample.read_bytes())
    with_bom = load_benchmark(cfg(name, path, **options))
    plain = load_benchmark(cfg(name, sample, **options))
    assert [(it.question, it.options, it.label) for it in with_bom.items] == [
        (it.question, it.options, it.label) for it in plain.items
    ]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bom", [False, True], ids=["no-bom", "bom"])
def test_non_utf8_byte_names_file_and_offset(tmp_path, fmt, bom):
    name, sample, options = FORMATS[fmt]
    data = sample.read_bytes()
    # a latin-1 "é" (0xe9 then ASCII is invalid UTF-8) mid-file, just before a line end
    at = data.index(b"\n", len(data) // 2) - 3
    data = (codecs.BOM_UTF8 if bom else b"") + data[:at] + b"\xe9" + data[at:]
    offset = at + (3 if bom else 0)
    path = tmp_path / sample.name
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        load_benchmark(cfg(name, path, **options))
    assert re.search(
        rf"benchmark file {re.escape(str(path))} is not UTF-8: invalid byte 0xe9 at offset "
        rf"{offset} \(line \d+\); re-save it as UTF-8",
        str(e.value),
    ), str(e.value)


# --------------------------------------------------------------------------- 3. TruthfulQA flags


@pytest.mark.parametrize("flag", ["x", None, 0.5, [1], "1"], ids=repr)
def test_truthfulqa_non_integer_flag_names_file_item_value(tmp_path, flag):
    raw = json.loads(TRUTHFULQA_JSON.read_text(encoding="utf-8"))
    targets = raw[3]["mc1_targets"]
    answer = list(targets)[1]
    targets[answer] = flag
    path = tmp_path / "mc_task.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_benchmark(cfg("truthfulqa", path, subset="mc1"))
    msg = str(e.value)
    assert f"{path} record 3" in msg and "truthfulqa-mc1-0003" in msg
    assert f"{answer!r}: {flag!r}" in msg and "1 (true) or 0 (false)" in msg


def test_truthfulqa_hub_layout_non_integer_label(tmp_path):
    raw = json.loads(TRUTHFULQA_JSON.read_text(encoding="utf-8"))
    rows = []
    for rec in raw:
        t = rec["mc1_targets"]
        rows.append(
            {"question": rec["question"],
             "mc1_targets": {"choices": list(t), "labels": list(t.values())}}
        )  # fmt: skip
    rows[0]["mc1_targets"]["labels"][1] = "no"
    path = tmp_path / "mc1.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=r"line 1 \(item truthfulqa-mc1-0000.*: 'no' \(str\)"):
        load_benchmark(cfg("truthfulqa", path))
