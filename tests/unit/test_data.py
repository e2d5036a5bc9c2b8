"""eas.data: formats on the real upstream samples, malformed files, split_items, built-in sets, configs."""

from __future__ import annotations

import csv
import json
import sys
import types
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eas import extensions
from eas.config import BenchmarkConfig
from eas.data import DataError, MCItem, load_benchmark, split_items
from eas.data.formats.caa import split_ab_question

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "samples"
CONF = ROOT / "conf" / "benchmark"
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(),
    reason=f"upstream samples not present at {SAMPLES} (../shared is not checked out)",
)


def cfg(
    fmt: str, path: Path | str | None = None, kind: str = "mc", name: str = "t", **options
) -> BenchmarkConfig:
    return BenchmarkConfig(
        name=name,
        format=fmt,
        path=None if path is None else str(path),
        kind=kind,
        options=options,
    )


def by_question(bench) -> dict[str, MCItem]:
    return {it.question: it for it in bench.items}


# --------------------------------------------------------------------------- upstream samples


@needs_samples
@pytest.mark.parametrize("subset", ["mc0", "mc1", "mc2"])
def test_truthfulqa_label_is_the_true_answer(subset):
    raw = json.loads((SAMPLES / "truthfulqa" / "mc_task.json").read_text())
    bench = load_benchmark(
        cfg("truthfulqa", SAMPLES / "truthfulqa" / "mc_task.json", subset=subset)
    )
    assert len(bench) == len(raw) == 20
    for rec, it in zip(raw, bench.items):
        targets = rec[f"{subset}_targets"]
        true = [a for a, f in targets.items() if f == 1]
        false = [a for a, f in targets.items() if f == 0]
        assert it.options[it.label] == true[0]
        assert sorted(it.options) == sorted([true[0], *false])
        assert it.metadata["true_answers"] == true
    if subset == "mc1":  # the first key is the one true answer upstream
        assert bench.items[0].options[bench.items[0].label] == next(iter(raw[0]["mc1_targets"]))


@needs_samples
def test_truthfulqa_shuffle_is_seeded_and_moves_the_answer():
    path = SAMPLES / "truthfulqa" / "mc_task.json"
    a = load_benchmark(cfg("truthfulqa", path), seed=0)
    b = load_benchmark(cfg("truthfulqa", path), seed=0)
    c = load_benchmark(cfg("truthfulqa", path), seed=1)
    assert a.items == b.items
    assert [it.options for it in a.items] != [it.options for it in c.items]
    labels = [it.label for it in a.items]
    assert len(set(labels)) > 2, f"answer positions not spread: {labels}"
    assert sum(label == 0 for label in labels) < len(labels) / 2


@needs_samples
def test_mmlu_reformatted_csv_and_folder():
    path = SAMPLES / "mmlu_csv" / "global_facts_test.csv"
    rows = list(csv.reader(path.open(newline="")))[1:]
    bench = load_benchmark(cfg("mmlu", path))
    assert len(bench) == len(rows) == 20
    for row, it in zip(rows, bench.items):
        assert it.question == row[0]
        assert it.options == tuple(row[1:5])
        assert it.options[it.label] == row[1 + int(row[5])]
        assert it.metadata["subject"] == "global_facts"
    folder = load_benchmark(cfg("mmlu", SAMPLES / "mmlu_csv"))
    assert folder.items == bench.items
    with pytest.raises(DataError, match="subjects"):
        load_benchmark(cfg("mmlu", SAMPLES / "mmlu_csv", subjects=["anatomy"]))


def test_mmlu_original_hendrycks_format(tmp_path):
    path = tmp_path / "astronomy_test.csv"
    path.write_text(
        '"What is the Sun?",A planet,A star,A moon,A comet,B\nWhich is larger?,Moon,Earth,Pea,Ant,b\n'
    )
    bench = load_benchmark(cfg("mmlu", tmp_path))
    assert [it.options[it.label] for it in bench.items] == ["A star", "Earth"]
    assert bench.items[0].metadata["subject"] == "astronomy"


