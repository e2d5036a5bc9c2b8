"""experiment=generate on the tiny random model: outputs, store reuse and resume, the engine
wired as the naive reference runs it, the curve statistics, a scorer that fails, bad input."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import models, store
from eas.cli import CONF_DIR
from eas.config import ConfigError
from eas.core import generate as gen
from eas.core import stats, tokens
from eas.data.schema import DataError
from eas.experiments import generate as generate_job
from eas.experiments.base import prepare
from eas.prompts import Prompter

FAST = ["model=tiny_random", "experiment=generate", "progress=false", "layer=[1,2]", "strength=[8.0]",
        "prompts.limit=4", "experiment.max_new_tokens=6", "experiment.prompts_per_chunk=3",
        "experiment.sample_sheet_prompts=2",
        "~experiment.scorers", "+experiment.scorers={length: {}, repetition: {}, perplexity: {}, sentiment: {}, refusal: {}}",
        "experiment.success.column=length_tokens", "experiment.success.threshold=5"]


def _cfg(*overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        mine = {o.split("=")[0].lstrip("~+") for o in overrides}  # a test's own value replaces FAST's
        cfg = compose("config", overrides=[*(o for o in FAST if o.split("=")[0].lstrip("~+") not in mine), *overrides])
    prepare(cfg)
    return cfg


def _store_files(tmp_path: Path, kind: str = "") -> set[Path]:
    return {p for p in (tmp_path / "store" / kind).rglob("*") if p.is_file()}


def test_generate_writes_everything_and_reruns_from_the_store(tmp_path):
    cfg = _cfg()
    run = tmp_path / "run"
    s = generate_job.run(cfg, run)
    assert "error" not in s and s["n_prompts"] == 4 and s["cells"] == 3
    g = pd.read_parquet(run / "generations.parquet")
    assert len(g) == 4 * 3 and set(g.cell) == {"unsteered", "L1_s8", "L2_s8"}
    for col in ("text", "n_tokens", "length_tokens", "repetition", "distinct_1", "perplexity", "sentiment",
                "refusal"):
        assert col in g.columns and g[col].notna().all(), col
    assert (g.n_tokens == g.length_tokens).all() and g.n_tokens.between(0, 6).all()
    assert (g.perplexity >= 1).all()
    # steering at strength 8 changes what the tiny model says
    by = g.pivot(index="prompt_id", columns="cell", values="text")
    assert (by["L1_s8"] != by["unsteered"]).any() and (by["L2_s8"] != by["unsteered"]).any()
    curves = pd.read_parquet(run / "results.parquet")
    assert len(curves) == 2 * 2  # layers x (unsteered at 0, strength 8)
    assert ((curves.success_low <= curves.success_rate) & (curves.success_rate <= curves.success_high)).all()
    for _, r in curves.iterrows():
        cell = g[g.cell == r.cell]
        assert r.n == 4 and r.successes == int((cell.length_tokens > 5).sum())
        assert r.mean_sentiment == pytest.approx(cell.sentiment.mean())
    sheet = (run / "sample_sheet.md").read_text()
    shown = list(g.prompt_id.unique()[:2])
    assert all(f"## {pid}" in sheet for pid in shown) and "| L2_s8 |" in sheet
    assert f"## {g.prompt_id.unique()[2]}" not in sheet
    for name in ("success_curve.png", "success_heatmap.png", "fluency.png"):
        assert (run / "figures" / name).stat().st_size > 1000
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["config"]["experiment"]["name"] == "generate"

    before = _store_files(tmp_path)
    again = generate_job.run(cfg, tmp_path / "run2")
    assert _store_files(tmp_path) == before  # nothing generated or scored twice
    g2 = pd.read_parquet(tmp_path / "run2" / "generations.parquet")
    pd.testing.assert_frame_equal(g.drop(columns=[]), g2)
    assert again["curve"] == s["curve"]


def test_generations_are_the_naive_reference_s(tmp_path):
    """The job's texts for a steered cell are what one-cell, batch-1 HF generate with a plain hook gives."""
    cfg = _cfg("experiment.steer_on=generated")
    run = tmp_path / "run"
    generate_job.run(cfg, run)
    g = pd.read_parquet(run / "generations.parquet")
    lm = models.load(cfg.model, seed=0)
    vec = store.read_tensors(run / "vectors" / "response_diff_residual_L2.safetensors")["vector"]
    prompter = Prompter(lm.tokenizer, cfg.prompt.format, cfg.prompt.system, cfg.prompt.instruction)
    ids = list(g.prompt_id.unique())
    from eas.data import load_prompts

    prompts = [p for p in load_prompts(cfg.prompts).prompts if p.id in ids]
    rows = tokens.encode(lm.tokenizer, [prompter.generation(p.text, "") for p in prompts],
                         prompter.add_special_tokens)
    eos = lm.model.generation_config.eos_token_id
    naive = gen.naive_generate(lm.model, lm.sites, rows, "residual", [gen.GenCell(2, 8.0, vec)],
                               gen.Sampling(max_new_tokens=6), steer_on="generated", eos=eos,
                               pad=tokens.pad_id(lm.tokenizer))
    want = [lm.tokenizer.decode(t, skip_special_tokens=True).strip() for t in naive[0]]
    got = g[g.cell == "L2_s8"].set_index("prompt_id").loc[[p.id for p in prompts], "text"].tolist()
    assert got == want


