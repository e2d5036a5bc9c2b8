"""An OpenAI-compatible API judge answering a rubric as yes/no: column ``api_judge`` (or
``api_judge_<name>``) = P(yes) from the first token's top log-probabilities.

``params``: ``rubric`` (``{question}``, ``{response}``), ``model`` (the endpoint's model name),
``api_base``, ``api_key_env`` (the environment variable holding the key; the key is never
printed or written), ``name``, ``on_junk`` (``error``, the default: a reply with neither yes
nor no stops the scorer, naming it; ``low``: it counts as P(yes) = 1e-4). Every answer is cached
in the store (``eas.judges.ApiJudge``): a re-run, or a run resumed after the endpoint went
away, asks nothing twice. An endpoint that does not answer is an error before generating.
"""

from __future__ import annotations

import math

from eas import config
from eas.judges import ApiJudge, probe_endpoint, rubric_text
from eas.scorers.base import known, param
from eas.scorers.judge import column

KEYS = ("rubric", "model", "api_base", "api_key_env", "name", "on_junk", "timeout")


def validate(params: dict, field: str) -> None:
    known(params, field, KEYS)
    rubric = param(params, "rubric", field, str)
    if not rubric:
        raise config.ConfigError(f"{field}.rubric is missing: a question with {{question}} and {{response}}")
    rubric_text(rubric, "q", "r", f"{field}.rubric")
    for key in ("model", "api_base", "api_key_env"):
        if not param(params, key, field, str):
            raise config.ConfigError(f"{field}.{key} is missing (e.g. model: gpt-4o-mini, "
                                     f"api_base: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY)")
    param(params, "on_junk", field, str, "error", ("error", "low"))
    param(params, "name", field, str)
    param(params, "timeout", field, float, 60.0)


def columns(params: dict) -> list[str]:
    return [column("api_judge", params)]


def make(params: dict, ctx):
    if ctx.store_root is None:
        raise config.ConfigError("the api_judge scorer caches its answers in the store: give it a store root")
    field = "experiment.scorers.api_judge"
    offline = "the judge scorer (experiment.scorers.judge)"
    judge = ApiJudge(params["model"], params["api_base"], params["api_key_env"], ctx.store_root, params["rubric"],
                     float(params.get("timeout", 60.0)), params.get("on_junk", "error"), field, offline)
    probe_endpoint(params["api_base"], field=field, offline=offline)
    col = column("api_judge", params)

    def score(samples):
        lp = judge([s.prompt for s in samples], [s.response for s in samples])
        return {col: [math.exp(float(v)) for v in lp]}

    score.fingerprint = [params["api_base"], params["model"]]
    return score
