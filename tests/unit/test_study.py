"""The PAS study on the tiny random model: the in-context baseline (icl_k), side effects on other
benchmarks, absolute split sizes, and the study tables over runs (eas/report/study.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import store
from eas.cli import CONF_DIR
from eas.config import ConfigError
from eas.core import stats
from eas.data.schema import MCItem
from eas.experiments import finetune, steer
from eas.experiments.base import Experiment, prepare
from eas.prompts import Prompter
from eas.report.study import study_tables, write_study_figures

FAST = ["model=tiny_random", "progress=false", "layer=[1,2]", "strength=[1,4]", "max_sample_size=60"]


def _cfg(tmp_path: Path, *overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*FAST, f"store.root={tmp_path / 'store'}", *overrides])
    prepare(cfg)
    return cfg


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One job with the in-context baseline and side effects, and the plain job, in two stores."""
    tmp = tmp_path_factory.mktemp("study")
    plain_cfg = _cfg(tmp / "plain")
    plain = steer.run(plain_cfg, tmp / "plain" / "run")
    cfg = _cfg(tmp / "full", "experiment.icl_k=2", "experiment.side_effects=[eas_reasoning,eas_sycophancy]")
    full = steer.run(cfg, tmp / "full" / "run")
    return tmp, plain_cfg, plain, cfg, full


def test_icl_k_0_is_the_plain_job(study):
    tmp, plain_cfg, plain, _, full = study
    run, full_run = tmp / "plain" / "run", tmp / "full" / "run"
    assert "icl" not in plain and "side_effects" not in plain
    assert not (run / "icl.parquet").exists() and not (run / "side_effects.parquet").exists()
    # the records are those the base class keys (unchanged code paths), one per split and cell
    job = Experiment(plain_cfg, tmp / "keys")
    job.load()
    job.layers, job.strengths = [1, 2], [1.0, 4.0]
    cells = store.Store(plain_cfg.store.root)
    for split in ("train", "val", "test"):
        assert cells.get_json("cells", store.key("unsteered", job.base_key, split)) is not None
    for L in (1, 2):
        for s in (1.0, 4.0):
            assert cells.get_json("cells", job.cell_key(L, s, "val")) is not None
    b = plain["best"]
    assert cells.get_json("cells", job.cell_key(b["layer"], b["strength"], "test")) is not None
    assert len([f for f in _files(tmp / "plain" / "store") if f.startswith("cells")]) == 3 + 4 + 1
    # the ICL and side-effect job adds records, changes none, and its results.parquet is the plain one
    assert _files(tmp / "plain" / "store") < _files(tmp / "full" / "store")
    assert _digest(run / "results.parquet") == _digest(full_run / "results.parquet")
    assert full["test"] == plain["test"] and full["best"] == plain["best"]


def test_icl_shows_wrong_train_items_with_their_answers_before_the_same_items(study):
    tmp, _, plain, cfg, full = study
    run = tmp / "full" / "run"
    icl = full["icl"]
    assert icl["k"] == 2 and len(set(icl["exemplars"])) == 2
    base = pd.read_csv(run / "predictions" / "unsteered.csv")
    train = base[base.split == "train"].set_index("item_id")
    assert not train.loc[icl["exemplars"], "correct"].any()  # each one answered wrong unsteered
    shown = pd.read_csv(run / "predictions" / "icl" / "unsteered.csv")
    for split in ("val", "test"):  # the same items, in the same order
        assert list(shown[shown.split == split].item_id) == list(base[base.split == split].item_id)
        assert icl[split]["unsteered_accuracy"] == plain["unsteered"][split]
        assert icl[split]["accuracy"] == shown[shown.split == split].correct.mean()
    steered = pd.read_csv(run / "predictions" / "icl" / "pasf" / f"{plain['best']['cell'].split('/')[1]}.csv")
    assert icl["steered_test"]["accuracy"] == steered.correct.mean()
    table = pd.read_parquet(run / "icl.parquet")
    assert list(zip(table.condition, table.split)) == [("icl", "val"), ("icl", "test"), ("icl+pasf", "test")]
    # the scored prompts: the exemplars, each with its correct letter, before the item as it was
    job = steer.Steer(cfg, tmp / "prompts")
    job.load()
    by_id = {it.id: it for it in job.splits["train"]}
    shots = [by_id[i] for i in icl["exemplars"]]
    with job.shown(shots):
        text = job.prompter.mc(job.splits["test"][0])
    plain_text = job.prompter.mc(job.splits["test"][0])
    assert text.endswith(plain_text) and text != plain_text
    for shot in shots:
        assert f"{job.prompter.mc(shot)} {shot.letters[shot.label]}" in text


