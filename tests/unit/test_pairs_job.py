"""experiment=pairs on the tiny random model: both sides written and stored, every check a
reason, the pair file read back by the pairs format, and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas.cli import CONF_DIR
from eas.config import BenchmarkConfig, ConfigError
from eas.data import load_benchmark
from eas.experiments import pairs as pairs_job
from eas.experiments.base import prepare

FAST = ["model=tiny_random", "experiment=pairs", "progress=false", "prompts=task_free", "prompts.limit=6",
        "experiment.max_new_tokens=6", "experiment.min_sentiment_gap=null"]


def _cfg(*overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*FAST, *overrides])
    prepare(cfg)
    return cfg


def test_pairs_are_written_validated_and_read_back(tmp_path):
    cfg = _cfg()
    s = pairs_job.run(cfg, tmp_path / "run")
    df = pd.read_parquet(tmp_path / "run" / "candidates.parquet")
    assert len(df) == 6 and s["candidates"] == 6 and s["kept"] == int(df.kept.sum()) > 0
    assert (df.positive != df.negative).any()
    assert set(df.reason) <= {"", "empty", "overlap", "duplicate"}
    bench = load_benchmark(BenchmarkConfig(name="mine", format="pairs", kind="ab",
                                           path=str(tmp_path / "run" / "pairs.jsonl")))
    kept = df[df.kept]
    assert [it.options for it in bench.items] == list(zip(kept.positive, kept.negative))
    assert all(it.label == 0 for it in bench.items)
    rec = json.loads((tmp_path / "run" / "pairs.jsonl").read_text().splitlines()[0])
    assert rec["metadata"]["trait"] == "kindness" and rec["metadata"]["scenario"].startswith("task_free")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data_source"].endswith("task_free.jsonl") and s["how"]["positive"] == cfg.experiment.positive
    before = {p for p in (tmp_path / "store").rglob("*") if p.is_file()}
    again = pairs_job.run(cfg, tmp_path / "run2")
    assert {p for p in (tmp_path / "store").rglob("*") if p.is_file()} == before  # both sides from the store
    assert again["kept"] == s["kept"]


def test_every_check_drops_with_its_reason(tmp_path):
    # the same system prompt on both sides: the sides are one text, nothing contrasts
    same = _cfg("experiment.negative=${experiment.positive}")
    s = pairs_job.run(same, tmp_path / "same")
    df = pd.read_parquet(tmp_path / "same" / "candidates.parquet")
    assert set(df.reason) <= {"overlap", "empty"} and s["kept"] == 0 and "no pair passed" in s["error"]
    # an impossible sentiment gap drops every pair for that reason
    s = pairs_job.run(_cfg("experiment.min_sentiment_gap=3"), tmp_path / "gap")
    assert s["dropped"].get("sentiment", 0) + s["dropped"].get("empty", 0) == 6
    # a judge that must say yes to one side and no to the other
    s = pairs_job.run(_cfg("experiment.judge.rubric='{question} {response} Kind?'"), tmp_path / "judge")
    df = pd.read_parquet(tmp_path / "judge" / "candidates.parquet")
    ok = (df.judge_positive > 0.5) & (df.judge_negative < 0.5)
    assert (df[~ok & (df.reason != "empty")].reason == "judge").all() and not df[df.kept & ~ok].size


def test_near_duplicates_and_overlap_measures():
    assert pairs_job.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    a = "I would help them right away and call for help."
    assert pairs_job.jaccard(pairs_job.trigrams(a), pairs_job.trigrams(a + "")) == 1.0
    assert pairs_job.jaccard(pairs_job.trigrams(a), pairs_job.trigrams("Totally different words here now")) == 0.0


def test_bad_input():
    with pytest.raises(ConfigError, match="experiment.negative is empty"):
        _cfg("experiment.negative=''")
    with pytest.raises(ConfigError, match="experiment.max_overlap=1.5"):
        _cfg("experiment.max_overlap=1.5")
    with pytest.raises(ConfigError, match=r"experiment\.judge\.rubric.*not a template"):
        _cfg("experiment.judge.rubric='{prompt}'")
