"""eas.core.fluency: teacher-forced response log-probabilities against a naive full forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from eas.core import fluency

PROMPTS = [[1, 5, 9, 30, 31], [1, 7], [1, 12, 13, 14, 15, 16, 17, 18]]
RESPONSES = [[40, 41, 42], [50], []]


def naive(model, prompt, response):
    """One row, no padding, the whole vocabulary: log p of each response token."""
    ids = torch.tensor([prompt + response])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return torch.stack([logp[len(prompt) + j - 1, t] for j, t in enumerate(response)]) if response else torch.empty(0)


def test_response_logprobs_equal_a_naive_forward_pass(tiny):
    _arch, model, _sites = tiny
    got = fluency.response_logprobs(model, PROMPTS, RESPONSES, batch_size=3, pad=0)
    for lp, p, r in zip(got, PROMPTS, RESPONSES):
        assert lp.shape == (len(r),)
        torch.testing.assert_close(lp, naive(model, p, r), atol=1e-5, rtol=1e-5)


def test_batch_size_and_padding_change_nothing(llama):
    model, _ = llama
    one = fluency.response_logprobs(model, PROMPTS, RESPONSES, batch_size=1)
    three = fluency.response_logprobs(model, PROMPTS, RESPONSES, batch_size=3, pad=3)
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_models_own_greedy_text_is_less_perplexing_than_random_tokens(llama):
    model, _ = llama
    prompt = [1, 5, 9, 30]
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                             pad_token_id=0)[0, len(prompt):].tolist()
    rand = torch.randint(3, 400, (12,), generator=torch.Generator().manual_seed(0)).tolist()
    own, other = fluency.response_logprobs(model, [prompt, prompt], [out, rand])
    assert fluency.perplexity(own) < fluency.perplexity(other)
    assert fluency.perplexity(own) == pytest.approx(math.exp(-float(own.double().mean())))
    assert fluency.perplexity(torch.empty(0)) == 1.0


def test_bad_input(llama):
    model, _ = llama
    with pytest.raises(ValueError, match="prompt_rows has 2 rows, response_rows 1"):
        fluency.response_logprobs(model, [[1], [2]], [[3]])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        fluency.response_logprobs(model, [[]], [[3]])