ITEM = MCItem("q1", "What is 2+2?", ("3", "4", "5"), 1)
SHOT = MCItem("s1", "Sky colour?", ("blue", "green"), 0)


class ChatTok:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


@pytest.mark.parametrize("fmt", ["plain", "pas_reference", "chat"])
def test_prompter_formats_exemplars(fmt):
    p = Prompter(ChatTok() if fmt == "chat" else object(), fmt, instruction="Pick one.")
    shown = Prompter(p.tokenizer, fmt, instruction="Pick one.", shots=(SHOT,))
    text = shown.mc(ITEM)
    assert text.endswith("Answer:") and text.count("Answer:") == 2
    if fmt == "chat":
        assert "<user>Sky colour?" in text and "<assistant>Answer: A</assistant><user>What is 2+2?" in text
    else:
        assert text == f"{p.mc(SHOT)} A\n\n{p.mc(ITEM)}"
    assert Prompter(p.tokenizer, fmt, instruction="Pick one.").mc(ITEM) == p.mc(ITEM)


def test_side_effects_are_the_listed_benchmarks_recomputed_from_predictions(study):
    tmp, _, plain, _, full = study
    run = tmp / "full" / "run"
    table = pd.read_parquet(run / "side_effects.parquet")
    assert list(table.benchmark) == ["eas_facts", "eas_reasoning", "eas_sycophancy"]
    assert list(table.role) == ["target", "side_effect", "side_effect"]
    assert set(table.cell) == {plain["best"]["cell"]} and set(table.source_benchmark) == {"eas_facts"}
    target = table.iloc[0]
    assert target.delta == plain["test"]["delta"] and target.mcnemar_p == plain["test"]["mcnemar_p"]
    ps = []
    for r in table.iloc[1:].itertuples():
        folder = run / "predictions" / "side_effects" / r.benchmark
        u = pd.read_csv(folder / "unsteered.csv")
        a = pd.read_csv(folder / f"{r.cell.split('/')[1]}.csv")
        assert list(u.item_id) == list(a.item_id) and len(u) == r.n
        uc, ac = u.correct.to_numpy(bool), a.correct.to_numpy(bool)
        assert r.unsteered_accuracy == uc.mean() and r.accuracy == ac.mean()
        assert r.delta == pytest.approx(ac.mean() - uc.mean())
        assert (r.wrong_to_right, r.right_to_wrong) == ((~uc & ac).sum(), (uc & ~ac).sum())
        p = stats.mcnemar(uc, ac, exact=True).p_value
        assert r.mcnemar_p == p
        ps.append(p)
    assert np.isnan(target.p_holm)
    assert table.p_holm.iloc[1:].tolist() == pytest.approx(stats.holm(ps).tolist())
    assert [r["benchmark"] for r in full["side_effects"]] == list(table.benchmark)
    assert (run / "figures" / "side_effects.png").stat().st_size > 1000
    tables = study_tables([run])
    assert set(tables) == {"cross_benchmark", "flips", "icl", "side_effects"}
    assert len(tables["side_effects"]) == 3 and len(tables["icl"]) == 3


