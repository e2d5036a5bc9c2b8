"""experiment=similarity on tiny random models: a model against itself (CKA 1 on the diagonal), two
models of other widths and depths, the numbers against eas.core.similarity on activations captured by
hand, vector transfer (and its use on the target: steering accuracy against unsteered and a random
control), store reuse and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from eas import config as config_mod
from eas import store
from eas.cli import CONF_DIR
from eas.config import ConfigError
from eas.core import similarity as S
from eas.core.sites import ModelError
from eas.experiments import similarity as sim_job
from eas.experiments.base import prepare
from eas.methods.base import VectorError

FAST = ["model=tiny_random", "experiment=similarity", "progress=false", "experiment.max_texts=16",
        "experiment.n_bootstrap=100", "experiment.n_permutations=20"]
# a second tiny model: narrower (48) and shallower (3 blocks) than tiny_random (64, 4)
NARROW = ("{name: tiny_narrow, source: random, architecture: llama, random_config: {hidden_size: 48, "
          "intermediate_size: 96, num_hidden_layers: 3, num_attention_heads: 4, num_key_value_heads: 2, "
          "vocab_size: 400, max_position_embeddings: 1024}}")


def _cfg(*overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        models = [] if any(o.startswith("experiment.models=") for o in overrides) else \
            ["experiment.models=[tiny_random]"]  # the default pair's embedded models are not for unit tests
        cfg = compose("config", overrides=[*FAST, *models, *overrides])
    prepare(cfg)
    return cfg


def _records(tmp_path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()}


@torch.no_grad()
def _by_hand(job: sim_job.Similarity, mcfg) -> np.ndarray:
    """``[block, text, d]``: every block's output at the last token of each plain text, one text per forward
    (block l's output is hidden_states[l + 1]; the last one, normed there, from a hook)."""
    from eas import models

    lm = models.load(mcfg, seed=0)
    out = []
    for text in job.texts:
        ids = lm.tokenizer(text, add_special_tokens=True)["input_ids"]
        seen: dict[str, torch.Tensor] = {}

        def keep(_m, _a, o, seen=seen):
            seen["last"] = o[0] if isinstance(o, tuple) else o

        h = lm.sites.blocks[-1].register_forward_hook(keep)
        try:
            hs = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        finally:
            h.remove()
        rows = [hs[layer + 1][0, -1] for layer in range(lm.sites.n_layers - 1)] + [seen["last"][0, -1]]
        out.append(torch.stack(rows).double().numpy())
    return np.stack(out, axis=1)


def test_a_model_against_itself_has_cka_one_on_the_diagonal(tmp_path):
    cfg = _cfg("experiment.models=[tiny_random,tiny_random]", "experiment.projection=all")
    job = sim_job.Similarity(cfg, tmp_path / "run")
    s = job.run()
    for f in ("results.parquet", "projection.parquet", "summary.json", "manifest.json",
              "figures/cka_tiny_random#1__tiny_random#2.png", "figures/projection_tiny_random#1__tiny_random#2.png"):
        assert (tmp_path / "run" / f).exists(), f
    assert [m["label"] for m in s["models"]] == ["tiny_random#1", "tiny_random#2"]
    assert s["n_texts"] == 16 and s["n_train"] == 8 and s["n_test"] == 8
    cka = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(cka) == 16
    diag = cka[cka.layer_a == cka.layer_b]
    assert diag.cka.to_numpy() == pytest.approx(1.0, abs=1e-6)
    assert s["pairs"][0]["cka_diagonal_mean"] == pytest.approx(1.0, abs=1e-6)
    # the job's numbers against eas.core.similarity on activations captured by hand
    acts = _by_hand(job, cfg.model)
    m = cka.pivot(index="layer_a", columns="layer_b", values="cka").to_numpy()
    assert m == pytest.approx(S.cka_matrix(list(acts), list(acts)), abs=1e-5)
    proj = pd.read_parquet(tmp_path / "run" / "projection.parquet")
    assert len(proj) == 16
    tr, te = job.train, job.test
    assert sorted([*tr, *te]) == list(range(16)) and not set(tr) & set(te)
    for row in proj.itertuples():
        X, Y = acts[row.layer_a], acts[row.layer_b]
        want = S.projection_correlation(X[tr], Y[tr], X[te], Y[te], ridge=1.0).correlation
        assert row.correlation == pytest.approx(want, abs=1e-4)
        assert row.low <= row.correlation <= row.high and 0 < row.p_value <= 1
    same = proj[proj.layer_a == proj.layer_b]
    assert (same.correlation > same.null_q95).all()  # a map of a layer onto itself beats shuffled pairing


def test_two_models_of_other_widths_and_depths_and_vector_transfer(tmp_path):
    vecs = tmp_path / "vecs"
    for layer in (1, 2):
        store.write_tensors(vecs / "vectors" / f"pasf_residual_L{layer}.safetensors", {"vector": torch.randn(64)},
                            {"method": "pasf", "site": "residual", "layer": str(layer), "model": "tiny_random"})
    cfg = _cfg(f"experiment.models=[tiny_random,{NARROW}]", "experiment.debiased=true",
               f"experiment.vector_path={vecs}")
    job = sim_job.Similarity(cfg, tmp_path / "run")
    s = job.run()
    assert [(m["n_layers"], m["d_model"]) for m in s["models"]] == [(4, 64), (3, 48)]
    cka = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(cka) == 4 * 3 and cka.cka.between(-1, 1).all()
    a = _by_hand(job, cfg.model)
    b = _by_hand(job, sim_job.model_configs(cfg)[1])
    one = cka[(cka.layer_a == 1) & (cka.layer_b == 2)].cka.iloc[0]
    assert one == pytest.approx(S.linear_cka(a[1], b[2], debiased=True), abs=1e-5)
    proj = pd.read_parquet(tmp_path / "run" / "projection.parquet")
    assert list(proj.layer_a) == [0, 1, 2, 3]  # best_per_layer: each layer of a with b's best-CKA layer
    for row in proj.itertuples():
        best = cka[cka.layer_a == row.layer_a].sort_values("cka").layer_b.iloc[-1]
        assert row.layer_b == best and row.verdict in ("PASS", "FAIL", "INCONCLUSIVE")
    # transfer: each vector through the fitted map of its layer's best pair, width 64 -> 48
    t = pd.read_parquet(tmp_path / "run" / "transfer.parquet")
    assert len(t) == 2 and s["transferred"] == 2
    for row in t.itertuples():
        got = store.read_tensors(Path(row.file))["vector"]
        v = store.read_tensors(Path(row.source_file))["vector"]
        fit = S.fit_linear_map(a[row.layer_a][job.train], b[row.layer_b][job.train], ridge=1.0)
        assert got.shape == (48,)
        assert got.numpy() == pytest.approx(fit.apply_direction(v.double().numpy()), rel=1e-4, abs=1e-5)


def test_rerun_reads_the_store(tmp_path):
    cfg = _cfg("experiment.pooling=mean", "experiment.texts=question")
    first = sim_job.run(cfg, tmp_path / "a")
    records = _records(tmp_path)
    kinds = {p.relative_to(tmp_path / "store").parts[0] for p in records}
    assert kinds == {"activations", "similarity"}
    second = sim_job.run(cfg, tmp_path / "b")
    assert _records(tmp_path) == records
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "projection.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "projection.parquet"))
    assert first["pairs"] == second["pairs"]
    tables = sim_job.report([tmp_path / "a", tmp_path / "b"])
    assert len(tables["pairs"]) == 2 and len(tables["projection"]) == 2 * 4
    assert first["pairs"][0]["cka_diagonal_mean"] == pytest.approx(1.0, abs=1e-6)


def test_a_vector_of_the_wrong_width_fails_before_any_capture(tmp_path):
    wide = tmp_path / "wide.safetensors"
    store.write_tensors(wide, {"vector": torch.ones(48)}, {"method": "x", "layer": "1", "model": "tiny_random"})
    cfg = _cfg(f"experiment.models=[tiny_random,{NARROW}]", f"experiment.vector_path={wide}")
    with pytest.raises(VectorError, match=r"experiment.vector_path: .*shape \(48,\).*width is 64"):
        sim_job.run(cfg, tmp_path / "run")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("overrides, err, match", [
    (["experiment.models=[tiny_random,no_such_model]"], ConfigError, r"experiment.models\[1\]='no_such_model'"),
    (["experiment.models=[]"], ConfigError, "experiment.models=.*a list of conf/model preset names"),
    (["experiment.layers=[1,7]"], ModelError, r"experiment.layers=\[1, 7\]: experiment.models\[0\]=tiny_random has 4"),
    ([f"experiment.models=[tiny_random,{NARROW}]", "experiment.layers=[3]"], ModelError,
     r"experiment.models\[1\]=tiny_narrow has 3 blocks"),
    (["experiment.pooling=max"], ConfigError, "experiment.pooling='max' is not allowed"),
    (["experiment.projection=some"], ConfigError, "experiment.projection='some' is not allowed"),
    (["experiment.max_texts=4"], ConfigError, "experiment.max_texts=4"),
    (["experiment.vector_path=/no/such/dir"], ConfigError, "experiment.vector_path='/no/such/dir'"),
    (["experiment.models=[{source: random}]"], ConfigError, "inline model config needs a name"),
    (["experiment.transfer=true"], ConfigError, "experiment.transfer=true: needs two or more experiment.models"),
    ([f"experiment.models=[tiny_random,{NARROW}]", "experiment.transfer=true", "experiment.min_gain=0"], ConfigError,
     "experiment.min_gain=0"),
    ([f"experiment.models=[tiny_random,{NARROW}]", "experiment.transfer=true", "experiment.layers=[1]"], ConfigError,
     r"layer=\[1, 2\] \(the source vectors' layers\) must be among experiment.layers=\[1\]"),
])
def test_bad_config_is_one_line_naming_the_field(overrides, err, match):
    with pytest.raises(err, match=match):
        _cfg(*overrides)


# -- transfer: the carried vector used on the target ---------------------------------------------
TRANSFER = [f"experiment.models=[tiny_random,{NARROW}]", "experiment.transfer=true", "max_sample_size=40",
            "strength=[0.5,2.0]"]


@torch.no_grad()
def _target_accuracy(cfg, items, layer: int, vector: torch.Tensor | None, strength: float) -> float:
    """Accuracy of the target model on ``items``, steered by hand: the reference engine (one whole
    forward pass per item, full-vocabulary logits), on a freshly loaded model."""
    from eas import models
    from eas.core import engine, score, tokens
    from eas.prompts import Prompter

    mcfg = sim_job.model_configs(cfg)[1]
    lm = models.load(mcfg, seed=0)
    p = cfg.prompt
    prompter = Prompter(lm.tokenizer, p.format, p.system, p.instruction)
    rows = tokens.encode(lm.tokenizer, [prompter.mc(it) for it in items], prompter.add_special_tokens)
    letters = score.letter_token_ids(lm.tokenizer, max(len(it.options) for it in items), p.letters == "bare")
    v = torch.zeros(int(lm.model.config.hidden_size)) if vector is None else vector
    scores = engine.naive_sweep_mc(lm.model, lm.sites, rows, [len(it.options) for it in items], letters,
                                   cfg.steer_target.site, [engine.Cell(layer, strength, v)])
    return float((scores[0].argmax(-1).numpy() == np.array([it.label for it in items])).mean())


def test_transfer_steers_the_target_with_the_rescaled_mapped_vector(tmp_path):
    import json

    vecs = tmp_path / "vecs"
    torch.manual_seed(0)
    for layer in (1, 2):
        store.write_tensors(vecs / "vectors" / f"x_residual_L{layer}.safetensors", {"vector": torch.randn(64)},
                            {"method": "x", "site": "residual", "layer": str(layer), "model": "tiny_random"})
    cfg = _cfg(*TRANSFER, f"experiment.vector_path={vecs}")
    job = sim_job.Similarity(cfg, tmp_path / "run")
    s = job.run()
    t = pd.read_parquet(tmp_path / "run" / "transfer.parquet")
    assert len(t) == 2 and s["transferred"] == 2 and len(s["transfer"]["rows"]) == 2
    json.dumps(s, allow_nan=False)  # no non-finite number in the summary
    a = _by_hand(job, cfg.model)
    b = _by_hand(job, sim_job.model_configs(cfg)[1])
    for row in t.itertuples():
        got = store.read_tensors(Path(row.file))["vector"]
        v = store.read_tensors(Path(row.source_file))["vector"]
        # the rule: the mapped direction at |v| * mean|h_b| / mean|h_a| (activation norms of the two layers)
        m = S.fit_linear_map(a[row.layer_a][job.train], b[row.layer_b][job.train], ridge=1.0).apply_direction(
            v.double().numpy())
        na = np.linalg.norm(a[row.layer_a], axis=-1).mean()
        nb = np.linalg.norm(b[row.layer_b], axis=-1).mean()
        want = m / np.linalg.norm(m) * float(v.norm()) * nb / na
        assert got.shape == (48,)
        assert got.numpy() == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert row.norm_b == pytest.approx(float(v.norm()) * nb / na, rel=1e-4)
        assert row.norm_mapped == pytest.approx(np.linalg.norm(m), rel=1e-4)
        # the control: a seeded random direction of the same norm
        assert row.control_norm == pytest.approx(row.norm_b, rel=1e-5)
        ctl = sim_job.random_control(got, [0, 1, row.layer_a, row.layer_b])
        assert float(ctl.norm()) == pytest.approx(float(got.norm()), rel=1e-5)
        assert abs(float(torch.nn.functional.cosine_similarity(ctl, got, dim=0))) < 0.9
        # strengths picked on val; the numbers against the reference engine on a fresh model
        test = job.splits["test"]
        assert row.strength in (0.5, 2.0) and row.control_strength in (0.5, 2.0)
        assert row.test_accuracy == pytest.approx(_target_accuracy(cfg, test, row.layer_b, got, row.strength))
        assert row.control_test_accuracy == pytest.approx(
            _target_accuracy(cfg, test, row.layer_b, ctl, row.control_strength))
        assert row.unsteered_test_accuracy == pytest.approx(_target_accuracy(cfg, test, row.layer_b, None, 0.0))
        assert row.gain == pytest.approx(row.test_accuracy - row.unsteered_test_accuracy)
        assert row.gain_low <= row.gain <= row.gain_high and 0 < row.mcnemar_p <= 1
        assert row.verdict == sim_job.transfer_verdict(row.gain, row.gain_high, row.mcnemar_p, 0.02, 0.05)
        assert row.n_test == len(test)
    cells = pd.read_parquet(tmp_path / "run" / "transfer_cells.parquet")
    assert len(cells) == 2 * (2 * 2 + 2)  # per vector: mapped and control at 2 strengths on val, the picked on test
    val = cells[(cells.split == "val") & (cells.vector == "mapped") & (cells.layer_a == 1)]
    assert val.accuracy.max() == pytest.approx(t[t.layer_a == 1].val_accuracy.iloc[0])


def test_transfer_of_the_method_vectors_and_a_rerun_reads_the_store(tmp_path):
    from eas.experiments.steer import Steer

    cfg = _cfg(*TRANSFER)
    job = sim_job.Similarity(cfg, tmp_path / "a")
    first = job.run()
    # the source vectors: the job's method (pasf) at the job's layers, as a steer job on models[0] makes them
    assert [(f, L) for f, L, _ in job.vectors_a] == [("pasf@tiny_random", 1), ("pasf@tiny_random", 2)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        steer_cfg = compose("config", overrides=["model=tiny_random", "progress=false", "max_sample_size=40",
                                                 f"store.root={tmp_path / 'store2'}"])  # its own store: computed anew
    prepare(steer_cfg)
    steer = Steer(steer_cfg, tmp_path / "steer")
    steer.load()
    want = steer.vectors(steer.unsteered()["train"])
    for _, L, v in job.vectors_a:
        assert torch.allclose(v, want[L].float())
    records = _records(tmp_path)
    kinds = {p.relative_to(tmp_path / "store").parts[0] for p in records}
    assert {"activations", "similarity", "cells", "vectors"} <= kinds
    second = sim_job.run(cfg, tmp_path / "b")
    assert _records(tmp_path) == records  # nothing recomputed, nothing rewritten
    ta, tb = (pd.read_parquet(tmp_path / d / "transfer.parquet").drop(columns=["file"]) for d in "ab")
    pd.testing.assert_frame_equal(ta, tb)
    assert first["transfer"] == second["transfer"]
    assert first["transfer"]["rows"][0]["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    tables = sim_job.report([tmp_path / "a", tmp_path / "b"])
    assert len(tables["transfer"]) == 2 * 2 and {"gain", "control_gain", "verdict"} <= set(tables["transfer"])


def test_transfer_verdict():
    v = sim_job.transfer_verdict
    assert v(0.05, 0.09, 0.01, 0.02, 0.05) == "PASS"
    assert v(0.05, 0.09, 0.20, 0.02, 0.05) == "INCONCLUSIVE"  # big enough, not significant
    assert v(0.01, 0.015, 0.01, 0.02, 0.05) == "FAIL"  # significant but the whole interval is below 2%
    assert v(0.0, 0.0, 1.0, 0.02, 0.05) == "FAIL"
    assert v(0.01, None, 1.0, 0.02, 0.05) == "INCONCLUSIVE"
