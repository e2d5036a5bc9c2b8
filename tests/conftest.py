"""Shared fixtures: tiny random-init models (built in-process, no download)."""

from __future__ import annotations

import os

import pytest
import torch

from eas import models

TINY = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=400, max_position_embeddings=512),
    "gpt2": dict(n_embd=64, n_layer=4, n_head=4, vocab_size=400, n_positions=512, bos_token_id=1,
                 eos_token_id=2),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                     vocab_size=400, max_position_embeddings=512),
    "gemma3_text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, vocab_size=400, sliding_window=8,
                        max_position_embeddings=512),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=400, max_position_embeddings=512),
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4, vocab_size=400,
                word_embed_proj_dim=64, max_position_embeddings=512),
}

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tokenizer():
    return models.tiny_tokenizer()


def make_tiny(arch: str, seed: int = 0):
    model = models.random_model(arch, TINY[arch], seed=seed)
    return model, models.site_map(model)


@pytest.fixture(scope="session", params=sorted(TINY))
def tiny(request):
    model, sites = make_tiny(request.param)
    return request.param, model, sites


@pytest.fixture(scope="session")
def llama():
    return make_tiny("llama")


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("EAS_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("EAS_STORE", str(tmp_path / "store"))
