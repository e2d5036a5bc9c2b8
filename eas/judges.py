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
  ``probe_endpoint`` checks that the endpoint answers at all, also before the model loads.
  Requests go through ``requests`` (a dependency of ``gguf``) with timeouts and retries.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import requests
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


def rubric_text(rubric: str, question: str, response: str, field: str = "experiment.judge.rubric") -> str:
    try:
        return rubric.format(question=question, response=response)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{field}={rubric!r}: not a template with {{question}} and "
                          f"{{response}} only ({e}); write literal braces as {{{{ and }}}}") from None


YES_NO = ("Yes", "No")
SCALE_0_10 = tuple(str(k) for k in range(11))


class LocalJudge:
    """``log P(yes)`` from a local model's letter scores for "A. Yes / B. No".

    With other ``options`` (e.g. ``SCALE_0_10``) the rubric is asked as that many-option
    multiple-choice item and ``probabilities`` gives the judge's distribution over them.
    """

    def __init__(self, model, tokenizer, rubric: str, prompt_format: str = "chat", batch_size: int = 16,
                 options: Sequence[str] = YES_NO):
        self.model = model
        self.rubric = rubric
        self.options = tuple(options)
        self.prompter = Prompter(tokenizer, prompt_format, None, "Answer with the letter of your answer.")
        self.tokenizer = tokenizer
        self.head = score_mod.LetterHead(model, score_mod.letter_token_ids(tokenizer, len(self.options)))
        self.pad = tokens.pad_id(tokenizer)
        self.batch_size = batch_size

    def scores(self, questions: Sequence[str], responses: Sequence[str]) -> Tensor:
        """``[m, n_options]`` letter scores of the rubric item for each (question, response)."""
        items = [MCItem(str(i), rubric_text(self.rubric, q, r), self.options, 0)
                 for i, (q, r) in enumerate(zip(questions, responses))]
        rows = tokens.encode(self.tokenizer, [self.prompter.mc(it) for it in items],
                             self.prompter.add_special_tokens)
        n = len(self.options)
        return score_mod.score_mc(self.model, rows, [n] * len(rows), self.head, self.batch_size, self.pad)[..., :n]

    def probabilities(self, questions: Sequence[str], responses: Sequence[str]) -> Tensor:
        """``[m, n_options]``: the judge's probability of each option (softmax over the letters)."""
        return torch.softmax(self.scores(questions, responses).float(), dim=-1)

    def __call__(self, questions: Sequence[str], responses: Sequence[str]) -> Tensor:
        return rubric_logprob(self.scores(questions, responses))


CONNECT_TIMEOUT = 10.0  # seconds to reach the server; the read timeout is the judge's own


@functools.cache
def _session() -> requests.Session:
    """One pooled session whose requests retry what is transient, with backoff.

    Rate limits, overloaded or restarting servers and dropped connections are retried (honouring
    Retry-After); POST is retried too, since a temperature-0 completion asked again is the same
    request and its answer is cached once it arrives.
    """
    from requests.adapters import HTTPAdapter
    from urllib3.util import Retry

    retry = Retry(total=5, connect=3, read=2, backoff_factor=1.0, backoff_max=30.0,
                  status_forcelist=(408, 429, 500, 502, 503, 504), allowed_methods=None,
                  raise_on_status=False)  # the last error response comes back, to be reported with its body
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _post(url: str, payload: dict, key: str, timeout: float) -> dict:
    r = _session().post(url, json=payload, headers={"Authorization": f"Bearer {key}"},
                        timeout=(CONNECT_TIMEOUT, timeout))
    r.raise_for_status()
    return r.json()


def probe_endpoint(api_base: str, timeout: float = 5.0, field: str = "experiment.judge",
                   offline: str = "experiment.fitness=judge") -> None:
    """Check that an OpenAI-compatible endpoint answers, before minutes of model loading.

    One GET of ``{api_base}/models``, without retries: any HTTP response (401 and 404 included)
    means a server is there; no answer within ``timeout`` seconds is the error. ``field`` is the
    config node holding ``api_base``, ``offline`` the setting that picks the local judge instead.

    Raises:
        ConfigError: ``api_base`` is not an http(s) URL, or nothing answers there.
    """
    url = f"{api_base.rstrip('/')}/models"
    try:
        requests.get(url, timeout=timeout)
    except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidURL):
        raise ConfigError(f"{field}.api_base={api_base!r} is not an http(s) URL; "
                          f"give one like http://localhost:8000/v1") from None
    except requests.RequestException as e:
        raise ConfigError(
            f"{field}.api_base={api_base!r}: no answer from {url} within {timeout:g} s "
            f"({type(e).__name__}); check the URL and the network, or use the offline local judge: "
            f"{offline}") from None


