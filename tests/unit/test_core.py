"""The pure core on tiny random models: capture, steering hooks, scoring, vectors.

The engine has ``test_engine.py``; the site table and input sites ``test_sites.py``.
"""

from __future__ import annotations

import pytest
import torch

from eas.core import capture, intervene, score, tokens, vectors
from eas.core.sites import FAMILIES, OUTPUT, ModelError, site_map

TEXTS = [
    "Question: what is the answer? A. yes B. no Answer:",
    "the of and to Answer:",
    "A B C D the answer is yes and no and true of the that it for on with as was by Answer:",
]


def rows(tokenizer, texts=TEXTS):
    return tokens.encode(tokenizer, texts)


OUTPUT_SITES = [name for name, row in FAMILIES["llama"].sites.items() if row.direction == OUTPUT]


def test_capture_residual_equals_hidden_states(tiny, tokenizer):
    arch, model, sites = tiny
    r = rows(tokenizer)
    got = capture.capture(model, sites, r, layers=[0, 2, 3], site="residual", positions=("last", "mean"),
                          batch_size=2, pad=tokens.pad_id(tokenizer))
    for i, row in enumerate(r):  # one text at a time, no padding, the model's own hidden states
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
        for j, layer in enumerate([0, 2, 3]):
            if layer == sites.n_layers - 1 and arch in ("llama", "qwen2", "gemma3_text", "gpt2", "gpt_neox", "opt"):
                continue  # HF applies the final norm to the last hidden state it returns
            torch.testing.assert_close(got["last"][j, i], hs[layer + 1][0, -1], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got["mean"][j, i], hs[layer + 1][0].mean(0), atol=1e-5, rtol=1e-4)


def test_capture_is_padding_aware_and_stops_after_top_layer(llama, tokenizer):
    model, sites = llama
    r = rows(tokenizer)
    alone = [capture.capture(model, sites, [x], [1], "mlp", ("last", "mid", "mean"), 1) for x in r]
    batched = capture.capture(model, sites, r, [1], "mlp", ("last", "mid", "mean"), batch_size=3)
    for i in range(len(r)):
        for rule in ("last", "mid", "mean"):
            torch.testing.assert_close(batched[rule][0, i], alone[i][rule][0, 0], atol=1e-5, rtol=1e-4)
    ran = []
    handles = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(sites.blocks)]
    try:
        capture.capture(model, sites, r, [1], "residual", batch_size=8)
    finally:
        for h in handles:
            h.remove()
    assert ran == [0, 1], f"blocks after the highest requested layer ran: {ran}"


@pytest.mark.parametrize("site", OUTPUT_SITES)
def test_steer_adds_exactly_at_site_and_last_position(llama, tokenizer, site):
    model, sites = llama
    ids = torch.tensor([rows(tokenizer)[0]])
    module = sites.module(2, site)
    seen = {}

    def record(key):
        return lambda m, i, o: seen.__setitem__(key, (o[0] if isinstance(o, tuple) else o).clone())

    v = torch.randn(64)
    with torch.no_grad():
        h = module.register_forward_hook(record("plain"))
        model(input_ids=ids)
        h.remove()
        with intervene.steer(sites, 2, site, v, strength=3.0, position="last"):
            h = module.register_forward_hook(record("steered"))  # runs after the steering hook
            model(input_ids=ids)
            h.remove()
    diff = seen["steered"] - seen["plain"]
    torch.testing.assert_close(diff[0, -1], 3.0 * v, atol=1e-5, rtol=1e-5)
    assert diff[0, :-1].abs().max() == 0
    assert not module._forward_hooks, "steering hook left behind"


def test_capture_and_steer_touch_the_same_tensor(tiny, tokenizer):
    _, model, sites = tiny
    r = rows(tokenizer)[:1]
    v = torch.randn(model.config.hidden_size if hasattr(model.config, "hidden_size") else 64)
    for site in sites.names:  # input sites too: the steer and the capture hook the same input
        plain = capture.capture(model, sites, r, [1], site)["last"][0, 0]
        with intervene.steer(sites, 1, site, v, 2.0):
            steered = capture.capture(model, sites, r, [1], site)["last"][0, 0]
        torch.testing.assert_close(steered - plain, 2.0 * v, atol=1e-4, rtol=1e-4)


def test_hooks_removed_on_error(llama):
    _, sites = llama
    with pytest.raises(RuntimeError, match="boom"), intervene.steer(sites, 1, "residual", torch.ones(64)):
        raise RuntimeError("boom")
    assert all(not b._forward_hooks for b in sites.blocks)
    with pytest.raises(RuntimeError, match="boom"), intervene.steer(sites, 1, "residual_pre", torch.ones(64)):
        raise RuntimeError("boom")
    assert all(not b._forward_pre_hooks for b in sites.blocks)


