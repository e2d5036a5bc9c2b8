"""Each vector method builds the contrast the PAS protocol (and CAA) documents, and its
aggregation; vectors read from files are checked against the job."""

from __future__ import annotations

import pytest
import torch

from eas import extensions, store
from eas.data.schema import MCItem
from eas.methods import base
from eas.prompts import Prompter


def build(method, items, predicted, prompter, seed=0, min_per_class=2):
    m = base.module({"name": method})
    return base.check_size(m.contrast(items, predicted, prompter, seed=seed), method, items, predicted, min_per_class)


TooFewExamples = base.TooFewExamples

ITEMS = [
    MCItem(id=str(i), question=f"q{i}?", options=(f"a{i}", f"b{i}", f"c{i}"), label=i % 3) for i in range(6)
]
PRED = [0, 0, 2, 0, 0, 1]  # labels 0,1,2,0,1,2: right on items 0, 2, 3; wrong on 1 (chose 0), 4 (chose 0), 5 (chose 1)


@pytest.fixture(params=["plain", "chat"])
def prompter(request, tokenizer):
    return Prompter(tokenizer, request.param)


def test_pasf_full_prompts_right_minus_wrong(prompter):
    c = build("pasf", ITEMS, PRED, prompter)
    assert c.positives == [prompter.mc(ITEMS[i]) for i in (0, 2, 3)]
    assert c.negatives == [prompter.mc(ITEMS[i]) for i in (1, 4, 5)]
    assert all(t.endswith("Answer:") and "A. a0" in c.positives[0] for t in c.positives)


def test_ipas_all_correct_option_vs_chosen_option(prompter):
    c = build("ipas_all", ITEMS, PRED, prompter)
    assert c.positives == [prompter.with_option_text(ITEMS[i], ITEMS[i].label) for i in (0, 2, 3)]
    assert c.negatives == [prompter.with_option_text(ITEMS[i], p) for i, p in ((1, 0), (4, 0), (5, 1))]
    assert c.positives[1].endswith(" c2") and c.negatives[2].endswith(" b5")
    assert "A. " not in c.positives[0], "iPAS texts carry the question, not the option list"


def test_ipas_wrong_only_pairs_on_wrong_items(prompter):
    c = build("ipas_wrong_only", ITEMS, PRED, prompter)
    assert c.paired
    assert c.positives == [prompter.with_option_text(ITEMS[i], ITEMS[i].label) for i in (1, 4, 5)]
    assert c.negatives == [prompter.with_option_text(ITEMS[i], p) for i, p in ((1, 0), (4, 0), (5, 1))]


def test_mean_diff_letter_pairs(prompter):
    c = build("mean_diff", ITEMS, PRED, prompter, seed=1)
    assert c.paired and len(c.positives) == len(ITEMS)
    for it, pos, neg, p in zip(ITEMS, c.positives, c.negatives, PRED):
        assert pos == prompter.mc(it) + " " + it.letters[it.label]
        assert neg.startswith(prompter.mc(it)) and neg != pos
        if p != it.label:
            assert neg.endswith(" " + it.letters[p])
    assert c.negatives == build("mean_diff", ITEMS, PRED, prompter, seed=1).negatives


def test_too_few_names_the_counts(prompter):
    with pytest.raises(TooFewExamples, match="0 positives and 6 negatives.*0 answered right, 6 wrong"):
        build("pasf", ITEMS, [(it.label + 1) % 3 for it in ITEMS], prompter)


def test_every_builtin_method_is_a_method_module():
    names = extensions.builtin("method")
    assert {"pasf", "ipas_all", "ipas_wrong_only", "mean_diff", "pca", "probe", "random", "refined"} <= set(names)
    for name in names:
        m = base.module({"name": name})
        assert base.is_extracted(m) or hasattr(m, "stored_key"), name


