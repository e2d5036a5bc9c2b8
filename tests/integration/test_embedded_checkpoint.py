"""The embedded model's cache folder is a checkpoint any HF-compatible loader reads (real SmolLM2-135M).

About 1 s from the cache, ~30 s the first time (the GGUF conversion).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

from eas import models
from eas.config import ModelConfig

pytestmark = pytest.mark.integration

NAME = "smollm2_135m"
PROMPT = "The capital of France is"


def _cfg():
    preset = Path(__file__).resolve().parents[2] / "conf" / "model" / f"{NAME}.yaml"
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(preset))
    cfg.device = "cpu"  # the plain reload below runs on CPU: compare like with like
    return cfg


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(next(model.parameters()).device)
    with torch.no_grad():
        return model(ids).logits.float().cpu()


@pytest.fixture(scope="module")
def eas_logits():
    try:
        lm = models.load(_cfg())
    except models.ModelError as e:
        pytest.skip(str(e))
    return _logits(lm.model, lm.tokenizer)


def test_cache_reads_back_with_plain_from_pretrained(eas_logits):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.embedded_cache(NAME)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.embed_tokens.weight" in names
    plain = AutoModelForCausalLM.from_pretrained(str(folder)).eval()  # no eas code
    torch.testing.assert_close(_logits(plain, AutoTokenizer.from_pretrained(str(folder))), eas_logits)


def test_a_cache_folder_of_an_older_eas_is_not_served(eas_logits, tmp_path, monkeypatch):
    # The layout eas wrote before (GGUF quantization_config kept, only lm_head.weight of the tied
    # pair), with zeroed weights so that serving it would show in the logits.
    current = models.embedded_cache(NAME)
    legacy = tmp_path / f"{NAME}-{models._embedded_version(NAME)}"
    legacy.mkdir()
    for f in current.iterdir():
        if f.name != "model.safetensors":
            (legacy / f.name).write_bytes(f.read_bytes())
    config = json.loads((current / "config.json").read_text())
    config.pop("architectures")
    config["quantization_config"] = {"quant_method": "gguf"}
    (legacy / "config.json").write_text(json.dumps(config))
    with safe_open(str(current / "model.safetensors"), "pt") as f:
        names = set(f.keys()) - {"model.embed_tokens.weight"}
        weights = {k: torch.zeros_like(f.get_tensor(k)) for k in names}
        weights["lm_head.weight"] = torch.zeros_like(f.get_tensor("model.embed_tokens.weight"))
    save_file(weights, str(legacy / "model.safetensors"), metadata={"format": "pt"})
    # the current-format folder, linked rather than converted again (the conversion is the first test's)
    (tmp_path / current.name).symlink_to(current, target_is_directory=True)
    monkeypatch.setenv("EAS_MODEL_CACHE", str(tmp_path))
    lm = models.load(_cfg())
    torch.testing.assert_close(_logits(lm.model, lm.tokenizer), eas_logits)