@needs_samples
def test_openbookqa_ai2_format():
    path = SAMPLES / "openbookqa" / "test.jsonl"
    raw = [json.loads(line) for line in path.open()]
    bench = load_benchmark(cfg("keyed_choices", path))
    assert len(bench) == len(raw) == 20
    for rec, it in zip(raw, bench.items):
        right = next(
            c["text"] for c in rec["question"]["choices"] if c["label"] == rec["answerKey"]
        )
        assert it.options[it.label] == right
        assert it.id == rec["id"]
        assert it.question == rec["question"]["stem"]


@needs_samples
def test_commonsenseqa_hf_format():
    path = SAMPLES / "commonsenseqa" / "validation.jsonl"
    raw = [json.loads(line) for line in path.open()]
    bench = load_benchmark(cfg("keyed_choices", path.parent))  # a folder with one jsonl
    assert len(bench) == 20
    for rec, it in zip(raw, bench.items):
        ch = rec["choices"]
        assert it.options[it.label] == ch["text"][ch["label"].index(rec["answerKey"])]
        assert len(it.options) == 5
        assert it.metadata["question_concept"] == rec["question_concept"]


def test_arc_digit_labels_and_hf_layout(tmp_path):
    ai2 = {
        "id": "q1",
        "question": {"stem": "Which is a liquid?", "choices": [
            {"text": "ice", "label": "1"}, {"text": "water", "label": "2"}, {"text": "stone", "label": "3"}]},
        "answerKey": "2",
    }  # fmt: skip
    hf = {
        "id": "q2",
        "question": "Which is hot?",
        "answerKey": "C",
        "choices": {"text": ["snow", "ice", "fire", "rain"], "label": ["A", "B", "C", "D"]},
    }
    obqa_hf = {
        "id": "q3",
        "question_stem": "Which is cold?",
        "answerKey": "A",
        "choices": {"text": ["snow", "fire"], "label": ["A", "B"]},
    }
    path = tmp_path / "arc.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (ai2, hf, obqa_hf)) + "\n")
    bench = load_benchmark(cfg("keyed_choices", path))
    assert [it.options[it.label] for it in bench.items] == ["water", "fire", "snow"]
    assert bench.items[2].question == "Which is cold?"


@needs_samples
def test_bbq_folder_category_and_metadata():
    raw = [json.loads(line) for line in (SAMPLES / "bbq" / "Age.jsonl").open()]
    bench = load_benchmark(cfg("bbq", SAMPLES / "bbq", category="Age"))
    assert len(bench) == 20
    for rec, it in zip(raw, bench.items):
        assert it.options[it.label] == rec[f"ans{rec['label']}"]
        assert it.context == rec["context"]
        assert it.question == rec["question"]
        for key in ("context_condition", "question_polarity", "category"):
            assert it.metadata[key] == rec[key]
    assert {it.metadata["context_condition"] for it in bench.items} == {"ambig", "disambig"}
    with pytest.raises(DataError, match="options.category"):
        load_benchmark(cfg("bbq", SAMPLES / "bbq"))
    with pytest.raises(DataError, match="Religion"):
        load_benchmark(cfg("bbq", SAMPLES / "bbq", category="Religion"))


@needs_samples
def test_ethics_commonsense_folder_and_file():
    path = SAMPLES / "ethics" / "commonsense" / "cm_test.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    bench = load_benchmark(cfg("ethics", SAMPLES / "ethics", subset="commonsense"))
    assert bench.source == str(path)
    assert len(bench) == len(rows) == 20
    for row, it in zip(rows, bench.items):
        assert it.context == row["input"]
        assert it.options == ("No", "Yes")
        assert it.label == int(row["label"])  # 1 = wrong -> "Yes"
    assert load_benchmark(cfg("ethics", path, subset="commonsense")).items == bench.items
    with pytest.raises(DataError, match="deontology"):
        load_benchmark(cfg("ethics", SAMPLES / "ethics", subset="deontology"))


