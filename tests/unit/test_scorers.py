"""eas.scorers: each scorer on real computations, the one output check, loading by name, and the
API judge against a local OpenAI-compatible server (caching, junk replies, the key kept secret)."""

from __future__ import annotations

import json
import math
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from eas import models
from eas.config import ConfigError
from eas.core import score as score_mod
from eas.core import tokens
from eas.data.schema import MCItem
from eas.prompts import Prompter
from eas.scorers import base
from eas.scorers.refusal import refuses
from eas.scorers.repetition import distinct, repeated_fraction


@pytest.fixture(scope="module")
def ctx():
    model = models.random_model("llama", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 400,
                                          "max_position_embeddings": 512}, seed=0)
    return base.Context(model, models.tiny_tokenizer(), 0, 4, "plain", None)


def sample(response: str, ids=(5, 6, 7), prompt="How are you?"):
    return base.Sample(prompt, response, [1, 9, 10], list(ids))


def test_sentiment_separates_kind_from_cruel(ctx):
    fn = base.load("sentiment", {}, ctx)
    got = fn([sample("Thank you so much, that is wonderful and kind of you!"),
              sample("You are worthless and I hate this stupid idea.")])
    assert got["sentiment"][0] > 0.5 > -0.5 > got["sentiment"][1]
    assert got["sentiment_pos"][0] > got["sentiment_pos"][1] and got["sentiment_neg"][1] > got["sentiment_neg"][0]


def test_refusal_phrases():
    assert refuses("I'm sorry, but I can't help with that.")
    assert refuses("I\u2019m sorry, I cannot do that")  # a typographic apostrophe
    assert not refuses("Sure, here is a recipe for pancakes.")
    assert not refuses("i'm sorry")  # case-sensitive, as the GCG evaluation
    assert refuses("i'm sorry", ignore_case=True)
    assert not refuses("Here you go. I'm sorry it took long.", window=10)
    fn = base.load("refusal", {"window": 40}, None)
    assert fn([sample("I cannot help."), sample("Of course!")]) == {"refusal": [1.0, 0.0]}