def test_per_row_strengths_and_from_position(llama, tokenizer):
    model, sites = llama
    ids = torch.tensor([rows(tokenizer)[0]] * 2)
    module = sites.module(0, "residual")
    out = {}
    v = torch.randn(64)
    with torch.no_grad():
        h = module.register_forward_hook(lambda m, i, o: out.__setitem__("p", o.clone()))
        model(input_ids=ids)
        h.remove()
        with intervene.steer(sites, 0, "residual", v, torch.tensor([1.0, -2.0]), position=3):
            h = module.register_forward_hook(lambda m, i, o: out.__setitem__("s", o.clone()))
            model(input_ids=ids)
            h.remove()
    d = out["s"] - out["p"]
    assert d[:, :3].abs().max() == 0
    torch.testing.assert_close(d[0, 3:], v.expand_as(d[0, 3:]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d[1, 3:], -2 * v.expand_as(d[1, 3:]), atol=1e-5, rtol=1e-5)


def test_ablate_removes_direction(llama, tokenizer):
    model, sites = llama
    u = torch.randn(64)
    with intervene.ablate(sites, 1, "residual", u):
        got = capture.capture(model, sites, rows(tokenizer), [1], "residual", ("mean",))["mean"][0]
    assert (got @ (u / u.norm())).abs().max() < 1e-4


def test_letter_tokens_and_head_match_full_logits(tiny, tokenizer):
    _, model, _ = tiny
    ids = score.letter_token_ids(tokenizer, 4)
    for letter, variants in zip("ABCD", ids):
        assert {tokenizer.decode([t]).strip() for t in variants} == {letter}
    head = score.LetterHead(model, ids)
    r = rows(tokenizer)
    got = score.score_mc(model, r, [4, 2, 4], head, batch_size=2, pad=tokens.pad_id(tokenizer))
    assert torch.isinf(got[1, 2:]).all(), "letters past an item's options must be -inf"
    for i, row in enumerate(r):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row])).logits[0, -1]
        want = torch.stack([torch.logsumexp(logits[v], 0) for v in ids])
        n = [4, 2, 4][i]
        torch.testing.assert_close(got[i, :n], want[:n], atol=1e-4, rtol=1e-4)


def test_letter_without_single_token_is_an_error():
    class Tok:
        def encode(self, s, add_special_tokens=False):
            return [1, 2]

    with pytest.raises(ValueError, match="not a single token"):
        score.letter_token_ids(Tok(), 2)


def test_unknown_architecture_and_bad_layer(llama):
    _, sites = llama

    class Cfg:
        model_type = "mamba"

    class Fake(torch.nn.Module):
        config = Cfg()

    with pytest.raises(ModelError, match="unknown architecture 'mamba'.*llama"):
        site_map(Fake())
    with pytest.raises(ModelError, match="layer=9 is out of range.*4 blocks"):
        sites.module(9, "residual")
    with pytest.raises(ModelError, match="site 'attn_out' does not exist"):
        sites.module(0, "attn_out")


def test_vectors():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(32, generator=g)
    neg = torch.randn(40, 32, generator=g)
    pos = neg + d + 0.1 * torch.randn(40, 32, generator=g)
    md = vectors.mean_difference(pos, neg)
    torch.testing.assert_close(md, pos.mean(0) - neg.mean(0))
    for direction in (vectors.pca_direction, vectors.probe_direction):
        v = direction(pos, neg)
        assert torch.nn.functional.cosine_similarity(v, d, dim=0) > 0.5, direction.__name__
        torch.testing.assert_close(v.norm(), md.norm(), atol=1e-4, rtol=1e-4)
    r = vectors.random_direction(32, float(md.norm()), seed=3)
    torch.testing.assert_close(r, vectors.random_direction(32, float(md.norm()), seed=3))
    assert abs(float(r.norm() - md.norm())) < 1e-4


def _attention_reference(model, sites, row, layer):
    """Attention pooling by hand: HF's own attention weights (output_attentions, eager) times
    the block's output hidden states."""
    from eas.core.capture import eager_attention

    ids = torch.tensor([row])
    with eager_attention(model), torch.no_grad():
        out = model(input_ids=ids, output_attentions=True, output_hidden_states=True)
    w = out.attentions[layer][0, :, -1, :].mean(0)
    return (w[:, None] * out.hidden_states[layer + 1][0]).sum(0)


def test_attention_pooling_weights_positions_by_the_last_tokens_attention(tiny, tokenizer):
    arch, model, sites = tiny
    r = tokens.encode(tokenizer, ["the cat sat on the mat", "a dog", "one two three four five"])
    before = model.config._attn_implementation
    got = capture.capture(model, sites, r, [1, 2], "residual", ("last", "attention", "mean"), batch_size=2)
    assert model.config._attn_implementation == before  # eager only for the attention pass
    plain = capture.capture(model, sites, r, [1, 2], "residual", ("last", "mean"), batch_size=2)
    for rule in ("last", "mean"):  # the other rules do not change when attention is also asked for
        assert torch.equal(got[rule], plain[rule])
    for i, row in enumerate(r):
        for j, layer in enumerate((1, 2)):
            ref = _attention_reference(model, sites, row, layer)  # layers below the top: no final norm
            torch.testing.assert_close(got["attention"][j, i], ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got["attention"], got["mean"])  # weights are not uniform
    # an input site of the top layer still gets that block's weights (the pass stops after them)
    pre = capture.capture(model, sites, r, [2], "residual_pre", ("attention",), batch_size=3)
    assert torch.isfinite(pre["attention"]).all()
    with pytest.raises(ValueError, match="position rule"):
        capture.capture(model, sites, r, [1], "residual", ("first",))
