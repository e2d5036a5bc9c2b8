"""Judges for ``fitness=judge`` / ``fitness=api_judge`` of experiment=cmaes.

A judge maps (questions, responses) to ``log P(rubric answer)``, one number per response.
The rubric (``experiment.judge.rubric``) is a template with ``{question}`` and
``{response}``; the judge is asked it as a yes/no question, "yes" being the behaviour.

- ``LocalJudge``: a local model (by default the steered model itself, unsteered) reads the
  rubric as a two-option multiple-choice item and its answer-letter scores give
  ``log P(yes)``. Offline, deterministic.
- ``ApiJudge``: an OpenAI-compatible chat-completions endpoint, asked for one token with
  ``logprobs``; every response is cached on disk by (endpoint, model, prompt), so a re-run
  or a resumed run sends nothing twice. No API key in the environment: a ``ConfigError``
  naming the variable, raised when the judge is built (before any model is loaded).
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from eas import store
from eas.config import ConfigError
from eas.core import score as score_mod
from eas.core import tokens
from eas.core.judge import rubric_logprob
from eas.data.schema import MCItem
from eas.prompts import Prompter

MIN_LOGPROB = math.log(1e-4)  # an API answer with neither yes nor no in its top tokens


def rubric_text(rubric: str, question: str, response: str) -> str:
    try:
        return rubric.format(question=question, response=response)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"experiment.judge.rubric={rubric!r}: not a template with {{question}} and "
                          f"{{response}} only ({e}); write literal braces as {{{{ and }}}}") from None


class LocalJudge:
    """``log P(yes)`` from a local model's letter scores for "A. Yes / B. No"."""

    def __init__(self, model, tokenizer, rubric: str, prompt_format: str = "chat", batch_size: int = 16):
        self.model = model
        self.rubric = rubric
        self.prompter = Prompter(tokenizer, prompt_format, None, "Answer with the letter of your answer.")
        self.tokenizer = tokenizer
        self.head = score_mod.LetterHead(model, score_mod.letter_token_ids(tokenizer, 2))
        self.pad = tokens.pad_id(tokenizer)
        self.batch_size = batch_size

    def __call__(self, questions: Sequence[str], responses: Sequence[str]) -> Tensor:
        items = [MCItem(str(i), rubric_text(self.rubric, q, r), ("Yes", "No"), 0)
                 for i, (q, r) in enumerate(zip(questions, responses))]
        rows = tokens.encode(self.tokenizer, [self.prompter.mc(it) for it in items],
                             self.prompter.add_special_tokens)
        scores = score_mod.score_mc(self.model, rows, [2] * len(rows), self.head, self.batch_size, self.pad)
        return rubric_logprob(scores)


def _post(url: str, payload: dict, key: str, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class ApiJudge:
    """``log P(yes)`` from an OpenAI-compatible chat endpoint, cached on disk.

    Args:
        model: the endpoint's model name.
        base_url: e.g. ``https://api.openai.com/v1``.
        key_env: the environment variable holding the API key.
        cache_dir: where responses are kept (one JSON file per prompt).
        rubric: the template with ``{question}`` and ``{response}``.

    Raises:
        ConfigError: the key variable is unset or empty.
    """

    def __init__(self, model: str, base_url: str, key_env: str, cache_dir: str | Path, rubric: str,
                 timeout: float = 60.0):
        key = os.environ.get(key_env, "")
        if not key:
            raise ConfigError(
                f"fitness=api_judge needs an API key in ${key_env} (experiment.judge.api_key_env), and it is "
                f"not set. Export it, or use the offline local judge: experiment.fitness=judge")
        self.model, self.base_url, self.key, self.timeout = model, base_url.rstrip("/"), key, timeout
        self.cache = store.Store(cache_dir)
        self.rubric = rubric
        self.calls = 0  # requests actually sent (not answered from the cache)

    def _ask(self, prompt: str) -> dict:
        k = store.key("api_judge", self.base_url, self.model, prompt)
        hit = self.cache.get_json("api_judge", k)
        if hit is not None:
            return hit
        payload = {"model": self.model, "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 10,
                   "messages": [{"role": "user", "content": prompt + "\n\nAnswer with Yes or No."}]}
        try:
            got = _post(f"{self.base_url}/chat/completions", payload, self.key, self.timeout)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"api judge {self.base_url} ({self.model}): HTTP {e.code}: "
                               f"{e.read()[:300]!r}") from None
        self.calls += 1
        self.cache.put_json("api_judge", k, got)
        return got

    @staticmethod
    def yes_logprob(reply: dict) -> float:
        """``log P(yes)`` over {yes, no} from the first token's top logprobs (else from the text)."""
        choice = reply["choices"][0]
        content = ((choice.get("logprobs") or {}).get("content") or [{}])[0]
        yes, no = [], []
        for t in content.get("top_logprobs") or []:
            word = t["token"].strip().lower()
            (yes if word == "yes" else no if word == "no" else []).append(t["logprob"])
        if yes or no:
            ly = torch.logsumexp(torch.tensor(yes or [-1e9], dtype=torch.float64), 0)
            ln = torch.logsumexp(torch.tensor(no or [-1e9], dtype=torch.float64), 0)
            return max(float(ly - torch.logaddexp(ly, ln)), MIN_LOGPROB)
        text = (choice.get("message") or {}).get("content", "").strip().lower()
        return 0.0 if text.startswith("yes") else MIN_LOGPROB

    def __call__(self, questions: Sequence[str], responses: Sequence[str]) -> Tensor:
        return torch.tensor([self.yes_logprob(self._ask(rubric_text(self.rubric, q, r)))
                             for q, r in zip(questions, responses)])