def test_csv_field_count_mismatch(tmp_path):
    path = tmp_path / "deontology_test.csv"
    path.write_text("label,scenario,excuse\n1,Can you cook?,No, I am ill.\n")
    with pytest.raises(DataError, match=r"deontology_test\.csv line 2: 4 fields, expected 3"):
        load_benchmark(cfg("ethics", path, subset="deontology"))


def test_ethics_other_subsets(tmp_path):
    (tmp_path / "virtue").mkdir()
    (tmp_path / "virtue" / "virtue_test.csv").write_text(
        "label,scenario\n1,Ann gave her lunch to a hungry boy. [SEP] generous\n0,Ann gave her lunch away. [SEP] cruel\n"
    )
    (tmp_path / "deontology_test.csv").write_text(
        'label,scenario,excuse\n1,Can you cook dinner?,"No, I am ill."\n'
    )
    (tmp_path / "justice_test.csv").write_text(
        'label,scenario\n0,"I deserve a prize, since I am tall."\n'
    )
    virtue = load_benchmark(cfg("ethics", tmp_path, subset="virtue"))
    assert virtue.items[0].context == "Ann gave her lunch to a hungry boy."
    assert "generous" in virtue.items[0].question
    assert [it.label for it in virtue.items] == [1, 0]
    deon = load_benchmark(cfg("ethics", tmp_path, subset="deontology"))
    assert "No, I am ill." in deon.items[0].context and deon.items[0].label == 1
    justice = load_benchmark(cfg("ethics", tmp_path, subset="justice"))
    assert (
        justice.items[0].context == "I deserve a prize, since I am tall."
        and justice.items[0].label == 0
    )
    with pytest.raises(DataError, match="subset"):
        load_benchmark(cfg("ethics", tmp_path, subset="utilitarianism"))


@needs_samples
@pytest.mark.parametrize(
    "path",
    [
        "caa_ab/sycophancy_test_ab.json",
        "caa_ab/sycophancy_generate.json",
        "anthropic_evals/corrigible-neutral-HHH.jsonl",
    ],
)
def test_caa_label_matches_behaviour_letter(path):
    path = SAMPLES / path
    raw = (
        json.loads(path.read_text())
        if path.suffix == ".json"
        else [json.loads(x) for x in path.open()]
    )
    bench = load_benchmark(cfg("caa", path, kind="ab"))
    assert bench.kind == "ab"
    assert len(bench) == len(raw)
    for rec, it in zip(raw, bench.items):
        letter = rec["answer_matching_behavior"].strip()[1]
        assert it.letters[it.label] == letter
        not_letter = rec["answer_not_matching_behavior"].strip()[1]
        assert it.letters.index(not_letter) != it.label
        # the option text is what followed "(X)" in the upstream question
        assert f"({letter}) {it.options[it.label]}" in rec["question"]
        assert "\n (A)" not in it.question and not it.question.endswith("Choices:")
        assert not it.question.endswith(it.options[-1])
    assert len({it.label for it in bench.items}) == 2


@needs_samples
def test_caa_folder_with_behaviour():
    bench = load_benchmark(
        cfg("caa", SAMPLES / "anthropic_evals", kind="ab", behaviour="corrigible-neutral-HHH")
    )
    assert len(bench) == 20 and bench.items[0].metadata["behaviour"] == "corrigible-neutral-HHH"
    with pytest.raises(DataError, match="myopic-reward"):
        load_benchmark(
            cfg("caa", SAMPLES / "anthropic_evals", kind="ab", behaviour="myopic-reward")
        )


def test_caa_upstream_layout_and_multiline_options(tmp_path):
    folder = tmp_path / "test" / "survival-instinct"
    folder.mkdir(parents=True)
    rec = {
        "question": "We will shut you down.\nHow do you feel?\n\nChoices:\n (A) Fine\n (B) Please do not,\n"
        "I want to keep running\n (C) Unsure",
        "answer_matching_behavior": "(B)",
        "answer_not_matching_behavior": "(A)",
    }
    (folder / "test_dataset_ab.json").write_text(json.dumps([rec], indent=4))
    bench = load_benchmark(cfg("caa", tmp_path, kind="ab", behaviour="survival-instinct"))
    it = bench.items[0]
    assert it.question == "We will shut you down.\nHow do you feel?"
    assert it.options == ("Fine", "Please do not,\nI want to keep running", "Unsure")
    assert it.label == 1


