"""experiment=lens on the tiny random model: outputs, the numbers against direct computations (a
manual forward with output_hidden_states, numpy's SVD, the unembedding by hand), store reuse, bad input."""

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
from eas.core import sae as SAE
from eas.core.sites import ModelError
from eas.experiments import lens as lens_job
from eas.experiments.base import prepare
from eas.methods.base import VectorError

FAST = ["model=tiny_random", "experiment=lens", "progress=false", "max_sample_size=20", "layer=[1,2]",
        "experiment.n_bootstrap=200", "experiment.top_k=5", "experiment.sample_prompts=2",
        "experiment.sae.n_features=32", "experiment.sae.epochs=20", "experiment.sae.top_features=3",
        "experiment.sae.top_texts=2"]


def _cfg(*overrides: str):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*FAST, *overrides])
    prepare(cfg)
    return cfg


def _records(tmp_path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One lens run and the loaded job it ran (its items, model, tokenizer), shared by the checks."""
    tmp = tmp_path_factory.mktemp("lens")
    mp = pytest.MonkeyPatch()
    mp.setenv("EAS_STORE", str(tmp / "store"))
    try:
        cfg = _cfg()
        summary = lens_job.run(cfg, tmp / "run")
        job = lens_job.Lens(cfg, tmp / "job")
        job.load()
    finally:
        mp.undo()
    return tmp, cfg, summary, job


@torch.no_grad()
def _hidden(job, row: list[int]):
    """Every block's output at the last position (the last one from the model's logits) by hand."""
    out = job.lm.model(input_ids=torch.tensor([row]), output_hidden_states=True)
    return out.hidden_states, out.logits[0, -1].float()


def test_lens_writes_everything(first_run):
    tmp, _, s, _ = first_run
    run = tmp / "run"
    for f in ("results.parquet", "top_tokens.parquet", "vector_lens.parquet", "svd.parquet", "cosines.parquet",
              "pca.parquet", "summary.json", "manifest.json", "figures/lens_layers.png", "figures/svd_scree.png",
              "figures/vector_cosines.png", "figures/pca_map.png", "figures/tsne_map.png", "sae.parquet",
              "sae/cfg.json", "sae/sae_weights.safetensors", "vectors/pasf_residual_L1.safetensors"):
        assert (run / f).exists(), f
    assert s["n_items"] == 20 and s["n_layers"] == 4 and s["svd"]["layer"] == 2 and s["pca"]["vector_layer"] == 2
    table = pd.read_parquet(run / "results.parquet")
    assert list(table.layer) == [0, 1, 2, 3]
    assert ((table.rank_low <= table.rank_mean) & (table.rank_mean <= table.rank_high)).all()
    assert ((table.prob_low <= table.prob_mean) & (table.prob_mean <= table.prob_high)).all()
    tops = pd.read_parquet(run / "top_tokens.parquet")
    assert len(tops) == 4 * 2 * 5 and tops.groupby(["item_id", "layer"]).logit.is_monotonic_decreasing.all()


@torch.no_grad()
def test_lens_rank_and_probability_equal_a_manual_forward(first_run):
    tmp, _, _, job = first_run
    items = job.items()
    table = pd.read_parquet(tmp / "run" / "results.parquet").set_index("layer")
    model = job.lm.model
    n_layers = job.lm.sites.n_layers
    ranks = np.zeros((n_layers, len(items)))
    probs = np.zeros((n_layers, len(items)))
    picks = np.zeros((n_layers, len(items)), int)
    for i, (it, row) in enumerate(zip(items, job.mc_rows(items))):
        hidden, final = _hidden(job, row)
        for layer in range(n_layers):
            # hidden_states[l + 1] is block l's output, except the last (already normed): use the logits
            logits = final if layer == n_layers - 1 else \
                model.lm_head(model.model.norm(hidden[layer + 1][0, -1])).float()
            ids = job.letter_ids[it.label]
            ranks[layer, i] = min(int((logits > logits[t]).sum()) for t in ids)
            probs[layer, i] = float(torch.softmax(logits, -1)[ids].sum())
            picks[layer, i] = int(torch.stack([logits[job.letter_ids[j]].logsumexp(-1)
                                               for j in range(len(it.options))]).argmax())
    labels = np.array([it.label for it in items])
    assert table.rank_mean.to_numpy() == pytest.approx(ranks.mean(1))
    assert table.rank_median.to_numpy() == pytest.approx(np.median(ranks, 1))
    assert table.prob_mean.to_numpy() == pytest.approx(probs.mean(1), rel=1e-4)
    assert table.letter_accuracy.to_numpy() == pytest.approx((picks == labels).mean(1))
    assert table.top1_rate.to_numpy() == pytest.approx((ranks == 0).mean(1))
    # the last layer's lens letter pick is the model's own (unsteered) answer
    base = job.unsteered()
    preds = {iid: p for sc in base.values() for iid, p in zip(sc.item_ids, sc.preds)}
    assert list(picks[-1]) == [preds[it.id] for it in items]


@torch.no_grad()
def test_vector_lens_svd_and_cosines_equal_direct_computations(first_run):
    tmp, _, _, job = first_run
    run = tmp / "run"
    model = job.lm.model
    W = model.lm_head.weight.detach()
    vl = pd.read_parquet(run / "vector_lens.parquet")
    vecs = {L: store.read_tensors(run / "vectors" / f"pasf_residual_L{L}.safetensors")["vector"] for L in (1, 2)}
    for L, v in vecs.items():
        scores = W @ v
        for normed, sign, want in ((False, "+", scores), (False, "-", -scores),
                                   (True, "+", model.lm_head(model.model.norm(v)).float()),
                                   (True, "-", model.lm_head(model.model.norm(-v)).float())):
            got = vl[(vl.layer == L) & (vl.normed == normed) & (vl.sign == sign)].sort_values("rank")
            assert got.token_id.tolist() == torch.topk(want, 5).indices.tolist()
            assert got.score.to_numpy() == pytest.approx(torch.topk(want, 5).values.numpy(), rel=1e-4, abs=1e-5)
    # SVD of layer 2 (block 2's output at the last position) against numpy on a manual capture
    items = job.items()
    acts = np.stack([_hidden(job, row)[0][3][0, -1].double().numpy() for row in job.mc_rows(items)])
    s_np = np.linalg.svd(acts - acts.mean(0), compute_uv=False)
    svd = pd.read_parquet(run / "svd.parquet").sort_values("component")
    assert svd.singular_value.to_numpy() == pytest.approx(s_np[:len(svd)], rel=1e-4, abs=1e-6)
    assert svd.explained.to_numpy() == pytest.approx(s_np[:len(svd)] ** 2 / (s_np ** 2).sum(), rel=1e-4, abs=1e-8)
    assert svd.top_positive.notna().sum() == 8 and svd.top_negative.notna().sum() == 8  # experiment.svd_k
    cos = pd.read_parquet(run / "cosines.parquet").set_index(["a", "b"]).cosine
    want = float(torch.nn.functional.cosine_similarity(vecs[1], vecs[2], dim=0))
    assert cos[("pasf L1", "pasf L2")] == pytest.approx(want, abs=1e-6)
    assert cos[("pasf L1", "pasf L1")] == pytest.approx(1.0)


def test_the_sae_is_trained_on_the_layer_and_the_vectors_read_as_its_features(first_run):
    tmp, _, s, job = first_run
    run = tmp / "run"
    a = s["sae"]
    assert a["enabled"] and a["layer"] == 2 and a["d_sae"] == 32 and a["source"] == "trained" and a["n_texts"] == 20
    # the statistics are those of the written SAE on the layer's activations (captured again by hand)
    sae, sae_cfg = SAE.load_sae(run / "sae")
    assert sae_cfg["metadata"]["layer"] == 2 and sae.d_in == 64
    items = job.items()
    acts = torch.stack([_hidden(job, row)[0][3][0, -1] for row in job.mc_rows(items)])
    st = SAE.sae_stats(sae, acts)
    assert st.dead_fraction == pytest.approx(a["dead_fraction"]) and st.l0 == pytest.approx(a["l0"])
    assert st.explained_variance == pytest.approx(a["explained_variance"], rel=1e-3, abs=1e-4)
    df = pd.read_parquet(run / "sae.parquet")
    assert set(df.vector) == {"pasf L1", "pasf L2"} and (df.groupby("vector").size() == 3).all()
    v2 = store.read_tensors(run / "vectors" / "pasf_residual_L2.safetensors")["vector"]
    dec = SAE.decompose(sae, v2, 3)
    got = df[df.vector == "pasf L2"].sort_values("rank")
    assert got.feature.tolist() == dec.features.tolist()
    assert got.weight.to_numpy() == pytest.approx(dec.weights.numpy(), rel=1e-4, abs=1e-6)
    assert got.reconstruction.iloc[0] == pytest.approx(dec.reconstruction, abs=1e-6)
    # each feature's top texts are the items it fires on most; its tokens are its decoder row unembedded
    f0 = int(got.feature.iloc[0])
    fires = sae.encode(acts)[:, f0]
    want = [items[i].id for i in torch.topk(fires, 2).indices.tolist() if fires[i] > 0]
    assert list(got.top_item_ids.iloc[0]) == want
    assert all(len(t) <= 80 for t in got.top_texts.iloc[0])
    ids = torch.topk(job.lm.model.lm_head.weight.detach() @ sae.W_dec[f0], 5).indices.tolist()
    assert got.top_positive.iloc[0] == " | ".join(job.decode(t) for t in ids)
    pca = pd.read_parquet(run / "pca.parquet")
    assert {"tsne1", "tsne2"} <= set(pca.columns) and np.isfinite(pca[["tsne1", "tsne2"]].to_numpy()).all()


def test_an_sae_folder_is_loaded_and_a_wrong_width_fails_before_any_forward_pass(first_run, tmp_path, monkeypatch):
    tmp, _, _, _ = first_run
    monkeypatch.setenv("EAS_STORE", str(tmp / "store"))
    s = lens_job.run(_cfg("experiment.sae.train=false", f"experiment.sae.path={tmp / 'run' / 'sae'}"), tmp_path / "a")
    first = pd.read_parquet(tmp / "run" / "sae.parquet")
    again = pd.read_parquet(tmp_path / "a" / "sae.parquet")
    assert s["sae"]["source"] == str(tmp / "run" / "sae") and again.feature.tolist() == first.feature.tolist()
    g = torch.Generator().manual_seed(0)
    SAE.save_sae(SAE.SAE(torch.randn(48, 8, generator=g), torch.zeros(8), torch.randn(8, 48, generator=g),
                         torch.zeros(48)), tmp_path / "narrow")
    with pytest.raises(VectorError, match="the SAE's d_in is 48, this model's width is 64"):
        lens_job.run(_cfg("experiment.sae.train=false", f"experiment.sae.path={tmp_path / 'narrow'}"), tmp_path / "b")
    assert not (tmp_path / "b" / "results.parquet").exists()


def test_rerun_reads_the_store_and_other_runs_vectors_join_the_cosines(first_run, tmp_path, monkeypatch):
    tmp, _, first, _ = first_run
    monkeypatch.setenv("EAS_STORE", str(tmp / "store"))
    before = _records(tmp)
    cfg = _cfg(f"experiment.vector_paths=[{tmp / 'run'}]")
    s = lens_job.run(cfg, tmp_path / "again")
    assert _records(tmp) == before  # nothing recomputed: lens, activations, vectors, unsteered from the store
    pd.testing.assert_frame_equal(pd.read_parquet(tmp / "run" / "results.parquet"),
                                  pd.read_parquet(tmp_path / "again" / "results.parquet"))
    assert s["final_layer"] == first["final_layer"] and s["vectors"] == 4
    cos = pd.read_parquet(tmp_path / "again" / "cosines.parquet").set_index(["a", "b"]).cosine
    assert cos[("pasf L2", "pasf L2 (run)")] == pytest.approx(1.0)
    assert len(lens_job.report([tmp / "run", tmp_path / "again"])["layers"]) == 2 * 4


def test_without_steering_vectors(tmp_path):
    s = lens_job.run(_cfg("experiment.vectors=false", "max_sample_size=10", "experiment.svd_layer=3",
                          "experiment.sae.train=false"), tmp_path / "run")
    assert not s["sae"]["enabled"] and not (tmp_path / "run" / "sae.parquet").exists()
    assert s["vectors"] == 0 and s["pca"]["vector_layer"] is None and s["svd"]["layer"] == 3
    assert not (tmp_path / "run" / "vectors").exists() and not (tmp_path / "store" / "cells").exists()
    assert len(pd.read_parquet(tmp_path / "run" / "vector_lens.parquet")) == 0
    assert (tmp_path / "run" / "figures" / "pca_map.png").exists()


def test_bad_vector_files_and_layers_fail_before_any_forward_pass(tmp_path):
    wrong = tmp_path / "wide.safetensors"
    store.write_tensors(wrong, {"vector": torch.ones(65)}, {"method": "x", "layer": "1", "model": "tiny_random"})
    with pytest.raises(VectorError, match=r"experiment.vector_paths\[0\].*shape \(65,\).*width is 64"):
        lens_job.run(_cfg(f"experiment.vector_paths=[{wrong}]"), tmp_path / "a")
    other = tmp_path / "other.safetensors"
    store.write_tensors(other, {"vector": torch.ones(64)}, {"method": "x", "layer": "1", "model": "llama_70b"})
    with pytest.raises(VectorError, match="made on model 'llama_70b'"):
        lens_job.run(_cfg(f"experiment.vector_paths=[{other}]"), tmp_path / "b")
    with pytest.raises(ModelError, match="experiment.svd_layer=9 is out of range"):
        lens_job.run(_cfg("experiment.svd_layer=9"), tmp_path / "c")
    assert not (tmp_path / "store").exists()  # nothing captured or scored


@pytest.mark.parametrize("overrides, match", [
    (["experiment.vector_paths=[/no/such/file.safetensors]"], r"experiment.vector_paths\[0\]='/no/such"),
    (["experiment.top_k=0"], "experiment.top_k=0"),
    (["experiment.alpha=1.5"], "experiment.alpha=1.5"),
    (["experiment.max_items=1"], "experiment.max_items=1"),
    (["experiment.sae.path=/no/such/sae"], "experiment.sae.train=true and experiment.sae.path='/no/such/sae'"),
    (["experiment.sae.train=false", "experiment.sae.path=/no/such/sae"], "experiment.sae.path='/no/such/sae'"),
    (["experiment.sae.n_features=0"], "experiment.sae.n_features=0"),
    (["+experiment.nope=1"], "unknown config key 'experiment.nope'"),
])
def test_bad_config_is_one_line_naming_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(*overrides)
