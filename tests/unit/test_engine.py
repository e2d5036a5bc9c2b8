"""The fast engine (``eas.core.engine``) on tiny random models: agreement with the naive loop
at every site of every family, and no deprecated transformers API in its calls."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from eas.core import capture, engine, score, tokens, vectors
from tests.unit.test_core import TEXTS, rows  # noqa: F401 - the same texts as the core's tests


@pytest.mark.parametrize("rule", ["last", "mid", "mean"])
def test_engine_agrees_with_naive_loop(tiny, tokenizer, rule):
    _, model, sites = tiny
    r = rows(tokenizer)
    ids = score.letter_token_ids(tokenizer, 4)
    head = score.LetterHead(model, ids)
    n_opts = [4, 3, 4]
    for site in sites.names:  # output and input sites alike
        acts = capture.capture(model, sites, r, [0, 2, 3], site, (rule,))[rule]
        cells = [engine.Cell(L, s, vectors.mean_difference(acts[k, :2], acts[k, 2:]) * 3)
                 for k, L in enumerate([0, 2, 3]) for s in (0.0, 1.0, -4.0)]
        fast = engine.sweep_mc(model, sites, r, n_opts, head, site, cells, batch_size=2, cells_per_pass=4,
                               pad=tokens.pad_id(tokenizer))
        slow = engine.naive_sweep_mc(model, sites, r, n_opts, ids, site, cells)
        finite = torch.isfinite(slow)
        assert torch.equal(finite, torch.isfinite(fast)), site
        torch.testing.assert_close(fast[finite], slow[finite], atol=2e-4, rtol=1e-4)
        assert (fast.argmax(-1) == slow.argmax(-1)).float().mean() == 1.0, site


def test_engine_zero_strength_equals_unsteered(llama, tokenizer):
    model, sites = llama
    r = rows(tokenizer)
    head = score.LetterHead(model, score.letter_token_ids(tokenizer, 4))
    plain = score.score_mc(model, r, [4] * 3, head, batch_size=3)
    zero = engine.sweep_mc(model, sites, r, [4] * 3, head, "residual", [engine.Cell(1, 0.0, torch.ones(64))])
    torch.testing.assert_close(zero[0], plain, atol=1e-5, rtol=1e-5)


def test_engine_calls_no_deprecated_cache_api(llama, tokenizer, monkeypatch):
    """transformers renamed ``past_key_values`` (a FutureWarning on the keyword, a log line on the
    output field); the engine must use the name the installed version takes."""
    model, sites = llama
    r = rows(tokenizer)
    head = score.LetterHead(model, score.letter_token_ids(tokenizer, 4))
    logged: list[str] = []
    # warning_once is cached per message: an earlier caller would hide it, so record every call
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, msg, *a, **k: logged.append(str(msg)),
                        raising=False)
    cells = [engine.Cell(L, 2.0, torch.ones(64)) for L in (0, 2)]
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("error", message=r".*(past_key_values|cache_params)", category=category)
        prefix = engine.prefix_cache(model, r, batch_size=2)
        cached = engine.sweep_mc(model, sites, r, [4] * 3, head, "residual", cells, prefix=prefix)
        fresh = engine.sweep_mc(model, sites, r, [4] * 3, head, "residual", cells, batch_size=2)
    assert not [m for m in logged if "past_key_values" in m or "cache_params" in m], logged
    torch.testing.assert_close(cached, fresh)
