"""eas.core.generate: the batched engine equals the naive reference (one cell at a time,
batch 1, a plain hook, HF ``generate``) token for token, on every tiny architecture."""

from __future__ import annotations

import pytest
import torch

from eas.core import generate as gen
from eas.core.sites import ModelError

PROMPTS = [[1, 5, 9, 30, 31, 32, 40], [1, 7, 8], [1, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [1, 60, 61, 62, 63]]


def cells(model, strength: float = 12.0) -> list[gen.GenCell]:
    """Unsteered, and two layers x two strengths of two fixed random directions (big enough to
    change what a tiny model says)."""
    g = torch.Generator().manual_seed(0)
    d = model.config.hidden_size
    v1, v2 = torch.randn(d, generator=g), torch.randn(d, generator=g)
    v1, v2 = v1 / v1.norm(), v2 / v2.norm()
    return [gen.GenCell(), gen.GenCell(1, strength, v1), gen.GenCell(1, -strength, v1),
            gen.GenCell(2, strength, v2), gen.GenCell(2, strength / 2, v2)]


def _changed(out) -> bool:
    return any(out[c] != out[0] for c in range(1, len(out)))


@pytest.mark.parametrize("steer_on,steer_from", [("all", None), ("prompt", None), ("generated", None),
                                                 ("all", 4)])
def test_engine_equals_the_naive_reference_greedy(tiny, steer_on, steer_from):
    _arch, model, sites = tiny
    cs = cells(model)
    s = gen.Sampling(max_new_tokens=6)
    eos: list[int] = []  # random models emit any token: no stop, so every row runs its 6 steps
    got = gen.generate(model, sites, PROMPTS, "residual", cs, s, steer_on, steer_from, eos=eos, batch_size=7)
    want = gen.naive_generate(model, sites, PROMPTS, "residual", cs, s, steer_on, steer_from, eos=eos)
    assert got == want
    assert _changed(got)  # the test can fail: steering changes the text
    assert all(len(r) == 6 for c in got for r in c)


def test_engine_equals_the_naive_reference_sampling(tiny):
    _arch, model, sites = tiny
    cs = cells(model)
    s = gen.Sampling(max_new_tokens=5, temperature=0.9, top_p=0.8, seed=3)
    got = gen.generate(model, sites, PROMPTS, "residual", cs, s, eos=[], batch_size=5)
    assert got == gen.naive_generate(model, sites, PROMPTS, "residual", cs, s, eos=[])
    greedy = gen.generate(model, sites, PROMPTS, "residual", cs, gen.Sampling(max_new_tokens=5), eos=[])
    assert got != greedy
    other_seed = gen.generate(model, sites, PROMPTS, "residual", cs,
                              gen.Sampling(max_new_tokens=5, temperature=0.9, top_p=0.8, seed=4), eos=[])
    assert other_seed != got


def test_batch_size_changes_nothing_and_cells_of_a_prompt_share_noise(llama):
    model, sites = llama
    cs = cells(model)
    s = gen.Sampling(max_new_tokens=6, temperature=1.0, seed=1)
    one = gen.generate(model, sites, PROMPTS, "residual", cs, s, "generated", eos=[], batch_size=1)
    many = gen.generate(model, sites, PROMPTS, "residual", cs, s, "generated", eos=[], batch_size=64)
    assert one == many
    # the same cell twice is the same rows: same prompt, same noise, same text
    twice = gen.generate(model, sites, PROMPTS, "residual", [cs[1], cs[1]], s, "generated", eos=[])
    assert twice[0] == twice[1] == one[1]


def test_rows_stop_at_their_own_eos(llama):
    model, sites = llama
    cs = cells(model)
    free = gen.generate(model, sites, PROMPTS, "residual", cs, gen.Sampling(max_new_tokens=8), eos=[])
    stop = free[0][0][3]  # the 4th token the unsteered model says to the first prompt
    got = gen.generate(model, sites, PROMPTS, "residual", cs, gen.Sampling(max_new_tokens=8), eos=stop)
    for c in range(len(cs)):
        for i in range(len(PROMPTS)):
            row = free[c][i]
            cut = row.index(stop) if stop in row else len(row)
            assert got[c][i] == row[:cut]  # cut before the stop, the rest untouched
    assert len(got[0][0]) <= 3 and any(len(r) == 8 for c in got for r in c)  # one row cut, others run on
    assert got == gen.naive_generate(model, sites, PROMPTS, "residual", cs, gen.Sampling(max_new_tokens=8), eos=stop)


def test_other_sites_agree_too(llama):
    model, sites = llama
    cs = cells(model, 6.0)
    for site in ("mlp", "residual_pre"):
        s = gen.Sampling(max_new_tokens=4)
        got = gen.generate(model, sites, PROMPTS, site, cs, s, eos=[])
        assert got == gen.naive_generate(model, sites, PROMPTS, site, cs, s, eos=[])
        assert _changed(got)


def test_bad_input(llama):
    model, sites = llama
    v = torch.ones(model.config.hidden_size)
    ok = [gen.GenCell(1, 1.0, v)]
    with pytest.raises(ValueError, match="steer_on='both'"):
        gen.generate(model, sites, PROMPTS, "residual", ok, steer_on="both")
    with pytest.raises(ModelError, match="layer"):
        gen.generate(model, sites, PROMPTS, "residual", [gen.GenCell(99, 1.0, v)])
    with pytest.raises(ValueError, match=r"cells\[0\]\.vector has shape \(3,\).*hidden size is 64"):
        gen.generate(model, sites, PROMPTS, "residual", [gen.GenCell(1, 1.0, torch.ones(3))])
    with pytest.raises(ValueError, match=r"token_rows\[1\] is empty"):
        gen.generate(model, sites, [[1, 2], []], "residual", ok)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        gen.generate(model, sites, PROMPTS, "residual", ok, gen.Sampling(max_new_tokens=0))
    with pytest.raises(ValueError, match="temperature=-1"):
        gen.generate(model, sites, PROMPTS, "residual", ok, gen.Sampling(temperature=-1))
    with pytest.raises(ValueError, match="top_p=0"):
        gen.generate(model, sites, PROMPTS, "residual", ok, gen.Sampling(temperature=1, top_p=0))
    with pytest.raises(ValueError, match=r"max_position_embeddings=512"):
        gen.generate(model, sites, [[1] * 500], "residual", ok, gen.Sampling(max_new_tokens=20))
    with pytest.raises(ValueError, match="batch_size=0"):
        gen.generate(model, sites, PROMPTS, "residual", ok, batch_size=0)
