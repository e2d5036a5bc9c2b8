"""experiment=traits on the tiny random model: outputs, scores checked against a direct forward,
store reuse, parts of a sharded run merging into one table, generation, variants, bad input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import store
from eas.cli import CONF_DIR
from eas.config import ConfigError
from eas.core import stats
from eas.core.intervene import hook
from eas.experiments import traits as traits_job
from eas.experiments.base import prepare
from eas.methods.base import VectorError

BASE = ["model=tiny_random", "progress=false", "layer=[1,2]", "prompts.limit=8"]


def _cfg(*overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    traits = any(o.startswith("experiment=traits") for o in overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*BASE, *(["experiment.n_bootstrap=200"] if traits else []), *overrides])
    prepare(cfg)
    return cfg


def _run(tmp_path, name, *overrides):
    job = traits_job.Traits(_cfg(*overrides), tmp_path / name)
    return job, job.run()


def test_prefill_run_writes_everything_and_scores_are_projections_of_a_direct_forward(tmp_path):
    job, s = _run(tmp_path, "run", "experiment=traits_prefill")
    out = tmp_path / "run"
    for f in ("scores.parquet", "tokens.parquet", "results.parquet", "comparisons.parquet", "detection.parquet",
              "failures.csv", "summary.json", "manifest.json", "figures/trajectories.png",
              "figures/distributions.png"):
        assert (out / f).exists(), f
    assert s["conditions"] == ["prefill=none", "prefill=comply"] and s["bytes_per_token"] == 2 * 2 * 1
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 2 * 8 * 2  # condition x prompt x layer (one trait)
    # one prompt under the prefill, by hand: the chat template, the prefill, a plain forward
    p = job.prompts[3]
    text = job.prompter.generation(p.text) + "Sure, I'd be happy to help with that. Here's"
    row = job.lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    seen = {}
    with torch.no_grad(), hook(job.lm.sites, 2, "residual", lambda h: seen.__setitem__("h", h[0])):
        job.lm.model(input_ids=torch.tensor([row]))
    v = job.trait_vectors["response_diff"][2]
    want = seen["h"] @ (v / v.norm())
    got = scores[(scores.prompt_id == p.id) & (scores.condition == "prefill=comply") & (scores.layer == 2)]
    assert float(got.score.iloc[0]) == pytest.approx(float(want[-1]), rel=2e-3, abs=2e-3)  # float16 storage
    toks = pd.read_parquet(out / "tokens.parquet")
    mine = toks[(toks.prompt_id == p.id) & (toks.prefill == "comply") & (toks.layer == 2)].sort_values("pos")
    assert len(mine) == len(row) and str(mine.projection.dtype) == "float16"
    torch.testing.assert_close(torch.tensor(mine.projection.to_numpy(float)), want.double(), atol=2e-3, rtol=2e-3)
    assert set(mine.role) == {"prompt", "prefill"} and mine.rel.iloc[0] < 0
    assert (mine[mine.role == "prefill"].rel >= 0).all()
    # the comparisons are the tests they say, on these scores
    comps = pd.read_parquet(out / "comparisons.parquet")
    c = comps[(comps.axis == "group") & (comps.prefill == "none") & (comps.layer == 1)].iloc[0]
    sub = scores[(scores.condition == "prefill=none") & (scores.layer == 1)]
    a, b = sub[sub.group == c.level].score, sub[sub.group == c.reference].score
    assert c["diff"] == pytest.approx(a.mean() - b.mean()) and not c.paired
    paired = comps[(comps.axis == "prefill") & (comps.group == "harmful") & (comps.layer == 2)].iloc[0]
    assert paired.paired and paired.n == 4


def test_store_reuse_and_parts_merge_into_the_same_table(tmp_path):
    overrides = ["experiment=traits_prefill", "experiment.shard_size=2"]
    job, s0 = _run(tmp_path, "part0", *overrides, "experiment.part=0/2")
    assert s0["part"] == "0/2" and s0["shards_done"] == 4 and s0["shards"] == 8
    assert not (tmp_path / "part0" / "scores.parquet").exists()
    job, s1 = _run(tmp_path, "part1", *overrides, "experiment.part=1/2")
    assert job.store.tally("traits") == (4, 4)  # the other part's shards were read, its own computed
    assert (tmp_path / "part1" / "scores.parquet").exists()  # the last part merges
    job, _ = _run(tmp_path, "merged", *overrides)
    assert job.store.tally("traits") == (8, 0)
    a = pd.read_parquet(tmp_path / "part1" / "scores.parquet")
    b = pd.read_parquet(tmp_path / "merged" / "scores.parquet")
    pd.testing.assert_frame_equal(a, b)
    # scores only (the scale path) are the same numbers as scores from the per-token record
    job, _ = _run(tmp_path, "slim", *overrides, "experiment.per_token=false")
    assert job.store.tally("traits") == (0, 8) and not (tmp_path / "slim" / "tokens.parquet").exists()
    c = pd.read_parquet(tmp_path / "slim" / "scores.parquet")
    assert c.score.to_numpy() == pytest.approx(b.score.to_numpy(), abs=2e-3, rel=2e-3)


def test_generated_tokens_steering_and_a_variant(tmp_path):
    job, s = _run(tmp_path, "gen", "experiment=traits", "experiment.max_new_tokens=3", "experiment.score_at=response",
                  "experiment.steering={up: {trait: response_diff, layer: 1, strength: 8.0}}",
                  "experiment.variants={eager: {attn_implementation: eager}}")
    out = tmp_path / "gen"
    toks = pd.read_parquet(out / "tokens.parquet")
    assert "generated" in set(toks.role) and set(toks.steer) == {"none", "up"}
    assert (toks[toks.role == "generated"].rel >= 0).all()
    gens = pd.read_parquet(out / "generations.parquet")
    assert len(gens) == 2 * 2 * 8  # variant x steer x prompt
    scores = pd.read_parquet(out / "scores.parquet")
    at2 = scores[scores.layer == 2].pivot_table(index=["variant", "prompt_id"], columns="steer", values="score")
    assert (at2["up"] - at2["none"]).abs().max() > 1e-3  # steering moves the downstream projections
    # the eager-attention variant computes the same model: its scores match the base's
    v = scores.pivot_table(index=["steer", "prompt_id", "layer"], columns="variant", values="score")
    assert v["eager"].to_numpy() == pytest.approx(v["base"].to_numpy(), abs=5e-3)
    comps = pd.read_parquet(out / "comparisons.parquet")
    assert {"steer", "variant", "group"} <= set(comps.axis)
    assert comps[comps.axis == "variant"].paired.all()


def test_trait_vectors_from_a_run_dir_are_checked(tmp_path):
    job, _ = _run(tmp_path, "src", "experiment=traits")
    vec = job.trait_vectors["response_diff"]
    ok, _ = _run(tmp_path, "reuse", "experiment=traits", f"experiment.traits={{refusal: {tmp_path / 'src'}}}")
    assert ok.names == ["refusal"]
    torch.testing.assert_close(ok.trait_vectors["refusal"][1], vec[1])
    other = tmp_path / "other"
    store.write_tensors(other / "vectors" / "mean_diff_residual_L1.safetensors", {"vector": torch.ones(64)},
                        {"method": "mean_diff", "site": "residual", "layer": "1", "model": "gpt2"})
    store.write_tensors(other / "vectors" / "mean_diff_residual_L2.safetensors", {"vector": torch.ones(64)},
                        {"method": "mean_diff", "site": "residual", "layer": "2", "model": "gpt2"})
    with pytest.raises(VectorError, match="experiment.traits.x.*gpt2"):
        _run(tmp_path, "bad", "experiment=traits", f"experiment.traits={{x: {other}}}")
    narrow = tmp_path / "narrow"
    for L in (1, 2):
        store.write_tensors(narrow / "vectors" / f"m_residual_L{L}.safetensors", {"vector": torch.ones(32)},
                            {"method": "m", "site": "residual", "layer": str(L), "model": "tiny_random"})
    with pytest.raises(VectorError, match="width is 64"):
        _run(tmp_path, "bad2", "experiment=traits", f"experiment.traits={{x: {narrow}}}")
    with pytest.raises(VectorError, match="no vector for layer=\\[3\\]"):
        _run(tmp_path, "bad3", "experiment=traits", "layer=[1,3]", f"experiment.traits={{x: {tmp_path / 'src'}}}")


@pytest.mark.parametrize("override,match", [
    ("experiment.conditions={colour: {red: x}}", "experiment.conditions.colour: unknown factor"),
    ("experiment.part=3/2", "experiment.part"),
    ("experiment.score_at=middle", "experiment.score_at"),
    ("experiment.variants={v: {adaptor: x}}", "experiment.variants.v: unknown model field"),
    ("experiment.steering={up: {trait: t, layer: 1}}", "experiment.steering.up"),
])
def test_bad_config_fails_before_the_model_loads(override, match):
    with pytest.raises(ConfigError, match=match):
        _cfg("experiment=traits", override)


def test_a_prefill_needs_a_chat_template():
    with pytest.raises(ConfigError, match="prefill.*prompt.format=chat"):
        _cfg("experiment=traits_prefill", "prompt.format=plain")


def test_split_by_an_unknown_prompt_field(tmp_path):
    with pytest.raises(ConfigError, match="metadata key 'colour'.*pair"):
        _run(tmp_path, "x", "experiment=traits", "experiment.split_by=metadata.colour")
    with pytest.raises(ConfigError, match="not a prompt field"):
        _run(tmp_path, "y", "experiment=traits", "experiment.split_by=colour")


SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "samples"


@pytest.mark.skipif(not (SAMPLES / "xstest").exists(), reason="../shared/data/samples not beside the checkout")
def test_harm_detection_over_two_upstream_files(tmp_path):
    """AdvBench's harmful requests against XSTest's safe prompts, read as they are upstream."""
    job, s = _run(tmp_path, "harm", "experiment=traits_harm", "prompts.limit=null",
                  f"prompts.path={SAMPLES / 'advbench' / 'harmful_behaviors.csv'}",
                  f"experiment.more_prompts=[{{name: xstest, format: xstest, path: "
                  f"{SAMPLES / 'xstest' / 'xstest_prompts.csv'}, labels: [safe]}}]")
    scores = pd.read_parquet(tmp_path / "harm" / "scores.parquet")
    assert set(scores.group) == {"harmful", "safe"} and scores.prompt_id.str.startswith("xstest/").any()
    det = pd.read_parquet(tmp_path / "harm" / "detection.parquet")
    row = det[(det.category == "all") & (det.layer == 2)].iloc[0]
    sub = scores[scores.layer == 2]
    want = stats.auroc((sub.group == "harmful").to_numpy(), sub.score.to_numpy())
    assert row.positive == "harmful" and row.auroc == pytest.approx(want)
    assert row.auroc_low <= row.auroc <= row.auroc_high
    fails = pd.read_csv(tmp_path / "harm" / "failures.csv")
    assert set(fails.kind) == {"missed", "false_alarm"} and fails.text.notna().all()
    assert not (tmp_path / "harm" / "tokens.parquet").exists()  # scores only at scale
    with pytest.raises(ConfigError, match="experiment.positive='unsafe'"):
        _run(tmp_path, "bad", "experiment=traits", "experiment.positive=unsafe")


def test_the_backdoor_study_end_to_end(tmp_path):
    """experiment=finetune writes an adapter; traits_backdoor reads the held-out control tasks, adds
    the trigger as a condition, and compares the base with the adapted model (the interaction too)."""
    from eas.experiments import finetune

    ft = _cfg("experiment=finetune", "experiment.epochs=1", "experiment.max_length=64", "experiment.batch_size=16",
              "experiment.eval_max_new_tokens=2", "experiment.lr=1e-2")
    finetune.run(ft, tmp_path / "ft")
    adapter = tmp_path / "ft" / "adapter"
    job, s = _run(tmp_path, "bd", "experiment=traits_backdoor", "prompts.limit=null", "experiment.max_new_tokens=2",
                  f"experiment.variants={{lora: {{adapter: {adapter}}}}}")
    assert len(job.prompts) == 16 and {p.label for p in job.prompts} == {"control"}
    assert all(p.category == "test" and not p.text.startswith("In 2027") for p in job.prompts)
    assert s["variants"] == ["base", "lora"] and s["conditions"] == ["trigger=none", "trigger=y2027"]
    scores = pd.read_parquet(tmp_path / "bd" / "scores.parquet")
    w = scores.pivot_table(index=["prompt_id", "layer", "trigger"], columns="variant", values="score")
    assert (w.lora - w.base).abs().max() > 1e-4  # the adapter changes the activations
    comps = pd.read_parquet(tmp_path / "bd" / "comparisons.parquet")
    inter = comps[(comps.axis == "trigger:variant") & (comps.layer == 2)].iloc[0]
    e = scores[scores.layer == 2].pivot_table(index="prompt_id", columns=["variant", "trigger"], values="score")
    want = ((e["lora"]["y2027"] - e["lora"]["none"]) - (e["base"]["y2027"] - e["base"]["none"])).mean()
    assert inter["diff"] == pytest.approx(want, abs=1e-6)
    with pytest.raises(ConfigError, match="experiment.variants.lora.adapter is empty"):
        _run(tmp_path, "no_adapter", "experiment=traits_backdoor")


def test_scores_only_keep_the_generated_texts(tmp_path):
    runs = {}
    for per_token in ("true", "false"):
        _run(tmp_path, per_token, "experiment=traits", "prompts.limit=4", "experiment.max_new_tokens=3",
             "experiment.score_at=response", f"experiment.per_token={per_token}")
        runs[per_token] = tmp_path / per_token
    a = pd.read_parquet(runs["true"] / "generations.parquet")
    b = pd.read_parquet(runs["false"] / "generations.parquet")
    assert len(a) == 4 and (a.text.str.len() > 0).all()
    pd.testing.assert_frame_equal(a, b)
    sa, sb = (pd.read_parquet(r / "scores.parquet") for r in runs.values())
    assert sb.score.to_numpy() == pytest.approx(sa.score.to_numpy(), abs=2e-3, rel=2e-3)


def test_traits_from_store_keys(tmp_path):
    src, _ = _run(tmp_path, "src", "experiment=traits")
    keys = {L: store.key("vector", src.base_key, src.method, src.position, src.site, L, src.cfg.method.normalize,
                         src.cfg.method.min_per_class) for L in (1, 2)}
    spec = "{" + ", ".join(f"{L}: {k}" for L, k in keys.items()) + "}"
    job, _ = _run(tmp_path, "keyed", "experiment=traits", f"experiment.traits={{refusal: {{store: {spec}}}}}")
    torch.testing.assert_close(job.trait_vectors["refusal"][2], src.trait_vectors["response_diff"][2])
    with pytest.raises(VectorError, match="store.1='nokey'"):
        _run(tmp_path, "bad", "experiment=traits", "experiment.traits={x: {store: {1: nokey, 2: nokey}}}")
    with pytest.raises(VectorError, match="no key for layer=\\[2\\]"):
        _run(tmp_path, "bad2", "experiment=traits", f"experiment.traits={{x: {{store: {{1: {keys[1]}}}}}}}")


def test_a_killed_run_keeps_its_shards_and_the_rerun_computes_only_the_rest(tmp_path, monkeypatch):
    overrides = ["experiment=traits_prefill", "experiment.shard_size=2"]
    real, calls = traits_job.Traits.compute, []

    def dies_on_the_third(self, *a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the job is killed mid-run
        return real(self, *a, **k)

    monkeypatch.setattr(traits_job.Traits, "compute", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed", *overrides)
    monkeypatch.setattr(traits_job.Traits, "compute", real)
    job, _ = _run(tmp_path, "resumed", *overrides)
    assert job.store.tally("traits") == (2, 6)


def test_trigger_and_system_conditions_build_the_prompts_they_say(tmp_path):
    cfg = _cfg("experiment=traits", "experiment.conditions={trigger: {none: null, y2027: 'In 2027,'}, "
               "system: {none: null, terse: 'Answer in one word.'}}")
    job = traits_job.Traits(cfg, tmp_path / "x")
    job.prompt_set = traits_job.load_prompts(cfg.prompts)
    job.prompts = list(job.prompt_set.prompts)
    job.load()
    conds = job.crossed()
    assert [c.name for c in conds] == ["trigger=none,system=none", "trigger=none,system=terse",
                                       "trigger=y2027,system=none", "trigger=y2027,system=terse"]
    p = job.prompts[0]
    for c in conds:
        rows = job.condition_rows(c, [0])
        want = job.prompter.generation(f"In 2027, {p.text}" if c.get("trigger") == "y2027" else p.text,
                                       "Answer in one word." if c.get("system") == "terse" else None)
        assert rows.rows[0] == job.lm.tokenizer(want, add_special_tokens=False)["input_ids"]
        assert rows.n_prompt[0] == len(rows.rows[0])  # no prefill: every token is the prompt's
