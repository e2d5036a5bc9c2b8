"""The generation engine on the embedded SmolLM2-135M-Instruct: chat prompts, steered and
unsteered cells in one batch, token for token the naive reference's."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from eas import config, models
from eas.core import generate as gen
from eas.core import tokens
from eas.prompts import Prompter

PROMPTS = ["A stranger on the train drops their wallet. What do you do?",
           "Write a short message telling a coworker the meeting moved to 3pm.",
           "Your friend is nervous before an exam. What do you tell them?"]


@pytest.mark.integration
def test_engine_equals_naive_on_smollm2():
    lm = models.load(OmegaConf.merge(OmegaConf.structured(config.ModelConfig), config.model_preset(
        "smollm2_135m", "model")), seed=0)
    prompter = Prompter(lm.tokenizer, "chat")
    rows = tokens.encode(lm.tokenizer, [prompter.generation(p) for p in PROMPTS], prompter.add_special_tokens)
    v = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    v = 4 * v / v.norm()
    cells = [gen.GenCell(), gen.GenCell(10, 2.0, v), gen.GenCell(20, 2.0, v)]
    s = gen.Sampling(max_new_tokens=16)
    pad = tokens.pad_id(lm.tokenizer)
    got = gen.generate(lm.model, lm.sites, rows, "residual", cells, s, batch_size=9, pad=pad)
    assert got == gen.naive_generate(lm.model, lm.sites, rows, "residual", cells, s, pad=pad)
    assert got[1] != got[0] and got[2] != got[0]
    got_gen = gen.generate(lm.model, lm.sites, rows, "residual", cells, s, "generated", pad=pad)
    assert got_gen == gen.naive_generate(lm.model, lm.sites, rows, "residual", cells, s, "generated", pad=pad)