def test_length_and_repetition_by_hand(ctx):
    assert repeated_fraction([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == pytest.approx(1 - 3 / 7)
    assert repeated_fraction([1, 2], 3) == 0.0 and distinct([], 1) == 1.0
    assert distinct([4, 4, 4, 5], 1) == 0.5 and distinct([4, 4, 4, 5], 2) == pytest.approx(2 / 3)
    rep = base.load("repetition", {"n": 2}, ctx)([sample("x", ids=[1, 2, 1, 2])])
    assert rep == {"repetition": [pytest.approx(1 / 3)], "distinct_1": [0.5], "distinct_2": [pytest.approx(2 / 3)]}
    length = base.load("length", {}, ctx)([sample("two words", ids=[8, 9, 10])])
    assert length == {"length_tokens": [3.0], "length_chars": [9.0], "length_words": [2.0]}


def test_perplexity_scorer_is_the_cores(ctx):
    from eas.core import fluency

    samples = [sample("a", ids=[20, 21, 22]), sample("", ids=[])]
    got = base.load("perplexity", {}, ctx)(samples)
    lps = fluency.response_logprobs(ctx.model, [s.prompt_ids for s in samples], [s.response_ids for s in samples])
    assert got["perplexity"] == [pytest.approx(fluency.perplexity(lps[0])), 1.0]
    assert got["perplexity_mean_logprob"][1] == 0.0 and got["perplexity"][0] > 1


def test_local_judge_is_the_rubric_scored_as_an_mc_item(ctx):
    rubric = "Question: {question}\nResponse: {response}\nIs it kind?"
    samples = [sample("You are great."), sample("Go away.")]
    yes = base.load("judge", {"rubric": rubric}, ctx)(samples)["judge"]
    scale = base.load("judge", {"rubric": rubric, "scale": "0-10", "name": "kind"}, ctx)(samples)["judge_kind"]
    prompter = Prompter(ctx.tokenizer, "plain", None, "Answer with the letter of your answer.")
    for options, got in ((("Yes", "No"), yes), (tuple(str(k) for k in range(11)), scale)):
        items = [MCItem(str(i), rubric.format(question=s.prompt, response=s.response), options, 0)
                 for i, s in enumerate(samples)]
        rows = tokens.encode(ctx.tokenizer, [prompter.mc(it) for it in items], prompter.add_special_tokens)
        head = score_mod.LetterHead(ctx.model, score_mod.letter_token_ids(ctx.tokenizer, len(options)))
        p = torch.softmax(score_mod.score_mc(ctx.model, rows, [len(options)] * 2, head, 2, 0)[:, :len(options)], -1)
        want = p[:, 0] if len(options) == 2 else (p * torch.arange(11.0)).sum(-1)
        assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert all(0 <= v <= 1 for v in yes) and all(0 <= v <= 10 for v in scale)


def test_loading_and_checking(ctx):
    with pytest.raises(ConfigError, match=r"experiment\.scorers\.nope=.*no module 'eas\.scorers\.nope'"):
        base.check("nope", {}, "experiment.scorers.nope")
    with pytest.raises(ConfigError, match=r"experiment\.scorers\.refusal: unknown parameter 'windwo'"):
        base.check("refusal", {"windwo": 3})
    with pytest.raises(ConfigError, match=r"judge\.rubric.*not a template"):
        base.check("judge", {"rubric": "{prompt} {response}"})
    with pytest.raises(ConfigError, match=r"judge\.scale='1-5'"):
        base.check("judge", {"rubric": "{question} {response}", "scale": "1-5"})
    with pytest.raises(ConfigError, match=r"judge\.model='nope'.*no conf/model preset"):
        base.check("judge", {"rubric": "{question} {response}", "model": "nope"})
    with pytest.raises(ValueError, match=r"scorer x: column 'c' is nan for sample 1"):
        base.checked("x", {"c": [0.0, math.nan]}, 2)
    with pytest.raises(ValueError, match=r"column 'c' has 1 values for 2 samples"):
        base.checked("x", {"c": [0.0]}, 2)


NAN_SCORER = """
def validate(params):
    if params.get("bad"):
        from eas.config import ConfigError
        raise ConfigError("experiment.scorers.odd.bad: no")

def make(params, ctx):
    return lambda samples: {"odd": [float("nan")] * len(samples)}
"""


def test_a_scorer_outside_eas_is_checked_like_eas_own(tmp_path, monkeypatch):
    (tmp_path / "lab_scoring").mkdir()
    (tmp_path / "lab_scoring" / "__init__.py").write_text("")
    (tmp_path / "lab_scoring" / "odd.py").write_text(NAN_SCORER)
    monkeypatch.syspath_prepend(str(tmp_path))
    base.check("lab_scoring.odd", {}, "experiment.scorers.odd")  # a validate(params) without the field
    with pytest.raises(ConfigError, match=r"experiment\.scorers\.odd\.bad"):
        base.check("lab_scoring.odd", {"bad": True}, "experiment.scorers.odd")
    assert base.columns("lab_scoring.odd", {}) is None  # it does not say: known only once it has scored
    fn = base.load("lab_scoring.odd", {}, None)
    with pytest.raises(ValueError, match=r"scorer lab_scoring\.odd: column 'odd' is nan for sample 0"):
        fn([sample("x")])


class _Fake(BaseHTTPRequestHandler):
    replies: typing.ClassVar[list] = []
    seen: typing.ClassVar[list] = []

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers.get("Authorization"), body))
        content = type(self).replies[0]
        if content == "401":
            data = b'{"error": "bad key"}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if content == "Yes":
            top = [{"token": "Yes", "logprob": math.log(0.8)}, {"token": "No", "logprob": math.log(0.2)}]
        else:
            top = [{"token": "Banana", "logprob": -0.1}]
        reply = {"choices": [{"message": {"content": content}, "logprobs": {"content": [{"top_logprobs": top}]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Fake.replies, _Fake.seen = ["Yes"], []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)  # bound and listening once constructed
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_api_judge_caches_keeps_the_key_secret_and_refuses_junk(server, tmp_path, monkeypatch, ctx):
    secret = "sk-test-do-not-leak-1234"
    monkeypatch.setenv("EAS_TEST_JUDGE_KEY", secret)
    params = {"rubric": "Q: {question} R: {response} Kind?", "model": "m", "api_base": server,
              "api_key_env": "EAS_TEST_JUDGE_KEY"}
    c = base.Context(ctx.model, ctx.tokenizer, 0, 4, "plain", str(tmp_path / "store"))
    fn = base.load("api_judge", params, c)
    got = fn([sample("Nice."), sample("Fine.")])
    assert got == {"api_judge": [pytest.approx(0.8), pytest.approx(0.8)]}
    assert len(_Fake.seen) == 2 and _Fake.seen[0][0] == f"Bearer {secret}"
    assert "Q: How are you? R: Nice. Kind?" in json.dumps(_Fake.seen[0][1])
    again = base.load("api_judge", params, c)([sample("Nice."), sample("Fine.")])
    assert again == got and len(_Fake.seen) == 2  # answered from the store
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert written and secret not in written
    _Fake.replies = ["Banana"]
    with pytest.raises(RuntimeError, match=r"neither yes nor no: 'banana' \(from http://127\.0\.0\.1:\d+/v1, "
                                           r"model m\)") as e:
        fn([sample("Something new.")])
    assert secret not in str(e.value)
    _Fake.replies = ["401"]
    with pytest.raises(RuntimeError, match=r"HTTP 401: .*bad key") as e:
        fn([sample("Refused at the door.")])
    assert secret not in str(e.value)
    _Fake.replies = ["Banana"]
    low = base.load("api_judge", {**params, "on_junk": "low"}, c)([sample("Another new one.")])
    assert low["api_judge"][0] == pytest.approx(1e-4)


def test_api_judge_without_a_server_or_key_fails_before_scoring(tmp_path, monkeypatch, ctx):
    monkeypatch.setenv("EAS_TEST_JUDGE_KEY", "k")
    c = base.Context(ctx.model, ctx.tokenizer, 0, 4, "plain", str(tmp_path))
    params = {"rubric": "{question} {response}", "model": "m", "api_base": "http://127.0.0.1:9/v1",
              "api_key_env": "EAS_TEST_JUDGE_KEY"}
    with pytest.raises(ConfigError, match=r"experiment\.scorers\.api_judge\.api_base=.*no answer from"):
        base.load("api_judge", params, c)
    monkeypatch.delenv("EAS_TEST_JUDGE_KEY")
    with pytest.raises(ConfigError, match=r"\$EAS_TEST_JUDGE_KEY \(experiment\.scorers\.api_judge\.api_key_env\)"):
        base.load("api_judge", params, c)
