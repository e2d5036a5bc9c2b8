"""Fidelity: eas's patching equals TransformerLens's and nnsight's on the same tiny random GPT-2 and Llama
(float32, 1e-5). Both libraries are test-only dependencies (extra ``oracles``), never eas's engine."""

from __future__ import annotations

import warnings

import pytest
import torch

from eas import models
from eas.core import patch as P
from tests.conftest import make_tiny

N = 6  # positions; the oracles run one forward per patch (TransformerLens's loop is slow even on tiny models)
BLOCKS = {"gpt2": lambda nm: nm.transformer.h, "llama": lambda nm: nm.model.layers}


def _pair():
    g = torch.Generator().manual_seed(11)
    return torch.randint(3, 400, (1, N), generator=g), torch.randint(3, 400, (1, N), generator=g)


def _eas(model, sites, site, target, source) -> torch.Tensor:
    patches = [P.Patch(layer, (q,)) for layer in range(sites.n_layers) for q in range(N)]
    got = P.patch(model, sites, site, target[0].tolist(), patches, P.Readout([[5], [7]], 0, 1), source[0].tolist())
    return got["logit_diff"].reshape(sites.n_layers, N)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patching_equals_transformer_lens(arch, tmp_path):
    pytest.importorskip("transformer_lens", reason="TransformerLens is a test oracle: pip install -e '.[oracles]'")
    from transformers import AutoTokenizer
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    models.tiny_tokenizer().save_pretrained(tmp_path)  # the bridge re-reads its tokenizer from a path
    model, sites = make_tiny(arch)  # its own copy: the bridge switches it to eager attention
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(arch, hf_model=model, tokenizer=AutoTokenizer.from_pretrained(
            tmp_path), device="cpu")
    target, source = _pair()
    _, cache = bridge.run_with_cache(source)

    def metric(logits):
        return logits[0, -1, 5] - logits[0, -1, 7]

    for site, fn in (("residual_pre", patching.get_act_patch_resid_pre), ("mlp", patching.get_act_patch_mlp_out),
                     ("self_attn", patching.get_act_patch_attn_out)):
        want = torch.as_tensor(fn(bridge, target, cache, metric)).reshape(sites.n_layers, N)
        got = _eas(model, sites, site, target, source)
        assert float(want.std()) > 1e-4, site  # the patches do something
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5, msg=site)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patching_equals_nnsight(arch):
    pytest.importorskip("nnsight", reason="nnsight is a test oracle: pip install -e '.[oracles]'")
    from nnsight import NNsight

    model, sites = make_tiny(arch)
    nm = NNsight(model)
    target, source = _pair()
    want = torch.zeros(sites.n_layers, N)
    for layer in range(sites.n_layers):
        with nm.trace(source):
            h = BLOCKS[arch](nm)[layer].output.save()
        for q in range(N):
            with nm.trace(target):
                BLOCKS[arch](nm)[layer].output[:, q, :] = h[:, q, :]
                logits = nm.output.logits.save()
            want[layer, q] = logits[0, -1, 5] - logits[0, -1, 7]
    got = _eas(model, sites, "residual", target, source)
    assert float(want.std()) > 1e-4
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