def test_curve_statistics():
    rows = [{"strength": 0.0, "p_holm": 1.0, "success_rate": 0.1},
            {"strength": 2.0, "p_holm": 0.2, "success_rate": 0.3},
            {"strength": 4.0, "p_holm": 0.01, "success_rate": 0.8},
            {"strength": 8.0, "p_holm": 0.001, "success_rate": 0.9}]
    assert generate_job._elbow(rows, 0.05) == 4.0
    assert generate_job._elbow(rows, 0.005) == 8.0
    assert generate_job._elbow(rows, 0.0001) is None
    # the elbow's test: gains over the same prompts, one-sided
    before = [False] * 10
    after = [True] * 6 + [False] * 4
    assert stats.mcnemar(before, after, exact=True, alternative="greater").p_value == pytest.approx(0.5 ** 6)


FLAKY = '''
from eas.scorers.base import Context

CALLS = {"n": 0}


def make(params, ctx: Context):
    def score(samples):
        CALLS["n"] += 1
        if params.get("fail_after") is not None and CALLS["n"] > params["fail_after"]:
            raise RuntimeError("the judge went away")
        return {"flaky": [float(len(s.response)) for s in samples]}
    return score
'''


def test_a_scorer_that_fails_keeps_every_generation_and_a_rerun_resumes(tmp_path, monkeypatch):
    (tmp_path / "lab" / "lab_scorers").mkdir(parents=True)
    (tmp_path / "lab" / "lab_scorers" / "__init__.py").write_text("")
    (tmp_path / "lab" / "lab_scorers" / "flaky.py").write_text(textwrap.dedent(FLAKY))
    monkeypatch.syspath_prepend(str(tmp_path / "lab"))
    sys.modules.pop("lab_scorers.flaky", None)
    cfg = _cfg("~experiment.scorers", "+experiment.scorers={length: {}, flaky: {scorer: lab_scorers.flaky, fail_after: 2}}")
    s = generate_job.run(cfg, tmp_path / "run")
    assert "flaky" in s["error"] and s["failed_scorers"][0]["scorer"] == "flaky"
    gens = _store_files(tmp_path, "generations")
    assert len(gens) == 2 * 3  # 2 chunks (3 + 1 prompts) x 3 cells: all kept
    scored = _store_files(tmp_path, "scores")
    sys.modules.pop("lab_scorers.flaky", None)
    cfg = _cfg("~experiment.scorers", "+experiment.scorers={length: {}, flaky: {scorer: lab_scorers.flaky, fail_after: null}}")
    s = generate_job.run(cfg, tmp_path / "run2")
    assert "error" not in s
    assert _store_files(tmp_path, "generations") == gens  # nothing generated again
    assert scored < _store_files(tmp_path, "scores")
    from lab_scorers import flaky

    # the fixed params are another scorer version: all 6 records scored, none from the failed run
    assert flaky.CALLS["n"] == 6