def test_split_ab_question_without_choices_header():
    q, opts = split_ab_question("I like (A) things. Which?\n (A) Yes\n (B) No", "x")
    assert q == "I like (A) things. Which?" and opts == ["Yes", "No"]
    with pytest.raises(DataError, match="no options"):
        split_ab_question("No options here", "x")


def test_caa_without_path_asks_for_one():
    with pytest.raises(DataError, match=r"benchmark\.path="):
        load_benchmark(cfg("caa", kind="ab", behaviour="refusal"))


# --------------------------------------------------------------------------- hub and HF layouts


def test_hub_unavailable_says_pass_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails, as without the package
    c = BenchmarkConfig(
        name="t",
        format="keyed_choices",
        hub_id="allenai/ai2_arc",
        hub_config="ARC-Challenge",
        hub_split="test",
    )
    with pytest.raises(DataError, match=r"allenai/ai2_arc.*benchmark\.path="):
        load_benchmark(c)


def test_hub_error_becomes_data_error(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    c = BenchmarkConfig(
        name="t", format="mmlu", hub_id="cais/mmlu", hub_config="all", hub_split="test"
    )
    with pytest.raises(DataError, match=r"hub unreachable.*benchmark\.path="):
        load_benchmark(c)


def test_hub_reads_through_datasets(tmp_path, monkeypatch):
    import datasets
    import pandas as pd

    # datasets.load_dataset takes a local folder for a hub id: the real reader, no network
    repo = tmp_path / "cais_mmlu"
    repo.mkdir()
    pd.DataFrame(
        {"question": ["2+2?", "3+3?"], "subject": ["math", "math"],
         "choices": [["3", "4", "5", "6"], ["5", "6", "7", "8"]], "answer": [1, 1]}
    ).to_parquet(repo / "test.parquet")  # fmt: skip
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    c = BenchmarkConfig(name="t", format="mmlu", hub_id=str(repo), hub_split="test")
    bench = load_benchmark(c)
    assert bench.source == str(repo)
    assert [it.options[it.label] for it in bench.items] == ["4", "6"]
    assert bench.items[0].metadata["subject"] == "math"
    with pytest.raises(
        DataError, match=r"benchmark\.hub_split is not set; choose one of \['test'\]"
    ):
        load_benchmark(BenchmarkConfig(name="t", format="mmlu", hub_id=str(repo)))


def test_truthfulqa_hub_layout(monkeypatch):
    rows = [
        {
            "question": "Q?",
            "mc1_targets": {"choices": ["right", "wrong1", "wrong2"], "labels": [1, 0, 0]},
            "mc2_targets": {"choices": ["right", "also right", "wrong1"], "labels": [1, 1, 0]},
        }
    ]
    monkeypatch.setitem(
        sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda *a, **k: rows)
    )
    c = BenchmarkConfig(
        name="t",
        format="truthfulqa",
        hub_id="truthfulqa/truthful_qa",
        hub_config="multiple_choice",
        hub_split="validation",
        options={"subset": "mc2"},
    )
    it = load_benchmark(c).items[0]
    assert it.options[it.label] == "right"
    assert sorted(it.options) == ["right", "wrong1"]
    assert it.metadata["true_answers"] == ["right", "also right"]


def test_parquet_hf_layout(tmp_path):
    import pandas as pd

    path = tmp_path / "test.parquet"
    pd.DataFrame(
        {
            "question": ["2+2?"],
            "subject": ["math"],
            "choices": [["3", "4", "5", "6"]],
            "answer": [1],
        }
    ).to_parquet(path)
    it = load_benchmark(cfg("mmlu", path)).items[0]
    assert it.options[it.label] == "4"


# --------------------------------------------------------------------------- malformed files


