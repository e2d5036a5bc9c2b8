"""model.adapter: a peft LoRA merged on load, its digest in the fingerprint, and the errors that
name model.adapter (missing folder, not an adapter, made for another base)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from eas import models
from eas.config import ModelConfig
from eas.core.sites import ModelError

X = torch.tensor([[1, 5, 9, 20, 33, 7, 2, 41]])


def _cfg(**fields):
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(models.Path(__file__).parents[2]
                                                                            / "conf" / "model" / "tiny_random.yaml"))
    for k, v in fields.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


def _make_adapter(folder, init_seed: int, cfg=None, seed: int = 0):
    """A LoRA with random A and B (no training): it changes every logit."""
    from peft import LoraConfig, get_peft_model

    base = models.load(cfg or _cfg(), seed=seed)
    torch.manual_seed(init_seed)
    peft = get_peft_model(base.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return _make_adapter(root / "a", 1), _make_adapter(root / "b", 2)


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(X).logits


def test_fingerprint_without_adapter_is_unchanged():
    ident = models.ModelIdentity("random", "", "", "float32", "cpu", "sdpa", architecture="llama",
                                 random_config={"hidden_size": 64}, seed=0)
    assert models.model_fingerprint(ident) == (
        'random:: dtype=float32 device=cpu attn_implementation=sdpa quantization=none compile=false '
        'trust_remote_code=false architecture=llama random_config={"hidden_size": 64} seed=0')


def test_merged_adapter_equals_peft_unmerged_and_changes_the_logits(adapters):
    from peft import PeftModel

    a, _ = adapters
    base = models.load(_cfg())
    base_logits = _logits(base.model)
    merged = models.load(_cfg(adapter=str(a)))
    assert type(merged.model) is type(base.model)  # a plain transformers model: sites and hooks unchanged
    assert merged.sites.n_layers == base.sites.n_layers
    got = _logits(merged.model)
    unmerged = PeftModel.from_pretrained(models.load(_cfg()).model, str(a)).eval()
    want = _logits(unmerged)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (got - base_logits).abs().max() > 1e-2


def test_fingerprints_differ_by_adapter_and_not_by_folder(adapters, tmp_path):
    a, b = adapters
    base = models.load(_cfg()).fingerprint
    fa = models.load(_cfg(adapter=str(a))).fingerprint
    fb = models.load(_cfg(adapter=str(b))).fingerprint
    assert len({base, fa, fb}) == 3
    assert "adapter=" not in base and fa.startswith(base + " adapter=sha256:")
    moved = shutil.copytree(a, tmp_path / "elsewhere" / "a")
    assert models.load(_cfg(adapter=str(moved))).fingerprint == fa  # nothing path-dependent


def test_missing_folder_and_non_adapter_folder(tmp_path):
    with pytest.raises(ModelError, match=r"model.adapter='.*nope': no such folder"):
        models.load(_cfg(adapter=str(tmp_path / "nope")))
    with pytest.raises(ModelError, match=r"model.adapter=.* has no adapter_config.json"):
        models.load(_cfg(adapter=str(tmp_path)))


def test_adapter_for_another_width_names_model_adapter(adapters, tmp_path):
    a, _ = adapters
    other = _make_adapter(tmp_path / "wide", 1, _cfg(**{"random_config.hidden_size": 32}))
    msg = r"model.adapter=.* does not fit model 'tiny_random' \(the adapter was made for base_model_name_or_path"
    with pytest.raises(ModelError, match=msg + r".*size mismatch"):
        models.load(_cfg(adapter=str(other)))
    bad = shutil.copytree(a, tmp_path / "targets")
    conf = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**conf, "target_modules": ["no_such_proj"]}))
    with pytest.raises(ModelError, match=msg + r".*no_such_proj"):
        models.load(_cfg(adapter=str(bad)))


def test_eas_adapter_json_names_the_base_it_was_trained_on(adapters, tmp_path):
    a, _ = adapters
    folder = shutil.copytree(a, tmp_path / "a")
    base = models.load(_cfg(), seed=0)
    (folder / models.ADAPTER_META).write_text(json.dumps({
        "base_fingerprint": base.fingerprint, "base_name": "tiny_random",
        "base_weights": models.base_weights(base.identity)}))
    assert models.load(_cfg(adapter=str(folder)), seed=0).fingerprint != base.fingerprint
    # same shapes, other weights: only eas_adapter.json can tell
    with pytest.raises(ModelError, match=r"model.adapter=.* was trained on 'tiny_random' .*seed=0.*; the loaded "
                                         r"base is 'tiny_random' .*seed=1"):
        models.load(_cfg(adapter=str(folder)), seed=1)
    # the dtype or device it runs in is not another base
    assert models.base_weights(base.identity) == models.base_weights(
        models.ModelIdentity(**{**base.identity.__dict__, "dtype": "bfloat16", "device": "cuda:0"}))
