"""Activation patching (eas.core.patch): the tiled engine equals one full forward per patch on every
architecture and site, attribution patching equals a finite difference, and bad input says what to fix."""

from __future__ import annotations

import pytest
import torch

from eas.core import patch as P
from eas.core.intervene import add
from eas.core.sites import ModelError


def _pair(n_t: int, n_s: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 400, (n_t,), generator=g).tolist(), torch.randint(3, 400, (n_s,), generator=g).tolist()


READ = P.Readout([[5], [7, 9]], 0, 1)


@pytest.mark.parametrize("mode", ["replace", "direction", "mean", "zero"])
def test_tiled_patching_equals_one_forward_per_patch(tiny, mode):
    _, model, sites = tiny
    target, source = _pair(13, 13)
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(1)
    value = P.Value(mode, direction=torch.randn(d, generator=g), value=torch.randn(d, generator=g))
    patches = [P.Patch(layer, (q,)) for layer in range(sites.n_layers) for q in range(13)]
    patches += [P.Patch(1, tuple(range(4, 13))), P.Patch(3, (0, 12))]
    for site in sites.names:
        fast = P.patch(model, sites, site, target, patches, READ, source, value, rows_per_pass=10,
                       positions_per_pass=3)
        slow = P.patch_naive(model, sites, site, target, patches, READ, source, value)
        for k in slow:
            torch.testing.assert_close(fast[k], slow[k], atol=2e-5, rtol=1e-4, msg=f"{site} {mode} {k}")
        # the patches do something (a test of equal no-ops would prove nothing)
        assert float((fast["logit_diff"] - fast["target"]["logit_diff"]).abs().max()) > 1e-4, site


def test_readout_metrics_match_their_definitions(llama):
    model, sites = llama
    target, source = _pair(9, 9, seed=3)
    out = P.patch(model, sites, "residual", target, [P.Patch(3, tuple(range(9)))], READ, source)
    # patching every position of the last block's output gives the source's own logits
    for k in ("logit_diff", "p_good", "pick", "top"):
        torch.testing.assert_close(out[k], out["source"][k], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([source])).logits[0, -1].float()
        base = torch.log_softmax(model(input_ids=torch.tensor([target])).logits[0, -1].float(), -1)
    logp = torch.log_softmax(logits, -1)
    want_ld = logits[5] - torch.logsumexp(logits[[7, 9]], -1)
    assert float(out["logit_diff"][0]) == pytest.approx(float(want_ld), abs=1e-5)
    assert float(out["p_good"][0]) == pytest.approx(float(logp[5].exp()), abs=1e-6)
    assert float(out["kl"][0]) == pytest.approx(float((base.exp() * (base - logp)).sum()), abs=1e-5)
    assert float(out["target"]["kl"][0]) == pytest.approx(0.0, abs=1e-6)


def test_direction_interchange_moves_only_the_component_along_the_direction(llama):
    model, sites = llama
    target, source = _pair(7, 7, seed=4)
    u = torch.randn(64)
    src = P.site_activations(model, sites, source, [2], "residual")[2]
    seen = {}

    def keep(h):
        seen["h"] = h.clone()

    from eas.core.intervene import hook
    with hook(sites, 3, "residual_pre", keep):  # block 3's input: block 2's output after the patch
        P.patch_naive(model, sites, "residual", target, [P.Patch(2, (4,))], READ, source, P.Value("direction", u))
    h = seen["h"][0, 4]
    tgt = P.site_activations(model, sites, target, [2], "residual")[2][4]
    unit = u / u.norm()
    assert float(h @ unit) == pytest.approx(float(src[4] @ unit), abs=1e-5)  # the component is the source's
    rest = lambda x: x - (x @ unit) * unit  # noqa: E731
    torch.testing.assert_close(rest(h), rest(tgt), atol=1e-5, rtol=1e-5)  # the rest is the target's


def test_end_alignment_patches_a_common_suffix(llama):
    model, sites = llama
    suffix = _pair(6, 1, seed=5)[0]
    target, source = [11, 12] + suffix, [21, 22, 23, 24] + suffix
    amap = P.align(len(target), len(source), "end")
    assert amap == {j: j + 2 for j in range(8)}
    patches = [P.Patch(layer, (q,)) for layer in range(4) for q in range(2, 8)]
    fast = P.patch(model, sites, "residual", target, patches, READ, source, align_rule="end")
    slow = P.patch_naive(model, sites, "residual", target, patches, READ, source, align_rule="end")
    torch.testing.assert_close(fast["logit_diff"], slow["logit_diff"], atol=2e-5, rtol=1e-4)