def test_aggregations_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(8, 16, generator=g) + 1.0, torch.randn(8, 16, generator=g)
    md = pos.mean(0) - neg.mean(0)
    assert torch.allclose(base.module({"name": "pasf"}).aggregate(pos, neg), md)
    assert torch.allclose(base.module({"name": "mean_diff"}).aggregate(pos, neg), md)
    pca = base.module({"name": "pca"}).aggregate(pos, neg)
    assert torch.isclose(pca.norm(), md.norm()) and pca @ md > 0
    rnd = base.module({"name": "random"}).aggregate(pos, neg, seed=3)
    assert torch.isclose(rnd.norm(), md.norm()) and not torch.allclose(rnd, md)


def test_unknown_method_names_the_field_and_the_choices():
    with pytest.raises(extensions.ExtensionError, match=r"method.name='nope'.*pasf"):
        base.module({"name": "nope"})


def _vector_file(path, layer, d=8, **meta):
    store.write_tensors(path, {"vector": torch.ones(d) * layer},
                        {"method": "pasf", "site": "residual", "layer": str(layer), "position": "last",
                         "model": "m", **meta})


def test_read_vectors_checks_model_site_layer_and_width(tmp_path):
    run = tmp_path / "run"
    for L in (1, 2):
        _vector_file(run / "vectors" / f"pasf_residual_L{L}.safetensors", L)
    _vector_file(run / "vectors" / "pasf_mlp_L1.safetensors", 5, site="mlp")  # another site: not a candidate
    want = base.Expected("pasf", "residual", "last", [1, 2], "m", 8)
    got = base.read_vectors(run, want)
    assert set(got) == {1, 2} and torch.equal(got[2], torch.full((8,), 2.0))
    with pytest.raises(base.VectorError, match=r"layer=\[3\]"):
        base.read_vectors(run, base.Expected("pasf", "residual", "last", [3], "m", 8))
    with pytest.raises(base.VectorError, match="model 'm'"):
        base.read_vectors(run, base.Expected("pasf", "residual", "last", [1], "other", 8))
    with pytest.raises(base.VectorError, match="width is 16"):
        base.read_vectors(run, base.Expected("pasf", "residual", "last", [1], "m", 16))
    with pytest.raises(base.VectorError, match="steer_target=mlp"):
        base.read_vectors(run / "vectors" / "pasf_mlp_L1.safetensors",
                          base.Expected("pasf", "residual", "last", [5], "m", 8))
    with pytest.raises(base.VectorError, match="no such file"):
        base.read_vectors(tmp_path / "missing", want)


def test_pas_reference_read_rule_reads_the_residual_one_block_earlier(tmp_path):
    """method.read=pas_reference: a residual vector for layer L is the residual stream entering
    block L (the output of block L-1), so it equals eas's own vector for layer L-1, and it is
    steered at block L; the cells are other store records than the default rule's."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from eas import config as config_mod
    from eas.cli import CONF_DIR
    from eas.experiments.base import prepare
    from eas.experiments.steer import Steer

    def job(name, *overrides):
        config_mod.register()
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = compose("config", overrides=["model=tiny_random", "benchmark=eas_facts", "max_sample_size=30",
                                               "method=mean_diff", "progress=false", "strength=[4]",
                                               f"store.root={tmp_path / 'store'}", *overrides])
        prepare(cfg)
        j = Steer(cfg, tmp_path / name)
        j.load()
        return j

    ref = job("ref", "layer=[2]", "method.read=pas_reference")
    own = job("own", "layer=[1]")
    assert ref.read_site == "residual_pre" and own.read_site == "residual"
    v_ref = ref.vectors(ref.unsteered()["train"])[2]
    v_own = own.vectors(own.unsteered()["train"])[1]
    assert torch.allclose(v_ref, v_own, atol=1e-5)
    same = job("same", "layer=[2]")
    assert ref.cell_key(2, 4.0, "val") != same.cell_key(2, 4.0, "val")
    s = ref.run()
    assert s["read_site"] == "residual_pre" and s["steer_target"] == "residual"
    with pytest.raises(config_mod.ConfigError, match="method.read='one_back'"):
        job("bad", "method.read=one_back")
