"""Tests for eas.core.lens on tiny random-init models: the lens of the last block is the
model's own logits, the final norm and unembedding written out by hand agree, and the
token rankings and SVD agree with sorting and numpy.linalg.svd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eas import models
from eas.core import lens
from eas.core.sites import FAMILIES
from tests.conftest import TINY, make_tiny

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250, 7], [11, 2, 300, 64, 8, 19, 150]])


def _block_outputs(model, sites, input_ids: torch.Tensor):
    """Every block's output ``[layer, batch, pos, d]`` and the model's logits, one forward."""
    outs = []

    def keep(_module, _args, output):
        outs.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [block.register_forward_hook(keep) for block in sites.blocks]
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
    finally:
        for h in handles:
            h.remove()
    return torch.stack(outs), logits


def _extra_models():
    """Rows the shared fixtures do not cover: Phi, OPT with project_out, Gemma softcapping."""
    phi = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 400,
        "max_position_embeddings": 512,
    }
    opt = {**TINY["opt"], "word_embed_proj_dim": 32}
    gemma = {**TINY["gemma3_text"], "final_logit_softcapping": 0.5}
    return {
        "phi": models.random_model("phi", phi),
        "opt_project_out": models.random_model("opt", opt),
        "gemma_softcap": models.random_model("gemma3_text", gemma),
    }


@pytest.fixture(scope="module")
def extra():
    return {name: (m, models.site_map(m)) for name, m in _extra_models().items()}


def test_every_family_has_a_final_norm_row():
    assert set(lens.FINAL_NORM) == set(FAMILIES)


def test_last_layer_lens_is_the_models_logits(tiny):
    _, model, sites = tiny
    hidden, logits = _block_outputs(model, sites, TOKENS)
    torch.testing.assert_close(
        lens.logit_lens(model, hidden[-1]), logits.float(), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["phi", "opt_project_out", "gemma_softcap"])
def test_last_layer_lens_is_the_models_logits_extra(extra, name):
    model, sites = extra[name]
    hidden, logits = _block_outputs(model, sites, TOKENS)
    torch.testing.assert_close(
        lens.logit_lens(model, hidden[-1]), logits.float(), atol=1e-5, rtol=1e-5
    )
    if name == "gemma_softcap":
        assert logits.abs().max() <= 0.5
    if name == "opt_project_out":
        assert len(lens.final_norm(model)) == 2


def test_logit_lens_by_hand_llama(llama):
    model, _ = llama
    h = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0))
    norm = model.model.norm
    normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
    expected = normed @ model.lm_head.weight.T
    torch.testing.assert_close(lens.logit_lens(model, h), expected, atol=1e-5, rtol=1e-5)


def test_logit_lens_by_hand_gpt2():
    model, _ = make_tiny("gpt2")
    h = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    ln = model.transformer.ln_f
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    normed = (h - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
    expected = normed @ model.transformer.wte.weight.T  # GPT-2 ties its unembedding to wte
    torch.testing.assert_close(lens.logit_lens(model, h), expected, atol=1e-5, rtol=1e-5)


def test_layer_lens_stacks_logit_lens(llama):
    model, sites = llama
    hidden, _ = _block_outputs(model, sites, TOKENS)
    got = lens.layer_lens(model, hidden)
    assert got.shape == (4, 2, 7, 400)
    for layer in range(4):
        torch.testing.assert_close(got[layer], lens.logit_lens(model, hidden[layer]))
    torch.testing.assert_close(lens.layer_lens(model, list(hidden)), got)


def test_answer_rank_against_sorting():
    logits = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(2))
    ids = torch.randint(0, 50, (3, 4), generator=torch.Generator().manual_seed(3))
    got = lens.answer_rank(logits, ids)
    order = torch.argsort(logits, dim=-1, descending=True)
    expected_rank = (order == ids[..., None]).float().argmax(-1)
    torch.testing.assert_close(got.rank, expected_rank)
    torch.testing.assert_close(
        got.prob, torch.softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    )
    top = logits.argmax(-1)
    assert (lens.answer_rank(logits, top).rank == 0).all()
    single = lens.answer_rank(logits, 7)
    torch.testing.assert_close(single.prob, torch.softmax(logits, -1)[..., 7])
    with pytest.raises(ValueError, match="token_id"):
        lens.answer_rank(logits, 50)


def test_top_tokens_against_sorting():
    logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(4))
    got = lens.top_tokens(logits, 5)
    values, order = torch.sort(logits, dim=-1, descending=True)
    torch.testing.assert_close(got.ids, order[:, :5])
    torch.testing.assert_close(got.logits, values[:, :5])
    with pytest.raises(ValueError, match="k must"):
        lens.top_tokens(logits, 31)


def test_vector_lens_direct_unembedding(llama):
    model, _ = llama
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))
    got = lens.vector_lens(model, v, k=6)
    scores = model.lm_head.weight @ v
    torch.testing.assert_close(got.positive.ids, torch.argsort(scores, descending=True)[:6])
    torch.testing.assert_close(got.negative.ids, torch.argsort(scores)[:6])
    torch.testing.assert_close(got.positive.logits, torch.sort(scores, descending=True).values[:6])
    assert not got.normed
    scaled = lens.vector_lens(model, 10 * v.numpy(), k=6)  # numpy in; scale-free ranking
    torch.testing.assert_close(scaled.positive.ids, got.positive.ids)


def test_vector_lens_normed_is_logit_lens():
    model, _ = make_tiny("gpt2")  # a LayerNorm with bias: -v is not simply v's bottom
    v = torch.randn(64, generator=torch.Generator().manual_seed(6))
    got = lens.vector_lens(model, v, k=4, normed=True)
    torch.testing.assert_close(got.positive.ids, lens.top_tokens(lens.logit_lens(model, v), 4).ids)
    torch.testing.assert_close(got.negative.ids, lens.top_tokens(lens.logit_lens(model, -v), 4).ids)
    assert got.normed


@pytest.mark.parametrize("center", [True, False])
def test_svd_against_numpy(center):
    rng = np.random.default_rng(7)
    acts = rng.normal(size=(40, 12)) @ np.diag(np.linspace(3, 0.1, 12)) + 2.0
    got = lens.svd(torch.tensor(acts, dtype=torch.float32), k=4, center=center)
    x = acts - acts.mean(0) if center else acts
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(got.singular_values, s[:4], rtol=1e-5)
    np.testing.assert_allclose(got.explained, s[:4] ** 2 / np.sum(s**2), rtol=1e-5)
    dots = np.abs(np.sum(got.components * vt[:4], axis=1))  # same directions up to sign
    np.testing.assert_allclose(dots, 1.0, rtol=1e-5)
    comps = got.components
    assert (comps[np.arange(4), np.abs(comps).argmax(1)] > 0).all()
    np.testing.assert_allclose(got.mean, acts.mean(0) if center else 0.0, rtol=1e-5, atol=1e-6)
    if center:
        np.testing.assert_allclose(np.cumsum(got.explained)[-1] <= 1.0, True)


def test_svd_errors():
    with pytest.raises(ValueError, match="k must"):
        lens.svd(np.zeros((5, 3)), k=4)
    with pytest.raises(ValueError, match="2-D"):
        lens.svd(np.zeros(5), k=1)
    with pytest.raises(ValueError, match="finite"):
        lens.svd(np.full((3, 3), np.nan), k=1)


def test_unembed_directions(llama):
    model, _ = llama
    acts = torch.randn(30, 64, generator=torch.Generator().manual_seed(8))
    dirs = lens.svd(acts, k=3)
    got = lens.unembed_directions(model, dirs.components, k=5)
    assert got.positive.ids.shape == (3, 5) and got.negative.ids.shape == (3, 5)
    one = lens.vector_lens(model, torch.tensor(dirs.components[1]), k=5)
    torch.testing.assert_close(got.positive.ids[1], one.positive.ids)
