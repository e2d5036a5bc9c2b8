"""GPU paths (skipped without CUDA): the engine in float32 and bfloat16 against the naive loop,
at an output and an input site; and the OOM policy of ``eas.resources``."""

from __future__ import annotations

import pytest
import torch

from eas import models, resources
from eas.core import engine, score, tokens

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("site", ["residual", "mlp_input"])
@pytest.mark.parametrize("dtype,min_agree", [(torch.float32, 1.0), (torch.bfloat16, 0.9)])
def test_engine_on_cuda(tokenizer, dtype, min_agree, site):
    cfg = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
           "num_key_value_heads": 2, "vocab_size": 400, "max_position_embeddings": 1024}
    model = models.random_model("llama", cfg, dtype=dtype, device="cuda")
    sites = models.site_map(model)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 400, (int(n),), generator=g).tolist() for n in torch.randint(20, 80, (24,), generator=g)]
    ids = score.letter_token_ids(tokenizer, 4)
    head = score.LetterHead(model, ids)
    cells = [engine.Cell(L, s, torch.randn(256, generator=g).to("cuda", dtype)) for L in (1, 4) for s in (0.0, 2.0)]
    fast = engine.sweep_mc(model, sites, rows, [4] * len(rows), head, site, cells, batch_size=8,
                           pad=tokens.pad_id(tokenizer))
    slow = engine.naive_sweep_mc(model, sites, rows, [4] * len(rows), ids, site, cells)
    agree = (fast.argmax(-1) == slow.argmax(-1)).float().mean().item()
    assert agree >= min_agree
    if dtype == torch.float32:
        torch.testing.assert_close(fast, slow, atol=1e-3, rtol=1e-3)


OOM = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"


def test_retry_on_oom_halves_the_batch():
    seen, warned = [], []

    def fn(bs):
        seen.append(bs)
        if bs > 4:
            raise torch.cuda.OutOfMemoryError(OOM)
        return bs

    assert resources.retry_on_oom(fn, 32, warned.append) == 4 and seen == [32, 16, 8, 4]
    assert warned == [f"out of memory: retrying with batch_size={n}" for n in (16, 8, 4)]


def test_retry_on_oom_gives_up_at_1_and_passes_other_errors():
    def always(bs):
        raise torch.cuda.OutOfMemoryError(OOM)

    with pytest.raises(RuntimeError, match="out of memory at batch_size=1 .started at 3.") as e:
        resources.retry_on_oom(always, 3)
    assert isinstance(e.value.__context__, torch.cuda.OutOfMemoryError)
    seen = []

    def broken(bs):
        seen.append(bs)
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        resources.retry_on_oom(broken, 8)
    assert seen == [8]


def test_auto_batch_size_on_cpu(llama):
    model, _ = llama
    assert resources.auto_batch_size(model) == 16


@needs_cuda
def test_retry_on_oom_recovers_from_a_real_cuda_oom():
    free, _ = torch.cuda.mem_get_info()
    per_row = free // 6  # 16 and 8 rows cannot fit, 4 can

    def fn(bs):
        x = torch.empty(bs * per_row, dtype=torch.uint8, device="cuda")
        del x
        return bs

    assert resources.retry_on_oom(fn, 16) == 4


def test_generation_batch_size_follows_the_row_length(llama):
    # on CPU: as many rows as fit the token budget, at least 1, at most max_rows
    model, _ = llama
    assert resources.generation_batch_size(model, 100, token_budget=1000) == 10
    assert resources.generation_batch_size(model, 101, token_budget=1000) == 9
    assert resources.generation_batch_size(model, 5000, token_budget=1000) == 1
    assert resources.generation_batch_size(model, 1, token_budget=10**6, max_rows=64) == 64