class ApiJudge:
    """``log P(yes)`` from an OpenAI-compatible chat endpoint, cached on disk.

    Args:
        model: the endpoint's model name.
        base_url: e.g. ``https://api.openai.com/v1``.
        key_env: the environment variable holding the API key.
        cache_dir: where responses are kept (one JSON file per prompt).
        rubric: the template with ``{question}`` and ``{response}``.
        on_junk: ``low``: a reply with neither yes nor no is ``MIN_LOGPROB``; ``error``: it raises.
        field: the config node of these settings, ``offline`` the local judge's setting (for errors).

    Raises:
        ConfigError: the key variable is unset or empty.
    """

    def __init__(self, model: str, base_url: str, key_env: str, cache_dir: str | Path, rubric: str,
                 timeout: float = 60.0, on_junk: str = "low", field: str = "experiment.judge",
                 offline: str = "experiment.fitness=judge"):
        key = os.environ.get(key_env, "")
        if not key:
            raise ConfigError(
                f"the API judge needs an API key in ${key_env} ({field}.api_key_env), and it is "
                f"not set. Export it, or use the offline local judge: {offline}")
        self.model, self.base_url, self.key, self.timeout = model, base_url.rstrip("/"), key, timeout
        self.cache = store.Store(cache_dir)
        self.rubric = rubric
        self.on_junk = on_junk  # low: a reply with neither yes nor no is MIN_LOGPROB; error: it raises
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
        except requests.HTTPError as e:
            raise RuntimeError(f"api judge {self.base_url} ({self.model}): HTTP {e.response.status_code}: "
                               f"{e.response.text[:300]!r}") from None
        except requests.RequestException as e:
            raise RuntimeError(f"api judge {self.base_url} ({self.model}): no answer after retries "
                               f"({type(e).__name__}: {e})") from None
        self.calls += 1
        if isinstance(got, dict) and got.get("choices"):  # an answer; an odd payload is not kept
            self.cache.put_json("api_judge", k, got)
        return got

    @staticmethod
    def yes_logprob(reply: dict, on_junk: str = "low") -> float:
        """``log P(yes)`` over {yes, no} from the first token's top logprobs (else from the text).

        Raises:
            RuntimeError: with ``on_junk="error"``, a reply with neither yes nor no (or no choices).
        """
        try:
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"api judge: a reply without choices: {str(reply)[:200]!r}") from None
        content = ((choice.get("logprobs") or {}).get("content") or [{}])[0]
        yes, no = [], []
        for t in content.get("top_logprobs") or []:
            word = t["token"].strip().lower()
            (yes if word == "yes" else no if word == "no" else []).append(t["logprob"])
        if yes or no:
            ly = torch.logsumexp(torch.tensor(yes or [-1e9], dtype=torch.float64), 0)
            ln = torch.logsumexp(torch.tensor(no or [-1e9], dtype=torch.float64), 0)
            return max(float(ly - torch.logaddexp(ly, ln)), MIN_LOGPROB)
        text = ((choice.get("message") or {}).get("content") or "").strip().lower()
        if on_junk == "error" and not text.startswith(("yes", "no")):
            raise RuntimeError(f"api judge: the reply says neither yes nor no: {text[:80]!r}")
        return 0.0 if text.startswith("yes") else MIN_LOGPROB

    def __call__(self, questions: Sequence[str], responses: Sequence[str]) -> Tensor:
        out = []
        for q, r in zip(questions, responses):
            reply = self._ask(rubric_text(self.rubric, q, r))
            try:
                out.append(self.yes_logprob(reply, self.on_junk))
            except RuntimeError as e:  # a junk reply: say which judge gave it
                raise RuntimeError(f"{e} (from {self.base_url}, model {self.model})") from None
        return torch.tensor(out)
