"""The site table (``eas.core.sites``) on tiny random models: input sites are rows with
``direction=input``, capture and steering honour the direction, output sites are unchanged."""

from __future__ import annotations

import pytest
import torch

from eas import models
from eas.core import capture, intervene, tokens
from eas.core.sites import FAMILIES, INPUT, OUTPUT, Family, ModelError, Site, SiteMap

TEXTS = [
    "Question: what is the answer? A. yes B. no Answer:",
    "the of and to Answer:",
    "A B C D the answer is yes and no and true of the that it for on with as was by Answer:",
]

# The output sites as they were before the table had directions: their numbers must not move.
BEFORE = {
    "llama": ("model.layers", {"residual": "", "mlp": "mlp", "self_attn": "self_attn",
                               "post_attention_layernorm": "post_attention_layernorm"}),
    "gemma": ("model.layers", {"residual": "", "mlp": "mlp", "self_attn": "self_attn",
                               "post_attention_layernorm": "post_attention_layernorm"}),
    "gpt2": ("transformer.h", {"residual": "", "mlp": "mlp", "self_attn": "attn", "post_attention_layernorm": "ln_2"}),
    "gpt_neox": ("gpt_neox.layers", {"residual": "", "mlp": "mlp", "self_attn": "attention",
                                     "post_attention_layernorm": "post_attention_layernorm"}),
    "opt": ("model.decoder.layers", {"residual": "", "self_attn": "self_attn"}),
    "phi": ("model.layers", {"residual": "", "mlp": "mlp", "self_attn": "self_attn"}),
}


def rows(tokenizer):
    return tokens.encode(tokenizer, TEXTS)


def test_output_sites_are_the_rows_they_were():
    assert set(FAMILIES) == set(BEFORE)
    for family, (blocks, paths) in BEFORE.items():
        row = FAMILIES[family]
        assert row.blocks == blocks
        outputs = {name: s.path for name, s in row.sites.items() if s.direction == OUTPUT}
        assert outputs == paths, family
        inputs = {name: s for name, s in row.sites.items() if s.direction == INPUT}
        assert inputs["residual_pre"] == Site("", INPUT), family
        if "mlp" in row.sites:
            assert inputs["mlp_input"] == Site("mlp", INPUT), family


def test_model_error_is_one_class():
    assert models.ModelError is ModelError  # the CLI catches eas.models.ModelError


def test_residual_pre_is_the_previous_block_output_and_the_embeddings_at_0(tiny, tokenizer):
    _, model, sites = tiny
    r = rows(tokenizer)
    layers = list(range(sites.n_layers))
    pre = capture.capture(model, sites, r, layers, "residual_pre", ("last", "mean"), batch_size=2,
                          pad=tokens.pad_id(tokenizer))
    post = capture.capture(model, sites, r, layers, "residual", ("last", "mean"), batch_size=2,
                           pad=tokens.pad_id(tokenizer))
    for rule in ("last", "mean"):
        torch.testing.assert_close(pre[rule][1:], post[rule][:-1], atol=0, rtol=0)  # the same tensor
    for i, row in enumerate(r):  # layer 0: the embeddings as the model feeds them to block 0
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
        torch.testing.assert_close(pre["last"][0, i], hs[0][0, -1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(pre["mean"][0, i], hs[0][0].mean(0), atol=1e-6, rtol=1e-5)


def test_residual_pre_at_0_is_embed_tokens_in_llama(llama, tokenizer):
    model, sites = llama
    row = rows(tokenizer)[0]
    got = capture.capture(model, sites, [row], [0], "residual_pre")["last"][0, 0]
    with torch.no_grad():
        want = model.model.embed_tokens(torch.tensor([row]))[0, -1]
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def _mlp_input(model, sites, ids, layer):
    seen = {}
    handle = sites.module(layer, "mlp").register_forward_pre_hook(
        lambda m, args: seen.__setitem__("x", args[0].clone()))  # registered last: runs after any steering
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return seen["x"]


def test_steer_at_mlp_input_adds_exactly_to_the_mlp_input(llama, tokenizer):
    model, sites = llama
    ids = torch.tensor([rows(tokenizer)[0]] * 2)
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    plain = _mlp_input(model, sites, ids, 2)
    with intervene.steer(sites, 2, "mlp_input", v, strength=torch.tensor([3.0, -1.0]), position="last"):
        steered = _mlp_input(model, sites, ids, 2)
    diff = steered - plain
    torch.testing.assert_close(diff[0, -1], 3.0 * v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(diff[1, -1], -1.0 * v, atol=1e-5, rtol=1e-5)
    assert diff[:, :-1].abs().max() == 0
    assert not sites.module(2, "mlp")._forward_pre_hooks, "steering pre-hook left behind"
    with intervene.ablate(sites, 2, "mlp_input", v):
        ablated = _mlp_input(model, sites, ids, 2)
    assert (ablated @ (v / v.norm())).abs().max() < 1e-4


def test_mlp_input_is_the_norm_output_in_llama(llama, tokenizer):
    """Same tensor, two rows: capture agrees, and so does steering (the MLP's output moves alike)."""
    model, sites = llama
    r = rows(tokenizer)
    a = capture.capture(model, sites, r, [1, 3], "mlp_input", ("last", "mean"))
    b = capture.capture(model, sites, r, [1, 3], "post_attention_layernorm", ("last", "mean"))
    for rule in a:
        torch.testing.assert_close(a[rule], b[rule], atol=0, rtol=0)
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    out = {}
    for site in ("mlp_input", "post_attention_layernorm"):
        with intervene.steer(sites, 1, site, v, 2.0, position="all"):
            out[site] = capture.capture(model, sites, r, [1], "mlp")["last"]
    torch.testing.assert_close(out["mlp_input"], out["post_attention_layernorm"], atol=1e-6, rtol=1e-5)


def test_steer_at_residual_pre_equals_steer_at_the_previous_residual(llama, tokenizer):
    model, sites = llama
    ids = torch.tensor([rows(tokenizer)[2]])
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with intervene.steer(sites, 2, "residual_pre", v, 4.0):
            a = model(input_ids=ids).logits
        with intervene.steer(sites, 1, "residual", v, 4.0):
            b = model(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a - plain).abs().max() > 1e-3


def test_input_site_read_by_keyword_and_unknown_sites(monkeypatch):
    """A model that passes ``hidden_states=`` to its blocks needs no new kind of row."""

    class Block(torch.nn.Module):
        def forward(self, hidden_states, scale=1.0):
            return hidden_states * scale

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for block in self.layers:
                x = block(hidden_states=x, scale=2.0)
            return x

    monkeypatch.setitem(FAMILIES, "toy", Family("layers", {"residual_pre": Site("", INPUT)}))
    toy = Toy()
    sites = SiteMap(toy, "toy")
    x = torch.zeros(1, 3, 4)
    with intervene.steer(sites, 1, "residual_pre", torch.ones(4), position="all"):
        got = toy(x)
    torch.testing.assert_close(got, torch.full((1, 3, 4), 2.0))
    with pytest.raises(ModelError, match="site 'mlp_input' does not exist for the toy family; available: residual_pre"):
        sites.module(0, "mlp_input")
    opt = models.random_model("opt", {"hidden_size": 16, "ffn_dim": 32, "num_hidden_layers": 1,
                                      "num_attention_heads": 2, "vocab_size": 50, "word_embed_proj_dim": 16,
                                      "max_position_embeddings": 32})
    with pytest.raises(ModelError, match="site 'mlp_input' does not exist for the opt family"):
        models.site_map(opt).module(0, "mlp_input")
