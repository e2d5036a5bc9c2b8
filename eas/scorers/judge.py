"""A local judge model answering a rubric about each (prompt, response).

``params``:
- ``rubric``: a template with ``{question}`` (the prompt) and ``{response}``;
- ``scale``: ``yes_no`` (column = P(yes), 0-1) or ``0-10`` (column = the expected score under the
  judge's distribution over the options 0..10, asked as an 11-option multiple-choice item);
- ``model``: ``same`` (the subject model, unsteered; the offline default) or a ``conf/model``
  preset name (loaded once; its fingerprint joins the score records' keys);
- ``name``: the column is ``judge_<name>`` instead of ``judge``, so rubrics can coexist.

Answers are read from letter log-probabilities (``eas.judges.LocalJudge``): deterministic, no
sampling, no parsing of free text.
"""

from __future__ import annotations

import torch

from eas import config, models
from eas.judges import SCALE_0_10, YES_NO, LocalJudge, rubric_text
from eas.scorers.base import known, param

SCALES = ("yes_no", "0-10")
KEYS = ("rubric", "scale", "model", "name")


def validate(params: dict, field: str) -> None:
    known(params, field, KEYS)
    rubric = param(params, "rubric", field, str)
    if not rubric:
        raise config.ConfigError(f"{field}.rubric is missing: a question with {{question}} and {{response}}")
    rubric_text(rubric, "q", "r", f"{field}.rubric")  # a bad template fails now, not after generating
    param(params, "scale", field, str, "yes_no", SCALES)
    model = param(params, "model", field, str, "same")
    if model != "same":
        config.model_preset(model, f"{field}.model")
    param(params, "name", field, str)


def column(base: str, params: dict) -> str:
    return f"{base}_{params['name']}" if params.get("name") else base


def columns(params: dict) -> list[str]:
    return [column("judge", params)]


def make(params: dict, ctx):
    scale = params.get("scale", "yes_no")
    model_name = params.get("model", "same")
    if model_name == "same":
        model, tok, fingerprint = ctx.model, ctx.tokenizer, None
    else:
        lm = models.load(config.model_preset(model_name, "experiment.scorers.judge.model"))
        model, tok, fingerprint = lm.model, lm.tokenizer, lm.fingerprint
    options = YES_NO if scale == "yes_no" else SCALE_0_10
    judge = LocalJudge(model, tok, params["rubric"], ctx.prompt_format, ctx.batch_size, options)
    col = column("judge", params)

    def score(samples):
        probs = judge.probabilities([s.prompt for s in samples], [s.response for s in samples])
        if scale == "yes_no":
            return {col: probs[:, 0].tolist()}
        return {col: (probs * torch.arange(len(options), dtype=probs.dtype)).sum(-1).tolist()}

    score.fingerprint = fingerprint
    return score
