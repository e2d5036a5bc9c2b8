"""eas.backends.vllm (engine=vllm) on the embedded SmolLM2-135M-Instruct: greedy float32 rows
token for token eas's engine's, unsteered and steered, and steering visibly taking effect.

Needs vLLM, which lives in its own environment (``bash tools/vllm_env.sh``):

    /work/vllm-env/bin/python -m pytest tests/integration/test_vllm_backend.py

Elsewhere (eas's main venv, CI) every test but the first skips.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from eas.backends import vllm as ev
from eas.core import generate as gen

BUILTIN = Path(__file__).resolve().parents[2] / "eas" / "data" / "builtin"
SKIP = "vLLM is not installed here: it lives in its own environment (bash tools/vllm_env.sh)"


def test_import_without_vllm_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if absent, even where it is installed
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    with pytest.raises(ImportError) as e:
        ev.load("/nonexistent-model-dir")
    msg = str(e.value)
    assert "engine=vllm" in msg and "tools/vllm_env.sh" in msg and "\n" not in msg


@pytest.fixture(scope="module")
def vllm_installed():
    return pytest.importorskip("vllm", reason=SKIP)


@pytest.fixture(scope="module")
def lm(vllm_installed):
    from omegaconf import OmegaConf

    from eas import config, models

    return models.load(OmegaConf.merge(OmegaConf.structured(config.ModelConfig),
                                       config.model_preset("smollm2_135m", "model")), seed=0)


@pytest.fixture(scope="module")
def rows(lm):
    from eas.core import tokens
    from eas.prompts import Prompter

    texts = [json.loads(line)["text"] for name in ("task_free", "neutral")
             for line in (BUILTIN / f"{name}.jsonl").read_text().splitlines()[:16]]
    assert len(texts) == 32
    prompter = Prompter(lm.tokenizer, "chat")
    return tokens.encode(lm.tokenizer, [prompter.generation(p) for p in texts], prompter.add_special_tokens)


def _unit(width: int, seed: int) -> torch.Tensor:
    v = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


WINDOWS = [("all", None), ("generated", None), ("prompt", None), ("all", 30)]


@pytest.fixture(scope="module")
def refs(lm, rows):
    """eas's engine first (vLLM's CPU worker pins this process's torch threads once it loads)."""
    from eas.core import tokens

    pad = tokens.pad_id(lm.tokenizer)
    v = _unit(lm.model.config.hidden_size, 0)
    big = [gen.GenCell(), gen.GenCell(14, 8.0, v)]  # residual, a mid layer (of 30), |delta| = 8
    s64 = gen.Sampling(max_new_tokens=64)
    out = {"big": (big, s64, gen.generate(lm.model, lm.sites, rows, "residual", big, s64, pad=pad))}
    small = [gen.GenCell(), gen.GenCell(10, 4.0, v), gen.GenCell(20, 8.0, _unit(lm.model.config.hidden_size, 1))]
    s16 = gen.Sampling(max_new_tokens=16)
    for on, start in WINDOWS:
        out[on, start] = (small, s16, gen.generate(lm.model, lm.sites, rows[:6], "residual", small, s16, on, start,
                                                   pad=pad))
    # the HF `model.generate` loop eas's engine is checked against, on a few rows (it runs batch 1)
    out["naive"] = gen.naive_generate(lm.model, lm.sites, rows[:2], "residual", big, s64, pad=pad)
    return out


@pytest.fixture(scope="module")
def vm(refs):
    from eas import models

    return ev.load(models.embedded_cache("smollm2_135m"), max_model_len=512)


def _report(got, ref) -> list[tuple[int, int, int]]:
    """(cell, prompt, first differing token) of every row that differs."""
    bad = []
    for c, (g, r) in enumerate(zip(got, ref)):
        for i, (a, b) in enumerate(zip(g, r)):
            if a != b:
                bad.append((c, i, next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))))
    return bad


@pytest.mark.integration
@pytest.mark.slow
def test_greedy_equals_eas_engine_unsteered_and_steered(vm, refs, rows):
    cells, s, ref = refs["big"]
    got = ev.generate(vm, rows, "residual", cells, s)
    assert _report(got, ref) == []  # 32 prompts x 64 tokens, unsteered and steered
    assert [g[:2] for g in got] == refs["naive"]  # and HF `model.generate`'s, where it ran
    # the steering took effect: a large delta changes (nearly) every row
    changed = sum(a != b for a, b in zip(got[1], got[0]))
    assert changed >= 0.75 * len(rows), f"steering changed only {changed}/{len(rows)} rows"
    assert all(len(r) > 0 for c in got for r in c)


@pytest.mark.integration
@pytest.mark.parametrize("on,start", WINDOWS)
def test_steering_windows_and_mixed_layers_equal_eas_engine(vm, refs, rows, on, start):
    cells, s, ref = refs[on, start]
    got = ev.generate(vm, rows[:6], "residual", cells, s, on, start)
    assert _report(got, ref) == []


@pytest.mark.integration
def test_unsupported_site_and_bad_layer_raise(vm, rows):
    v = _unit(vm.hidden_size, 0)
    with pytest.raises(ValueError, match="'mlp'"):
        ev.generate(vm, rows[:1], "mlp", [gen.GenCell(3, 1.0, v)], gen.Sampling(max_new_tokens=2))
    with pytest.raises(ValueError, match="layer=30"):
        ev.generate(vm, rows[:1], "residual", [gen.GenCell(30, 1.0, v)], gen.Sampling(max_new_tokens=2))


@pytest.mark.integration
def test_hook_check_catches_a_silent_hook(vm, rows, monkeypatch):
    """A hook that never fires (what a compiled model does to hooks) is an error, not a silent unsteered run."""
    monkeypatch.setattr(ev._Steer, "_hook", lambda self, layer: (lambda *a, **k: None))
    with pytest.raises(RuntimeError, match="steering did not take effect"):
        ev.generate(vm, rows[:2], "residual", [gen.GenCell(), gen.GenCell(14, 8.0, _unit(vm.hidden_size, 0))],
                    gen.Sampling(max_new_tokens=4))