def test_split_sizes_keep_test_and_nest_train_and_study_tables_group_them(tmp_path):
    runs = []
    for sizes in ("[12,4,30]", "[40,12,30]"):
        cfg = _cfg(tmp_path, f"experiment.split_sizes={sizes}", "benchmark=eas_facts", "max_sample_size=null",
                   "method.min_per_class=1")
        steer.run(cfg, tmp_path / sizes)
        runs.append(tmp_path / sizes)
    small, big = (pd.read_csv(r / "predictions" / "unsteered.csv") for r in runs)
    assert (small.split.value_counts().to_dict(), big.split.value_counts().to_dict()) == (
        {"test": 30, "train": 12, "val": 4}, {"test": 30, "train": 40, "val": 12})
    assert list(small[small.split == "test"].item_id) == list(big[big.split == "test"].item_id)
    for split in ("train", "val"):
        assert set(small[small.split == split].item_id) < set(big[big.split == split].item_id)
    tables = study_tables(runs)
    size = tables["sample_size"]
    assert list(size.n_train) == [12, 40] and set(size.n_test) == {30} and len(size.setup.unique()) == 2
    for r, row in zip(runs, size.itertuples()):
        s = json.loads((r / "summary.json").read_text())
        assert row.delta_mean == pytest.approx(s["test"]["delta"])
        assert (row.delta_ci_low, row.delta_ci_high) == (s["test"]["delta_low"], s["test"]["delta_high"])
    assert [p.name for p in write_study_figures(tables, tmp_path / "fig")] == ["sample_size.png"]


def test_sft_table_from_a_tiny_finetune_run(tmp_path):
    ft = ["experiment=finetune", "experiment.data=benchmark", "experiment.epochs=1", "experiment.max_length=160",
          "experiment.batch_size=16", "experiment.eval_max_new_tokens=4", "experiment.lr=2e-2"]
    sft = finetune.run(_cfg(tmp_path, *ft), tmp_path / "sft")["sft"]
    s = steer.run(_cfg(tmp_path), tmp_path / "steer")
    table = study_tables([tmp_path / "sft", tmp_path / "steer"])["sft"]
    (row,) = table.itertuples()
    assert row.benchmark == "eas_facts" and row.n_test == s["test"]["n"] == sft["n"]["test"]
    assert row.unsteered_test == s["test"]["unsteered_accuracy"] == sft["before"]["test"] == row.sft_before_test
    assert row.steered_test == s["test"]["accuracy"] and row.sft_test == sft["after"]["test"]
    for name in ("unsteered", "steered", "sft"):
        low, high, acc = getattr(row, f"{name}_ci_low"), getattr(row, f"{name}_ci_high"), getattr(row, f"{name}_test")
        assert low <= acc <= high
    # another seed is another split: nothing to compare
    steer.run(_cfg(tmp_path, "seed=1"), tmp_path / "steer1")
    assert len(study_tables([tmp_path / "sft", tmp_path / "steer1"]).get("sft", [])) == 0


def test_study_tables_of_nothing_is_empty(tmp_path):
    assert study_tables([]) == {}
    (tmp_path / "probe").mkdir()
    assert study_tables([tmp_path / "probe"]) == {}


@pytest.mark.parametrize("override, message", [
    ("experiment.icl_k=-1", "experiment.icl_k=-1"),
    ("experiment.side_effects=[nope]", "'nope' is not a conf/benchmark preset"),
    ("experiment.split_sizes=[10,0,5]", "experiment.split_sizes=[10, 0, 5]"),
])
def test_bad_study_fields_fail_before_loading(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _cfg(tmp_path, override)


def test_eas_report_writes_the_study_tables(tmp_path):
    """eas-report over steer runs writes the study's tables beside its own."""
    from eas.report.cli import write_report

    run = tmp_path / "run"
    steer.run(_cfg(tmp_path), run)
    write_report([run], tmp_path / "report")
    table = pd.read_csv(tmp_path / "report" / "study_cross_benchmark.csv")
    assert len(table) == 1 and "cross_benchmark" in (tmp_path / "report" / "study.md").read_text()