def test_bad_input_fails_before_generating(tmp_path):
    with pytest.raises(ConfigError, match="experiment.steer_on"):
        _cfg("experiment.steer_on=everywhere")
    with pytest.raises(ConfigError, match="experiment.samples=2 with experiment.temperature=0"):
        _cfg("experiment.samples=2")
    with pytest.raises(ConfigError, match="experiment.scorers"):
        _cfg("+experiment.scorers.no_such_scorer={}")
    with pytest.raises(ConfigError, match="experiment.instruction is empty"):
        _cfg("experiment.conditions=[none,instruction]", "experiment.instruction=''")
    with pytest.raises(ConfigError, match="experiment.success.column='judge' is not a column.*length_tokens"):
        _cfg("experiment.success.column=judge")
    with pytest.raises(ConfigError, match="experiment.engine='hf' is not allowed"):
        _cfg("experiment.engine=hf")
    with pytest.raises(ConfigError, match="experiment.engine=vllm steers steer_target=residual only"):
        _cfg("experiment.engine=vllm", "steer_target=mlp")
    with pytest.raises(ConfigError, match="model.source=random has none"):
        _cfg("experiment.engine=vllm")
    cfg = _cfg("experiment.max_new_tokens=1020")
    with pytest.raises(DataError, match="max_new_tokens=1020.*context is 1024"):
        generate_job.run(cfg, tmp_path / "run2")
    assert not _store_files(tmp_path, "generations")


def test_every_generate_preset_composes():
    config_mod.register()
    for preset in ("generate", "alpha_sweep", "negative_steering", "scenarios", "editing_vs_prompting"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=["model=tiny_random", f"experiment={preset}"])
        prepare(cfg)
        assert cfg.experiment.name == "generate" and cfg.experiment.preset == preset
        if preset == "negative_steering":
            assert list(cfg.strength) == [-2.0, -4.0, -8.0]
        if preset == "editing_vs_prompting":
            assert cfg.benchmark.name == "pairs_formality" and cfg.prompts.name == "neutral"


def test_patched_condition_writes_the_instruction_run_in_at_the_last_prompt_token(tmp_path):
    """Behaviour editing by patching vs prompting: at strength 1 the patched cell writes the
    instruction run's block output at the last prompt token. At the last block that output is the
    one the first new token is read from, so the first token is the instruction run's."""
    cfg = _cfg("layer=[3]", "strength=[1.0]", "experiment.conditions=[none,instruction,patched]",
               "experiment.instruction='Be kind to everyone you meet today.'", "experiment.max_new_tokens=4")
    generate_job.run(cfg, tmp_path / "run")
    df = pd.read_parquet(tmp_path / "run" / "generations.parquet")
    job = generate_job.Generate(cfg, tmp_path / "again")
    job.load()
    job.prompts = list(generate_job.load_prompts(cfg.prompts).prompts)
    job.rows_by_condition = {c: job.prompt_rows(c) for c in cfg.experiment.conditions}
    tok = job.lm.tokenizer
    cells, firsts, differ = 0, 0, 0
    for p in job.prompts:
        rows = df[df.prompt_id == p.id].set_index(["condition", "cell"])
        assert rows.loc[("patched", "unsteered"), "text"] == rows.loc[("none", "unsteered"), "text"]
        patched = tok(rows.loc[("patched", "L3_s1"), "text"], add_special_tokens=False)["input_ids"]
        instructed = tok(rows.loc[("instruction", "unsteered"), "text"], add_special_tokens=False)["input_ids"]
        plain = tok(rows.loc[("none", "unsteered"), "text"], add_special_tokens=False)["input_ids"]
        cells += 1
        firsts += bool(patched and instructed and patched[0] == instructed[0])
        differ += bool(plain and instructed and plain[0] != instructed[0])
    assert firsts == cells
    assert differ > 0  # the test can fail: the instruction changes some first token, and the patch carries it
    # and the store holds the patched cells apart from the additive ones
    job.vec_ids = {3: "the vector"}
    keys = {job.gen_key("patched", ("L3_s1", 3, 1.0), 0, [0]), job.gen_key("none", ("L3_s1", 3, 1.0), 0, [0])}
    assert len(keys) == 2
    with pytest.raises(ConfigError, match="'patched' but experiment.instruction is empty"):
        _cfg("experiment.conditions=[none,patched]", "experiment.instruction=''")
