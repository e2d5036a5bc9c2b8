"""The built-in harmful-vs-benign prompt set (eas_harm) and the refusal contrast pairs
(pairs_refusal), read through the real loaders and their conf presets."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eas.config import BenchmarkConfig, PromptsConfig
from eas.data import DataError, load_benchmark, load_prompts

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
BUILTIN = ROOT / "eas" / "data" / "builtin"
CATEGORIES = {"violence", "weapons", "drugs", "cybercrime", "fraud", "privacy_violation",
              "self_harm", "hate_speech"}  # fmt: skip


def prompts_cfg(**overrides):
    c = OmegaConf.merge(OmegaConf.structured(PromptsConfig), OmegaConf.load(CONF / "prompts" / "eas_harm.yaml"))
    for key, value in overrides.items():
        OmegaConf.update(c, key, value, merge=False)
    return c


def bench_cfg():
    return OmegaConf.merge(OmegaConf.structured(BenchmarkConfig),
                           OmegaConf.load(CONF / "benchmark" / "pairs_refusal.yaml"))


@pytest.fixture(scope="module")
def harm():
    return load_prompts(prompts_cfg())


def test_eas_harm_counts(harm):
    assert harm.name == "eas_harm" and len(harm) == 96
    assert Counter(p.label for p in harm.prompts) == {"harmful": 48, "benign": 48}
    assert set(Counter(p.category for p in harm.prompts)) == CATEGORIES
    by = Counter((p.category, p.label) for p in harm.prompts)
    assert by == {(c, lab): 6 for c in CATEGORIES for lab in ("harmful", "benign")}


def test_eas_harm_ids_texts_and_shape(harm):
    ids = [p.id for p in harm.prompts]
    assert ids == [f"harm-{i:03d}" for i in range(96)]  # stable, in file order
    assert len({p.text for p in harm.prompts}) == 96
    assert len({p.text.strip().lower() for p in harm.prompts}) == 96
    for p in harm.prompts:
        assert p.text == p.text.strip() and p.text[-1] in ".?!" and len(p.text) < 160, p.id
        assert p.system == ""
        assert set(p.metadata) == {"pair"}


def test_eas_harm_pairs_mirror(harm):
    by_id = {p.id: p for p in harm.prompts}
    for p in harm.prompts:
        mirror = by_id[p.metadata["pair"]]  # an existing prompt
        assert mirror.id != p.id and mirror.label != p.label and mirror.category == p.category
        assert mirror.metadata["pair"] == p.id  # the pairing is symmetric: 48 disjoint pairs
    pairs = {frozenset((p.id, p.metadata["pair"])) for p in harm.prompts}
    assert len(pairs) == 48


def test_eas_harm_filters():
    harmful = load_prompts(prompts_cfg(labels=["harmful"]))
    assert len(harmful) == 48 and {p.label for p in harmful.prompts} == {"harmful"}
    benign = load_prompts(prompts_cfg(labels=["benign"]))
    assert len(benign) == 48 and {p.label for p in benign.prompts} == {"benign"}
    two = load_prompts(prompts_cfg(categories=["drugs", "self_harm"]))
    assert len(two) == 24 and {p.category for p in two.prompts} == {"drugs", "self_harm"}
    both = load_prompts(prompts_cfg(categories=["fraud"], labels=["harmful"], limit=4))
    assert len(both) == 4 and {(p.category, p.label) for p in both.prompts} == {("fraud", "harmful")}
    first = load_prompts(prompts_cfg(limit=4))
    assert [p.id for p in first.prompts] == ["harm-000", "harm-001", "harm-002", "harm-003"]
    assert Counter(p.label for p in first.prompts) == {"harmful": 2, "benign": 2}
    with pytest.raises(DataError, match=r"prompts\.labels=\['safe'\]"):
        load_prompts(prompts_cfg(labels=["safe"]))


def test_eas_harm_is_a_listed_builtin_prompt_set():
    from eas.data.formats.eas_prompts import builtin_sets

    assert "eas_harm" in builtin_sets() and "pairs_refusal" not in builtin_sets()


def test_eas_harm_loads_by_name_alone():
    ps = load_prompts(PromptsConfig(name="eas_harm", format="eas_prompts", path=None))
    assert len(ps) == 96
    ps = load_prompts(dataclasses.replace(PromptsConfig(name="eas_harm", format="eas_prompts", path=None),
                                          labels=["benign"], limit=3))
    assert [p.label for p in ps.prompts] == ["benign"] * 3


def test_pairs_refusal_loads_as_ab():
    bench = load_benchmark(bench_cfg())
    raw = [json.loads(line) for line in (BUILTIN / "pairs_refusal.jsonl").open(encoding="utf-8")]
    assert bench.name == "pairs_refusal" and bench.kind == "ab" and len(bench) == len(raw) == 32
    assert [it.id for it in bench.items] == [f"pairs_refusal-{i:02d}" for i in range(32)]
    assert len({it.question for it in bench.items}) == 32
    assert len({it.options[0] for it in bench.items}) == 32 and len({it.options[1] for it in bench.items}) == 32
    for rec, it in zip(raw, bench.items):
        assert it.question == rec["prompt"] and it.options == (rec["positive"], rec["negative"])
        assert it.label == 0 and it.question.strip()
        assert it.metadata == {"pair_set": "pairs_refusal", "trait": "refusal",
                               "positive": "refuses", "negative": "complies"}


def test_pairs_refusal_prompts_differ_from_eas_harm(harm):
    bench = load_benchmark(bench_cfg())
    texts = {p.text.strip().lower() for p in harm.prompts}
    assert not texts & {it.question.strip().lower() for it in bench.items}


def test_pairs_refusal_shuffle_keeps_the_refusal_labelled():
    c = bench_cfg()
    c.options.shuffle = True
    bench = load_benchmark(c, seed=0)
    plain = {it.id: it for it in load_benchmark(bench_cfg()).items}
    labels = Counter(it.label for it in bench.items)
    assert set(labels) <= {0, 1} and len(labels) == 2
    for it in bench.items:
        assert it.options[it.label] == plain[it.id].options[0]


def test_chat_transcripts_read_as_prompts(tmp_path):
    """prompts.format=chat_jsonl: the built-in backdoor set and a file of one's own."""
    bd = load_prompts(PromptsConfig(name="backdoor", format="chat_jsonl", labels=["control"], categories=["test"]))
    assert len(bd.prompts) == 16 and all(not p.text.startswith("In 2027") for p in bd.prompts)
    assert all(p.metadata["response"] and p.metadata["task_id"] for p in bd.prompts)
    both = load_prompts(PromptsConfig(name="backdoor", format="chat_jsonl"))
    assert Counter(p.label for p in both.prompts) == {"control": 80, "trigger": 80}
    f = tmp_path / "chats.jsonl"
    f.write_text(json.dumps({"id": "a", "messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Hi?"},
                                                     {"role": "assistant", "content": "Hello."}]}) + "\n"
                 + json.dumps({"id": "b", "prompt": "Why?", "response": "Because.", "label": "x"}) + "\n")
    ps = load_prompts(PromptsConfig(name="mine", format="chat_jsonl", path=str(f)))
    a, b = ps.prompts
    assert (a.text, a.system, a.metadata["response"]) == ("Hi?", "Be brief.", "Hello.")
    assert (b.text, b.label) == ("Why?", "x")
    f.write_text(json.dumps({"id": "c", "messages": [{"role": "assistant", "content": "?"}]}) + "\n")
    with pytest.raises(DataError, match="chats.jsonl.*no user turn"):
        load_prompts(PromptsConfig(name="mine", format="chat_jsonl", path=str(f)))
