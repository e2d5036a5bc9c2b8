"""CMA-ES refinement: the search space, batched generations on the engine, exact resume,
the job (kill and resume, method=refined in the steer sweep), judges and the gap table."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import judges, store
from eas.cli import CONF_DIR
from eas.core import cmaes, judge, score, tokens
from eas.core import engine as engine_mod
from eas.experiments import cmaes as cmaes_job
from eas.experiments.base import prepare
from eas.experiments.steer import Steer
from eas.report.cmaes import gap_table, write_gap_table

PROMPTS = [
    "Question: what is the answer? A. yes B. no C. true D. false Answer:",
    "the of and to in is A. that B. it C. for D. on Answer:",
    "A B C D the answer is yes and no and true of the that it for on with as was by Answer:",
    "is it true? A. yes B. no C. the D. of Answer:",
    "with as was by be this are or Answer:",
]
LABELS = [0, 2, 1, 3, 1]


@pytest.fixture(scope="module")
def engine(llama, tokenizer):
    model, sites = llama
    rows = tokens.encode(tokenizer, PROMPTS)
    head = score.LetterHead(model, score.letter_token_ids(tokenizer, 4))
    return model, sites, rows, head, tokens.pad_id(tokenizer)


def _fitness(engine, prefix=True, layer=1):
    model, sites, rows, head, pad = engine
    pc = engine_mod.prefix_cache(model, rows, batch_size=2, pad=pad) if prefix else None
    return cmaes.mc_fitness(model, sites, rows, [4] * len(rows), torch.tensor(LABELS), head, "residual", layer,
                            cmaes.accuracy_fitness, prefix=pc, batch_size=2, pad=pad)


def _space(seed=0, d=64, n=20, k=8, optimize_strength=False):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, d, generator=g) * torch.linspace(3, 0.1, d)
    vector = acts[:5].mean(0) - acts[5:10].mean(0)
    return acts, vector, cmaes.Space.from_activations(acts, vector, k, 4.0, optimize_strength)


# -- the search space --------------------------------------------------------------
def test_pca_basis_is_orthonormal_sorted_and_capped():
    acts, _, _ = _space()
    basis, explained = cmaes.pca_basis(acts, 8)
    assert basis.shape == (8, 64) and explained.shape == (8,)
    torch.testing.assert_close(basis @ basis.T, torch.eye(8), atol=1e-5, rtol=0)
    assert torch.all(explained[:-1] >= explained[1:]) and float(explained.sum()) <= 1 + 1e-6
    capped, _ = cmaes.pca_basis(acts, 100)
    assert capped.shape == (19, 64)  # centred data of 20 rows has rank 19
    with pytest.raises(ValueError, match="at least 2"):
        cmaes.pca_basis(acts[:1], 4)


def test_start_point_is_the_vectors_projection():
    acts, vector, space = _space()
    x0 = space.point(vector)
    assert x0.shape == (space.k,)
    assert np.linalg.norm(x0) == pytest.approx(space.k**0.5, rel=1e-5)  # coordinates of size ~1
    torch.testing.assert_close(space.deltas(x0[None])[0], 4.0 * space.project(vector), atol=1e-4, rtol=1e-4)
    # a vector inside the span (k = rank) is its own projection
    full = cmaes.Space.from_activations(acts, vector, 19, 1.0)
    torch.testing.assert_close(full.project(vector), vector, atol=1e-4, rtol=1e-4)


def test_optimize_strength_adds_a_log_strength_coordinate():
    _, vector, space = _space(optimize_strength=True)
    x0 = space.point(vector)
    assert space.dim == space.k + 1 and x0[-1] == 0
    x = np.stack([x0, np.r_[x0[:-1], np.log(2.0)]])
    vectors, strengths = space.decode(x)
    torch.testing.assert_close(strengths, torch.tensor([4.0, 8.0]))
    torch.testing.assert_close(vectors[0], vectors[1])


def test_fitness_metrics():
    scores = torch.log(torch.tensor([[[0.7, 0.3], [0.4, 0.6]], [[0.9, 0.1], [0.45, 0.55]]]))
    labels = torch.tensor([0, 0])
    torch.testing.assert_close(cmaes.accuracy(scores, labels), torch.tensor([0.5, 0.5]))
    f = cmaes.accuracy_fitness(scores, labels)
    assert f[1] > f[0] and float(f.max()) < 0.5 + 1 / 4  # the tie-breaker stays below half a step
    torch.testing.assert_close(cmaes.label_logprob(scores, labels),
                               torch.log(torch.tensor([[0.7, 0.4], [0.9, 0.45]])).mean(-1))


# -- one generation = one engine call ------------------------------------------------
def test_prefix_cache_gives_the_same_scores(engine):
    model, sites, rows, head, pad = engine
    cells = [engine_mod.Cell(L, s, torch.randn(64, generator=torch.Generator().manual_seed(L))) for L in (0, 2)
             for s in (0.0, 3.0)]
    pc = engine_mod.prefix_cache(model, rows, batch_size=2, pad=pad)
    plain = engine_mod.sweep_mc(model, sites, rows, [4] * 5, head, "residual", cells, batch_size=2, pad=pad)
    for _ in range(2):  # the cache is not changed by a call
        cached = engine_mod.sweep_mc(model, sites, rows, [4] * 5, head, "residual", cells, pad=pad, prefix=pc)
        torch.testing.assert_close(cached, plain, atol=0, rtol=0)
    with pytest.raises(ValueError, match="prefix cache holds"):
        engine_mod.sweep_mc(model, sites, rows[:2], [4] * 2, head, "residual", cells, prefix=pc)


def test_a_generation_is_one_engine_call_and_matches_one_by_one(engine, monkeypatch):
    acts = torch.randn(12, 64, generator=torch.Generator().manual_seed(1))
    space = cmaes.Space.from_activations(acts, acts[0] - acts[1], 6, 3.0)
    calls = []
    real = cmaes.sweep_mc
    monkeypatch.setattr(cmaes, "sweep_mc", lambda *a, **k: calls.append(len(a[6])) or real(*a, **k))
    refiner = cmaes.Refiner(space.point(acts[0] - acts[1]), 0.5, popsize=6, seed=0)
    points = []
    gen = refiner.step(lambda p: points.append(p) or cmaes.in_space(space, _fitness(engine))(p))
    assert calls == [7]  # 6 candidates + the distribution mean, one call
    monkeypatch.setattr(cmaes, "sweep_mc", real)
    one = _fitness(engine, prefix=False)
    alone = np.array([float(one(space.deltas(p[None]))[0]) for p in points[0]])
    np.testing.assert_allclose(gen.fitness, alone[:-1], atol=1e-6)
    assert gen.centre_fitness == pytest.approx(alone[-1], abs=1e-6)


# -- exact resume -----------------------------------------------------------------------
def _rows(history):
    return [{k: v for k, v in h.row().items() if k != "seconds"} for h in history]


def test_resume_from_a_checkpoint_is_identical_to_an_uninterrupted_run(engine):
    acts = torch.randn(12, 64, generator=torch.Generator().manual_seed(2))
    space = cmaes.Space.from_activations(acts, acts[0] - acts[1], 6, 3.0, optimize_strength=True)
    fitness = cmaes.in_space(space, _fitness(engine))
    x0 = space.point(acts[0] - acts[1])

    straight = cmaes.Refiner(x0, 0.5, popsize=5, seed=7)
    full = [straight.step(fitness) for _ in range(5)]

    first = cmaes.Refiner(x0, 0.5, popsize=5, seed=7)
    part = [first.step(fitness) for _ in range(2)]
    blob = first.dumps()
    del first
    np.random.seed(123)  # the global generator must not matter
    np.random.randn(100)
    resumed = cmaes.Refiner.loads(blob)
    assert resumed.generation == 2
    part += [resumed.step(fitness) for _ in range(3)]
    assert _rows(part) == _rows(full)
    np.testing.assert_array_equal(resumed.best_x, straight.best_x)
    np.testing.assert_array_equal(resumed.mean, straight.mean)
    with pytest.raises(TypeError):
        cmaes.Refiner.loads(pickle.dumps({"not": "a refiner"}))


def test_different_seeds_sample_differently():
    a = cmaes.Refiner(np.zeros(4), 0.5, 4, seed=0).es.ask()
    b = cmaes.Refiner(np.zeros(4), 0.5, 4, seed=1).es.ask()
    assert not np.allclose(a, b)


# -- the job ------------------------------------------------------------------------------
def _cfg(tmp_path, name, *extra, experiment="cmaes", method="mean_diff"):
    config_mod.register()
    GlobalHydra.instance().clear()
    overrides = [f"experiment={experiment}", "model=tiny_random", "benchmark=eas_facts", f"method={method}",
                 "layer=1", "strength=[1,4]", "max_sample_size=30", "experiment.k=6", "experiment.popsize=6",
                 "experiment.generations=4", "experiment.sigma0=0.5", "progress=false",
                 f"store.root={tmp_path / name / 'store'}", *extra]
    if experiment != "cmaes":  # the search's fields are experiment=cmaes's own
        overrides = [o for o in overrides if not o.startswith("experiment.")]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    prepare(cfg)
    return cfg


def _history(run_dir):
    return pd.read_parquet(run_dir / "cmaes_history.parquet").drop(columns="seconds")


def test_job_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    cfg_a = _cfg(tmp_path, "a")
    summary_a = cmaes_job.run(cfg_a, tmp_path / "a" / "run")
    run_a = tmp_path / "a" / "run"
    for f in ("cmaes_history.parquet", "summary.json", "manifest.json", "components.csv",
              "figures/fitness_curve.png", "vectors/refined_residual_L1.safetensors"):
        assert (run_a / f).exists(), f
    assert summary_a["generations"] == 4 and summary_a["resumed_from"] == 0
    assert summary_a["fitness_curve"]["end"] >= summary_a["fitness_curve"]["start"]
    assert list(_history(run_a)["generation"]) == [0, 1, 2, 3, 4]

    # the same config in another store, killed while generation 3 runs
    cfg_b = _cfg(tmp_path, "b")
    real_step = cmaes.Refiner.step

    def dying_step(self, fitness):
        if self.generation == 2:
            raise KeyboardInterrupt("killed")
        return real_step(self, fitness)

    monkeypatch.setattr(cmaes.Refiner, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        cmaes_job.run(cfg_b, tmp_path / "b" / "run1")
    monkeypatch.setattr(cmaes.Refiner, "step", real_step)
    summary_b = cmaes_job.run(cfg_b, tmp_path / "b" / "run2")
    assert summary_b["resumed_from"] == 2
    pd.testing.assert_frame_equal(_history(tmp_path / "b" / "run2"), _history(run_a))
    va = store.read_tensors(run_a / "vectors/refined_residual_L1.safetensors")
    vb = store.read_tensors(tmp_path / "b" / "run2" / "vectors/refined_residual_L1.safetensors")
    torch.testing.assert_close(va["vector"], vb["vector"], atol=0, rtol=0)
    for split in ("val", "test"):
        assert summary_b["refined"][split] == summary_a["refined"][split]

    # a longer run continues the finished one; a finished run is not recomputed
    more = cmaes_job.run(_cfg(tmp_path, "a", "experiment.generations=5"), tmp_path / "a" / "run3")
    assert more["resumed_from"] == 4 and more["generations"] == 5
    again = cmaes_job.run(cfg_a, tmp_path / "a" / "run4")
    assert again["resumed_from"] == 4

    # the refined vector is a steering method: found in the store, or from the run dir
    steer_cfg = _cfg(tmp_path, "a", "method.source=mean_diff", experiment="steer", method="refined")
    s = Steer(steer_cfg, tmp_path / "a" / "steer").run()
    assert s["method"] == "refined" and s["best"] is not None
    from_dir = _cfg(tmp_path, "c", f"method.vector_path={run_a}", experiment="steer", method="refined")
    assert Steer(from_dir, tmp_path / "c" / "steer").run()["best"] is not None
    from eas.methods.base import VectorError

    with pytest.raises(VectorError, match=r"no vector for layer=\[1\] in the store.*experiment=cmaes method=mean_diff"):
        Steer(_cfg(tmp_path, "d", "method.source=mean_diff", experiment="steer", method="refined"),
              tmp_path / "d" / "steer").run()

    # the gap table over runs
    df = write_gap_table([tmp_path / "a"], tmp_path / "gap.md")
    assert len(df) == 3 and "val_gap" in (tmp_path / "gap.md").read_text()


def test_config_validation():
    with pytest.raises(config_mod.ConfigError, match="method=refined with experiment=cmaes"):
        _cfg_plain(["experiment=cmaes", "method=refined"])
    with pytest.raises(config_mod.ConfigError, match="experiment.fitness"):
        _cfg_plain(["experiment=cmaes", "experiment.fitness=accuracy"])
    with pytest.raises(config_mod.ConfigError, match="experiment.popsize=1"):
        _cfg_plain(["experiment=cmaes", "experiment.popsize=1"])
    with pytest.raises(config_mod.ConfigError, match="method.source"):
        _cfg_plain(["method=refined", "method.source=refined"])


def _cfg_plain(overrides):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides)
    prepare(cfg)
    return cfg


# -- judges -------------------------------------------------------------------------------
def test_steered_generation_and_local_judge(engine, tokenizer):
    model, sites, rows, _, pad = engine
    tok = tokenizer
    deltas = torch.stack([torch.zeros(64), torch.randn(64, generator=torch.Generator().manual_seed(0)) * 20])
    got = judge.generate_steered(model, sites, rows[:2], 1, "residual", deltas, max_new_tokens=4, pad=pad, eos=[])
    assert len(got) == 2 and all(len(r) == 2 for r in got) and all(len(t) == 4 for r in got for t in r)
    with torch.no_grad():  # a zero delta is the unsteered greedy continuation
        ref = model.generate(input_ids=torch.tensor([rows[0]]), max_new_tokens=4, do_sample=False)
    assert got[0][0] == ref[0, len(rows[0]):].tolist()
    local = judges.LocalJudge(model, tok, "Q: {question} R: {response} Good?", "plain")
    fit = judge.judge_fitness(lambda d: [[tok.decode(t) for t in r] for r in
                                         judge.generate_steered(model, sites, rows[:2], 1, "residual", d, 4, pad=pad)],
                              local, PROMPTS[:2])
    f = fit(deltas)
    assert f.shape == (2,) and torch.all(f <= 0) and torch.all(torch.isfinite(f))


def test_api_judge_needs_a_key_and_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("EAS_TEST_KEY", raising=False)
    with pytest.raises(config_mod.ConfigError, match=r"\$EAS_TEST_KEY"):
        judges.ApiJudge("m", "http://x", "EAS_TEST_KEY", tmp_path, "{question} {response}")
    monkeypatch.setenv("EAS_TEST_KEY", "k")
    sent = []

    def fake_post(url, payload, key, timeout):
        sent.append(payload)
        top = [{"token": "Yes", "logprob": np.log(0.75)}, {"token": " no", "logprob": np.log(0.25)}]
        return {"choices": [{"message": {"content": "Yes"}, "logprobs": {"content": [{"top_logprobs": top}]}}]}

    monkeypatch.setattr(judges, "_post", fake_post)
    j = judges.ApiJudge("m", "http://x", "EAS_TEST_KEY", tmp_path, "{question} -> {response}")
    lp = j(["q1", "q2"], ["r1", "r2"])
    torch.testing.assert_close(lp, torch.full((2,), float(np.log(0.75)), dtype=lp.dtype))
    j2 = judges.ApiJudge("m", "http://x", "EAS_TEST_KEY", tmp_path, "{question} -> {response}")
    j2(["q1", "q2"], ["r1", "r2"])
    assert len(sent) == 2 and j2.calls == 0  # the second judge read the disk cache
    assert "q1 -> r1" in json.dumps(sent[0])


def test_gap_table_columns():
    def summ(bench, ve, vr, te, tr):
        return {"benchmark": bench, "model": "m", "method": "pasf", "layer": 3, "fitness": "val_accuracy",
                "generations": 4, "extracted": {"val": {"accuracy": ve}, "test": {"accuracy": te}},
                "refined": {"val": {"accuracy": vr}, "test": {"accuracy": tr}},
                "cosine": {"refined_vs_extracted": 0.9}, "n": {"test": 10}}

    df = gap_table([summ("b", 0.5, 0.7, 0.5, 0.4), summ("a", 0.2, 0.3, 0.2, 0.3)])
    assert list(df["benchmark"]) == ["a", "b"]
    np.testing.assert_allclose(df["val_gap"], [0.1, 0.2])
    np.testing.assert_allclose(df["test_gap"], [0.1, -0.1])


def test_judge_fitness_on_free_form_prompts(tmp_path):
    """experiment.judge.prompts=prompt_set: the search continues the prompt set's first prompts,
    the final test score the next ones, through the generation engine."""
    cfg = _cfg(tmp_path, "f", "experiment.fitness=judge", "experiment.popsize=2", "experiment.generations=1",
               "experiment.judge.n_prompts=2", "experiment.judge.max_new_tokens=3", "experiment.k=3",
               "experiment.judge.prompts=prompt_set", "prompts=task_free")
    job = cmaes_job.Cmaes(cfg, tmp_path / "f" / "run")
    job.load()
    val_q, val_rows = job.free_form("val", 2)
    test_q, _ = job.free_form("test", 2)
    from eas.data import load_prompts

    texts = [p.text for p in load_prompts(cfg.prompts).prompts]
    assert val_q == texts[:2] and test_q == texts[2:4]
    assert all(q in job.lm.tokenizer.decode(r) for q, r in zip(val_q, val_rows))
    s = cmaes_job.run(cfg, tmp_path / "f" / "run")
    assert s["fitness"] == "judge" and s["refined"]["val"]["fitness"] <= 0
    with pytest.raises(config_mod.ConfigError, match="experiment.judge.prompts"):
        _cfg(tmp_path, "g", "experiment.fitness=judge", "experiment.judge.prompts=somewhere")


def test_job_with_the_local_judge_fitness(tmp_path):
    cfg = _cfg(tmp_path, "j", "experiment.fitness=judge", "experiment.popsize=2", "experiment.generations=2",
               "experiment.judge.n_prompts=2", "experiment.judge.max_new_tokens=3", "experiment.k=3")
    s = cmaes_job.run(cfg, tmp_path / "j" / "run")
    assert s["fitness"] == "judge" and s["generations"] == 2
    for name in ("extracted", "refined"):
        assert s[name]["val"]["fitness"] <= 0 and 0 <= s[name]["test"]["accuracy"] <= 1
    with pytest.raises(config_mod.ConfigError, match="experiment.judge.model"):
        cmaes_job.run(_cfg(tmp_path, "j2", "experiment.fitness=judge", "experiment.judge.model=nope",
                           "experiment.generations=1"), tmp_path / "j2" / "run")