def test_attribution_patching_is_the_first_order_change(llama):
    model, sites = llama
    target, source = _pair(10, 10, seed=6)

    def metric(logits):
        return logits[5] - logits[7]

    est = P.attribution(model, sites, "residual", target, source, range(4), metric)
    assert est.shape == (4, 10) and torch.isfinite(est).all()
    src = P.site_activations(model, sites, source, range(4), "residual")
    tgt = P.site_activations(model, sites, target, range(4), "residual")
    eps = 1e-3
    with torch.no_grad():
        base = metric(model(input_ids=torch.tensor([target])).logits[0, -1])
        for layer, q in [(0, 2), (1, 9), (3, 5)]:
            delta = torch.zeros(1, 10, 64)
            delta[0, q] = eps * (src[layer][q] - tgt[layer][q])
            with add(sites, layer, "residual", delta, position="all"):
                moved = metric(model(input_ids=torch.tensor([target])).logits[0, -1])
            assert float(est[layer, q]) == pytest.approx(float((moved - base) / eps), rel=2e-2, abs=1e-4)


def test_effects_normalise_as_defined():
    t, s = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([2.0, 1.0, 0.0])
    got = P.normalised(torch.tensor([1.0, 5.0, 0.5]), t, s)
    assert got[0] == pytest.approx(0.5) and torch.isnan(got[1]) and got[2] == pytest.approx(0.75)
    assert float(P.vig_effect(torch.tensor(1.0), torch.tensor(0.0))) == pytest.approx(torch.e - 1)


def test_bad_input_names_what_to_fix(llama):
    model, sites = llama
    target, source = _pair(6, 8)
    with pytest.raises(ValueError, match="align='index' needs equal lengths"):
        P.patch(model, sites, "residual", target, [P.Patch(0, (1,))], READ, source)
    with pytest.raises(ValueError, match="position 9 is beyond the target's 6 tokens"):
        P.patch(model, sites, "residual", target, [P.Patch(0, (9,))], READ, source, align_rule="end")
    with pytest.raises(ModelError, match="layer=7 is out of range"):
        P.patch(model, sites, "residual", target, [P.Patch(7, (1,))], READ, source, align_rule="end")
    with pytest.raises(ModelError, match="site 'nope' does not exist"):
        P.patch(model, sites, "nope", target, [P.Patch(0, (1,))], READ, source, align_rule="end")
    with pytest.raises(ValueError, match="direction of width 64"):
        P.patch(model, sites, "residual", target, [P.Patch(0, (1,))], READ, source,
                P.Value("direction", torch.ones(32)), align_rule="end")
    with pytest.raises(ValueError, match="needs the source input"):
        P.patch(model, sites, "residual", target, [P.Patch(0, (1,))], READ)
    with pytest.raises(ValueError, match="good=0, bad=0"):
        P.Readout([[1], [2]], 0, 0)


def test_one_value_per_patch_equals_separate_calls(llama):
    model, sites = llama
    target, source = _pair(11, 11, seed=8)
    g = torch.Generator().manual_seed(2)
    u, v = torch.randn(64, generator=g), torch.randn(64, generator=g)
    span = tuple(range(3, 11))
    plan = [(P.Patch(1, span), P.Value("direction", u)), (P.Patch(1, span), P.Value("add", value=2.0 * v)),
            (P.Patch(2, (5,)), P.Value()), (P.Patch(0, span), P.Value("add", value=-v))]
    together = P.patch(model, sites, "residual", target, [p for p, _ in plan], READ, source, [w for _, w in plan],
                       rows_per_pass=3)
    for j, (p, w) in enumerate(plan):
        alone = P.patch_naive(model, sites, "residual", target, [p], READ, source, w)
        assert float(together["logit_diff"][j]) == pytest.approx(float(alone["logit_diff"][0]), abs=2e-5)
    # additive steering through the patch core equals eas's steering hook on the same positions
    from eas.core.intervene import steer
    with torch.no_grad(), steer(sites, 1, "residual", v, 2.0, position=3):
        logits = model(input_ids=torch.tensor([target])).logits[0, -1]
    assert float(together["logit_diff"][1]) == pytest.approx(float(READ(logits[None])["logit_diff"][0]), abs=2e-5)
