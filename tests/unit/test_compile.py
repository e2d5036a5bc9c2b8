"""model.compile: the compiled model captures, steers and scores exactly as the eager one,
with hooks registered after compiling (the failure mode of compiling whole blocks)."""

from __future__ import annotations

import pytest
import torch

from eas.core import capture, compile, engine, score
from tests.conftest import make_tiny

pytest.importorskip("torch._inductor")


def _rows(n: int = 10, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 400, (int(torch.randint(6, 14, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _everything(model, sites, tok, site: str):
    """Capture at two layers, the unsteered scores and a steered grid at ``site``."""
    rows = _rows()
    head = score.LetterHead(model, score.letter_token_ids(tok, 4))
    acts = capture.capture(model, sites, rows, [1, 2], site, ("last", "mean"), 4, 0)
    g = torch.Generator().manual_seed(1)
    v = torch.randn(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd,
                    generator=g)
    cells = [engine.Cell(layer, s, v) for layer in (1, 3) for s in (2.0, 8.0)]
    steered = engine.sweep_mc(model, sites, rows, [4] * len(rows), head, site, cells, 4, 3, 0)
    unsteered = score.score_mc(model, rows, [4] * len(rows), head, 4, 0)
    return acts, steered, unsteered


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compiled_model_captures_steers_and_scores_like_eager(arch, tokenizer):
    model, sites = make_tiny(arch, seed=3)
    eager = {site: _everything(model, sites, tokenizer, site) for site in ("residual", "mlp", "mlp_input")}

    done = compile.compile_blocks(model, sites)
    names = {name.split(".", 1)[1] for name, _ in compile.regions(sites)}
    attn = sites.table["self_attn"].path
    assert attn not in names and "mlp" in names and len(done.regions) == len(compile.regions(sites)) >= 2 * sites.n_layers
    assert done.kinds == sorted(names) and done.seconds >= 0
    assert all(getattr(m.forward, "_eas_compiled", False) for _, m in compile.regions(sites))
    assert compile.compile_blocks(model, sites).regions == done.regions  # idempotent: not wrapped again

    for site, (acts0, steered0, unsteered0) in eager.items():
        acts, steered, unsteered = _everything(model, sites, tokenizer, site)
        for rule in acts0:  # capture hooks registered after compiling ran (a KeyError otherwise)
            torch.testing.assert_close(acts[rule], acts0[rule], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(unsteered, unsteered0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(steered, steered0, rtol=1e-4, atol=1e-5)
        # the steering hooks ran inside the compiled model: steered scores moved
        assert (steered - unsteered[None]).abs().max() > 1e-2


def test_compile_failure_is_a_clear_error(monkeypatch, tokenizer):
    model, sites = make_tiny("llama", seed=4)

    def broken(fn, **_):
        def call(*a, **k):
            raise RuntimeError("inductor: no working C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(RuntimeError, match="model.compile=false"):
        compile.compile_blocks(model, sites)