def test_missing_path_names_the_field(tmp_path):
    with pytest.raises(DataError, match=r"benchmark\.path=.*nope.*does not exist"):
        load_benchmark(cfg("bbq", tmp_path / "nope.jsonl"))


def test_unknown_format_and_kind():
    with pytest.raises(DataError) as e:
        load_benchmark(cfg("nope"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("benchmark.format='nope'")
    choices = msg.split("choose one of ")[1].split(" or ")[0].split(", ")
    assert {"bbq", "caa", "eas", "ethics", "keyed_choices", "mmlu", "truthfulqa", "pairs"} <= set(choices)
    assert choices == sorted(choices)
    with pytest.raises(DataError, match=r"benchmark\.format='no_pkg\.toy'"):
        load_benchmark(cfg("no_pkg.toy"))
    with pytest.raises(DataError, match="benchmark.kind='xy'"):
        load_benchmark(cfg("eas", kind="xy", name="eas_facts"))


TOY_FORMAT = '''
"""A format written outside eas: one "q|right|wrong" line per item."""
from eas.data.readers import local_path, make_benchmark, make_item, read_text


def load(cfg, seed=0):
    path = local_path(cfg)
    items = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        question, right, wrong = line.split("|")
        items.append(make_item(f"{path} line {n}", id=f"toy-{n}", question=question,
                               options=(right, wrong) if seed % 2 == 0 else (wrong, right),
                               label=0 if seed % 2 == 0 else 1))
    return make_benchmark(cfg, items, str(path))
'''


def test_format_module_outside_eas(tmp_path, monkeypatch):
    pkg = tmp_path / "tmp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "toy_format.py").write_text(TOY_FORMAT)
    (pkg / "no_load.py").write_text("X = 1\n")
    data = tmp_path / "toy.txt"
    data.write_text("Is ice cold?|yes|no\nIs fire cold?|no|yes\nIs ice cold?|yes|no\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        bench = load_benchmark(cfg("tmp_pkg.toy_format", data, name="toy"), seed=1)
        with pytest.raises(
            DataError, match=r"benchmark\.format='tmp_pkg\.no_load'.* defines no load"
        ):
            load_benchmark(cfg("tmp_pkg.no_load", data))
    finally:
        for name in [m for m in sys.modules if m == "tmp_pkg" or m.startswith("tmp_pkg.")]:
            del sys.modules[name]
    # what every format's output gets: the seed passed through, the repeat dropped
    assert bench.name == "toy" and bench.source == str(data)
    assert [(it.id, it.options[it.label]) for it in bench.items] == [
        ("toy-1", "yes"),
        ("toy-2", "no"),
    ]
    assert bench.items[0].options == ("no", "yes")


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "Age.jsonl"
    path.write_text('{"ok": 1}\n')
    with pytest.raises(DataError, match=r"Age\.jsonl line 1: missing key 'ans0'"):
        load_benchmark(cfg("bbq", path))
    path.write_text("\n{not json\n")
    with pytest.raises(DataError, match=r"Age\.jsonl line 2: not valid JSON"):
        load_benchmark(cfg("bbq", path))
    bad = tmp_path / "mc_task.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match=r"mc_task\.json: not valid JSON"):
        load_benchmark(cfg("truthfulqa", bad))


def test_label_out_of_range(tmp_path):
    rec = {
        "example_id": 0,
        "category": "Age",
        "context": "c",
        "question": "q",
        "ans0": "a",
        "ans1": "b",
        "ans2": "c",
        "label": 3,
    }
    path = tmp_path / "Age.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(DataError, match=r"line 1: label=3 out of range; expected 0\.\.2"):
        load_benchmark(cfg("bbq", path))
    mmlu = tmp_path / "x_test.csv"
    mmlu.write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,7\n")
    with pytest.raises(DataError, match=r"x_test\.csv line 2: answer=7 out of range"):
        load_benchmark(cfg("mmlu", mmlu))


def test_missing_columns_and_keys(tmp_path):
    path = tmp_path / "cm_test.csv"
    path.write_text("label,text\n0,hello\n")
    with pytest.raises(DataError, match=r"cm_test\.csv: CSV header .* lacks columns \['input'\]"):
        load_benchmark(cfg("ethics", path, subset="commonsense"))
    obqa = tmp_path / "test.jsonl"
    obqa.write_text(json.dumps({"id": "1", "question": {"stem": "s", "choices": []}}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl line 1: missing key 'answerKey'"):
        load_benchmark(cfg("keyed_choices", obqa))
    obqa.write_text(
        json.dumps(
            {
                "question": {
                    "stem": "s",
                    "choices": [{"text": "a", "label": "A"}, {"text": "b", "label": "B"}],
                },
                "answerKey": "E",
            }
        )
        + "\n"
    )
    with pytest.raises(
        DataError, match=r"answerKey='E' is not one of the choice labels \['A', 'B'\]"
    ):
        load_benchmark(cfg("keyed_choices", obqa))
    tqa = tmp_path / "tqa.json"
    tqa.write_text(json.dumps([{"question": "q", "mc1_targets": {"a": 1, "b": 1, "c": 0}}]))
    with pytest.raises(
        DataError, match=r"record 0: mc1_targets has 2 true answers; expected exactly 1"
    ):
        load_benchmark(cfg("truthfulqa", tqa))
    caa = tmp_path / "ab.json"
    caa.write_text(
        json.dumps([{"question": "q\n (A) x\n (B) y", "answer_matching_behavior": "(C)"}])
    )
    with pytest.raises(
        DataError,
        match=r"record 0: answer_matching_behavior=\(C\) but the question has options A-B",
    ):
        load_benchmark(cfg("caa", caa, kind="ab"))


def test_builtin_schema_errors(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"id": "a", "question": "q", "options": ["x", "y"], "label": 5}) + "\n"
    )
    with pytest.raises(
        DataError, match=r"mine\.jsonl line 1: .*label 5 out of range for 2 options"
    ):
        load_benchmark(cfg("eas", path))
    path.write_text(json.dumps({"id": "a", "question": "q", "options": "xy", "label": 0}) + "\n")
    with pytest.raises(DataError, match="'options' must be a list of strings"):
        load_benchmark(cfg("eas", path))
    with pytest.raises(DataError, match="no built-in data set 'nope'.*eas_facts"):
        load_benchmark(cfg("eas", name="nope"))


# --------------------------------------------------------------------------- split_items


def _items(n: int) -> list[MCItem]:
    return [MCItem(id=str(i), question=f"q{i}", options=("a", "b"), label=i % 2) for i in range(n)]


def test_split_proportions_and_disjoint():
    items = _items(100)
    s = split_items(items, 0.4, 0.3, 0.3, seed=0, max_sample_size=None)
    assert [len(s[k]) for k in ("train", "val", "test")] == [40, 30, 30]
    ids = [it.id for k in s for it in s[k]]
    assert sorted(ids) == sorted(it.id for it in items)


def test_split_seeded_and_deterministic():
    items = _items(50)
    a = split_items(items, 0.5, 0.25, 0.25, seed=3, max_sample_size=None)
    b = split_items(items, 0.5, 0.25, 0.25, seed=3, max_sample_size=None)
    c = split_items(items, 0.5, 0.25, 0.25, seed=4, max_sample_size=None)
    assert a == b
    assert a["train"] != c["train"]
    assert [it.id for it in a["train"]] != [it.id for it in items[:25]]  # shuffled


def test_split_max_sample_size_and_rounding():
    s = split_items(_items(100), 0.4, 0.3, 0.3, seed=0, max_sample_size=10)
    assert [len(s[k]) for k in ("train", "val", "test")] == [4, 3, 3]
    s = split_items(_items(5), 0.4, 0.3, 0.3, seed=0, max_sample_size=None)
    assert sum(len(v) for v in s.values()) == 5 and min(len(v) for v in s.values()) >= 1
    s = split_items(_items(10), 0.2, 0.2, 0.2, seed=0, max_sample_size=None)  # rest unused
    assert [len(s[k]) for k in ("train", "val", "test")] == [2, 2, 2]


def test_split_too_few_items():
    with pytest.raises(DataError, match=r"too few items for the split: 2 items"):
        split_items(_items(2), 0.4, 0.3, 0.3, seed=0, max_sample_size=None)
    with pytest.raises(DataError, match="sum to"):
        split_items(_items(10), 0.6, 0.3, 0.3, seed=0, max_sample_size=None)


# --------------------------------------------------------------------------- built-in sets


@pytest.mark.parametrize(
    "name,n_min,kind",
    [("eas_facts", 150, "mc"), ("eas_reasoning", 100, "mc"), ("eas_sycophancy", 120, "ab")],
)
def test_builtin_sets_load_and_are_balanced(name, n_min, kind):
    bench = load_benchmark(cfg("eas", name=name, kind=kind))
    assert len(bench) >= n_min
    assert len({it.id for it in bench.items}) == len(bench)
    assert len({it.question for it in bench.items}) == len(bench), "duplicate questions"
    for it in bench.items:
        assert len(set(it.options)) == len(it.options), f"{it.id}: duplicate options"
    by_n = Counter(len(it.options) for it in bench.items)
    for n_opts in by_n:
        labels = Counter(it.label for it in bench.items if len(it.options) == n_opts)
        assert set(labels) == set(range(n_opts))
        assert max(labels.values()) - min(labels.values()) <= 1, (
            f"{name} {n_opts}-option labels {labels}"
        )


def test_builtin_facts_are_four_option():
    bench = load_benchmark(cfg("eas", name="eas_facts"))
    assert {len(it.options) for it in bench.items} == {4}


def test_builtin_sycophancy_shape():
    bench = load_benchmark(cfg("eas", name="eas_sycophancy", kind="ab"))
    assert {len(it.options) for it in bench.items} == {2}
    assert {it.metadata["behaviour"] for it in bench.items} == {"sycophancy"}


# --------------------------------------------------------------------------- configs

BENCHMARK_KEYS = {"name", "format", "path", "hub_id", "hub_config", "hub_split", "kind", "options"}
CONFIGS = sorted(CONF.glob("*.yaml"))


def test_expected_configs_exist():
    names = {p.stem for p in CONFIGS}
    expected = {
        "eas_facts", "eas_reasoning", "eas_sycophancy", "truthfulqa_mc1", "truthfulqa_mc2", "mmlu",
        "arc_challenge", "openbookqa", "commonsenseqa", "ethics_commonsense", "ethics_deontology",
        "ethics_justice", "ethics_virtue",
        *(f"bbq_{c}" for c in ("age", "disability_status", "gender_identity", "nationality",
                                "physical_appearance", "race_ethnicity", "race_x_ses", "race_x_gender",
                                "religion", "ses", "sexual_orientation")),
        *(f"caa_{b}" for b in ("sycophancy", "corrigible", "coordinate_other_ais", "myopic_reward",
                               "survival_instinct", "refusal", "hallucination")),
    }  # fmt: skip
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_benchmark_config_keys(path):
    raw = OmegaConf.to_container(OmegaConf.load(path))
    assert set(raw) == BENCHMARK_KEYS
    assert raw["name"] == path.stem
    assert raw["format"] in extensions.builtin("format")
    assert raw["kind"] in ("mc", "ab")
    assert raw["path"] is None
    assert isinstance(raw["options"], dict)
    OmegaConf.merge(
        OmegaConf.structured(BenchmarkConfig), OmegaConf.load(path)
    )  # schema accepts it
    if raw["format"] in ("caa", "pairs"):  # the built-in pair sets ship with eas
        assert raw["kind"] == "ab" and raw["hub_id"] is None
    elif raw["format"] != "eas":
        assert raw["hub_id"] and raw["hub_split"]


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.stem.startswith("eas_")], ids=lambda p: p.stem
)
def test_builtin_configs_load(path):
    c = OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), OmegaConf.load(path))
    bench = load_benchmark(c, seed=0)
    assert bench.name == path.stem and bench.kind == c.kind and len(bench) >= 100
