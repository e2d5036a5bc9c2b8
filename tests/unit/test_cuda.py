"""GPU paths (skipped without CUDA): the engine in float32 and bfloat16 against the naive loop."""

from __future__ import annotations

import pytest
import torch

from eas import models
from eas.core import score, sweep, tokens

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("dtype,min_agree", [(torch.float32, 1.0), (torch.bfloat16, 0.9)])
def test_engine_on_cuda(tokenizer, dtype, min_agree):
    cfg = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=6, num_attention_heads=8,
               num_key_value_heads=2, vocab_size=400, max_position_embeddings=1024)
    model = models.random_model("llama", cfg, dtype=dtype, device="cuda")
    sites = models.site_map(model)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 400, (int(n),), generator=g).tolist() for n in torch.randint(20, 80, (24,), generator=g)]
    ids = score.letter_token_ids(tokenizer, 4)
    head = score.LetterHead(model, ids)
    cells = [sweep.Cell(L, s, torch.randn(256, generator=g).to("cuda", dtype)) for L in (1, 4) for s in (0.0, 2.0)]
    fast = sweep.sweep_mc(model, sites, rows, [4] * len(rows), head, "residual", cells, batch_size=8,
                          pad=tokens.pad_id(tokenizer))
    slow = sweep.naive_sweep_mc(model, sites, rows, [4] * len(rows), ids, "residual", cells)
    agree = (fast.argmax(-1) == slow.argmax(-1)).float().mean().item()
    assert agree >= min_agree
    if dtype == torch.float32:
        torch.testing.assert_close(fast, slow, atol=1e-3, rtol=1e-3)


def test_retry_on_oom_halves_the_batch():
    seen = []

    def fn(bs):
        seen.append(bs)
        if bs > 4:
            raise torch.cuda.OutOfMemoryError("fake")
        return bs

    assert sweep.retry_on_oom(fn, 32) == 4 and seen == [32, 16, 8, 4]
