"""eas.core.monitor: per-token projections recorded in the passes that run anyway equal the
site tensor of a plain full forward (one text at a time, no padding, no cache) times the
directions; monitoring generation changes no token."""

from __future__ import annotations

import pytest
import torch

from eas.core import generate as gen
from eas.core import monitor as M
from eas.core.intervene import add, hook

PROMPTS = [[1, 5, 9, 30, 31, 32, 40], [1, 7, 8], [1, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [1, 60, 61, 62, 63]]


def directions(model, layers, n_traits=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {L: torch.randn(n_traits, model.config.hidden_size, generator=g) for L in layers}


def full_forward(model, sites, site, row, dirs, delta=None):
    """``[n_tokens, layer, trait]`` of one unpadded text: hooks read the site after ``delta``
    (``(layer, [d_model], first steered position)``) is added."""
    seen = {}
    with torch.no_grad():
        ctx = [add(sites, delta[0], site, delta[1], position=delta[2])] if delta else []
        for c in ctx:
            c.__enter__()
        try:
            hooks = [hook(sites, L, site, lambda h, L=L: seen.__setitem__(L, h[0].float())) for L in dirs]
            for h in hooks:
                h.__enter__()
            try:
                model(input_ids=torch.tensor([row]))
            finally:
                for h in reversed(hooks):
                    h.__exit__(None, None, None)
        finally:
            for c in reversed(ctx):
                c.__exit__(None, None, None)
    return torch.stack([seen[L] @ dirs[L].float().T for L in sorted(dirs)], dim=1)


@pytest.mark.parametrize("site", ["residual", "mlp", "residual_pre"])
def test_project_equals_a_full_forward_per_text(tiny, site):
    _arch, model, sites = tiny
    if site not in sites.table:
        pytest.skip(f"{_arch} has no {site} site")
    dirs = directions(model, [0, 2])
    mon = M.Monitor(sites, site, dirs)
    got = M.project(model, mon, PROMPTS, batch_size=3, pad=0)
    for row, g in zip(PROMPTS, got):
        assert g.shape == (len(row), 2, 3)
        torch.testing.assert_close(g, full_forward(model, sites, site, row, dirs), atol=1e-4, rtol=1e-4)


def test_project_stops_at_the_highest_monitored_layer(llama):
    model, sites = llama
    ran = []
    with hook(sites, 3, "residual", lambda h: ran.append(1)):
        M.project(model, M.Monitor(sites, "residual", directions(model, [1])), PROMPTS[:2])
    assert ran == []  # block 3 never ran
    with hook(sites, 3, "residual", lambda h: ran.append(1)):
        M.project(model, M.Monitor(sites, "residual", directions(model, [3])), PROMPTS[:2])
    assert ran


@pytest.mark.parametrize("steer_on", ["all", "generated"])
def test_generation_trace_equals_a_full_forward_of_prompt_and_new_tokens(tiny, steer_on):
    _arch, model, sites = tiny
    d = model.config.hidden_size
    v = torch.randn(d, generator=torch.Generator().manual_seed(1))
    v = 8 * v / v.norm()
    cells = [gen.GenCell(), gen.GenCell(1, 1.5, v), gen.GenCell(2, -1.0, v)]
    s = gen.Sampling(max_new_tokens=5)
    plain = gen.generate(model, sites, PROMPTS, "residual", cells, s, steer_on, eos=[], batch_size=4)
    # an EOS that some rows meet early: rows of several lengths, some dropped mid-batch
    eos = [plain[0][0][1]]
    plain = gen.generate(model, sites, PROMPTS, "residual", cells, s, steer_on, eos=eos, batch_size=4)
    dirs = directions(model, [1, 3], n_traits=2)
    mon = M.Monitor(sites, "residual", dirs)
    got = gen.generate(model, sites, PROMPTS, "residual", cells, s, steer_on, eos=eos, batch_size=4, monitor=mon)
    assert got == plain  # monitoring changes nothing the model says
    lengths = {len(r) for c in got for r in c}
    assert len(lengths) > 1  # the EOS did cut some rows short
    for c, cell in enumerate(cells):
        for i, row in enumerate(PROMPTS):
            full = list(row) + got[c][i]
            first = 0 if steer_on == "all" else len(row)
            delta = (cell.layer, cell.strength * cell.vector, first) if cell.steered else None
            want = full_forward(model, sites, "residual", full, dirs, delta)
            trace = mon.trace.get(c, i)
            assert trace.shape == (len(full), 2, 2)
            torch.testing.assert_close(trace, want, atol=1e-4, rtol=1e-4)


def test_monitor_checks_its_directions(llama):
    model, sites = llama
    with pytest.raises(ValueError, match="one trait count"):
        M.Monitor(sites, "residual", {0: torch.zeros(2, 64), 1: torch.zeros(3, 64)})
    with pytest.raises(ValueError, match="empty"):
        M.Monitor(sites, "residual", {})
    with pytest.raises(Exception, match="layer"):
        M.Monitor(sites, "residual", {99: torch.zeros(2, 64)})


@pytest.mark.parametrize("site", ["residual", "residual_pre"])
def test_project_runs_a_shared_prefix_once_and_equals_the_full_forward(tiny, site):
    _arch, model, sites = tiny
    head = [1, 70, 71, 72, 73, 74, 75, 76, 77, 78]  # a system prompt every row starts with
    rows = [head + r[1:] for r in PROMPTS] + [head + [9]]
    dirs = directions(model, [1, 2])
    mon = M.Monitor(sites, site, dirs)
    calls = []
    with hook(sites, 0, site, lambda h: calls.append(h.shape[-2])):
        got = M.project(model, mon, rows, batch_size=2, pad=0, min_shared=4)
    assert calls[0] == len(head)  # the prefix ran once, alone
    tails = sorted((len(r) - len(head) for r in rows), reverse=True)
    assert calls[1:] == tails[::2]  # then each batch of two runs only its rows' own tokens
    for row, g in zip(rows, got):
        assert g.shape == (len(row), 2, 3)
        torch.testing.assert_close(g, full_forward(model, sites, site, row, dirs), atol=1e-4, rtol=1e-4)
