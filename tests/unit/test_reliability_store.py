"""Issue 12: the store and the engine never hand back a wrong number (regression tests by item)."""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from eas import config as config_mod
from eas import store
from eas.cli import CONF_DIR
from eas.core import engine, score, tokens
from eas.data.schema import MCItem
from eas.experiments.base import Scored, prepare

TEXTS = ["Question: what is the answer? A. yes B. no Answer:", "the of and to Answer:",
         "A B C D the answer is yes and no and true of the that it Answer:"]


def _compose(overrides: list[str], hydra_cfg: bool = False):
    config_mod.register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("config", overrides=overrides, return_hydra_config=hydra_cfg)


# -- 2: non-finite numbers ----------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "[1,1e30]"])
def test_non_finite_or_absurd_strengths_fail_at_compose_time(bad):
    cfg = _compose([f"strength={bad}"])
    with pytest.raises(config_mod.ConfigError, match="strength"):
        prepare(cfg)


def test_a_nan_cell_does_not_change_its_neighbours_scores(llama, tokenizer):
    model, sites = llama
    rows = tokens.encode(tokenizer, TEXTS)
    head = score.LetterHead(model, score.letter_token_ids(tokenizer, 4))
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    clean = engine.Cell(1, 4.0, v)
    poison = engine.Cell(2, 1.0, torch.full((64,), float("nan")))
    alone = engine.sweep_mc(model, sites, rows, [4] * 3, head, "residual", [clean])
    both = engine.sweep_mc(model, sites, rows, [4] * 3, head, "residual", [poison, clean, clean])
    assert torch.isnan(both[0]).all()
    torch.testing.assert_close(both[1], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[2], alone[0], atol=1e-5, rtol=1e-5)
    assert not score.nonfinite_items(both[1:], [4] * 3).any()
    assert score.nonfinite_items(both[:1], [4] * 3).all()


def test_non_finite_values_never_reach_the_store(tmp_path):
    st = store.Store(tmp_path)
    with pytest.raises(store.NonFiniteError, match="NaN"):
        st.put_json("cells", "k1", {"scores": [0.1, float("nan")]})
    with pytest.raises(store.NonFiniteError):
        st.put_tensors("vectors", "k2", {"vector": torch.tensor([1.0, float("inf")])})
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.safetensors"))


def test_an_all_nan_cell_is_failed_not_answer_a():
    scores = torch.full((2, 3, 4), float("nan"))
    scores = score.mask_options(scores, [2, 3, 4])
    assert score.nonfinite_items(scores, [2, 3, 4]).all()
    ok = score.mask_options(torch.zeros(1, 3, 4), [2, 3, 4])  # -inf past an item's options is fine
    assert not score.nonfinite_items(ok, [2, 3, 4]).any()


# -- 3: numeric knobs, unwritten memory ------------------------------------------------
@pytest.mark.parametrize("knob", ["cells_per_pass=0", "cells_per_pass=-2", "cells_per_chunk=0",
                                  "capture_shard_size=-1", "batch_size=-1", "seed=-3"])
def test_numeric_knobs_are_checked_at_compose_time(knob):
    cfg = _compose([knob])
    with pytest.raises(config_mod.ConfigError, match=knob.split("=")[0]):
        prepare(cfg)


def test_engine_refuses_a_non_positive_cells_per_pass(llama, tokenizer):
    model, sites = llama
    head = score.LetterHead(model, score.letter_token_ids(tokenizer, 4))
    for bad in (0, -2):
        with pytest.raises(ValueError, match="cells_per_pass"):
            engine.sweep_mc(model, sites, tokens.encode(tokenizer, TEXTS), [4] * 3, head, "residual",
                           [engine.Cell(1, 1.0, torch.ones(64))], cells_per_pass=bad)


# -- 4: unique run folders ---------------------------------------------------------
def test_two_jobs_started_in_one_second_get_their_own_run_folders():
    dirs = set()
    for _ in range(2):
        cfg = _compose([], hydra_cfg=True)
        dirs.add(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])
    assert len(dirs) == 2, dirs


# -- 6 and 10: checksums and record shapes --------------------------------------------
def test_an_edited_json_record_is_recomputed_with_a_warning(tmp_path, caplog):
    st = store.Store(tmp_path)
    p = st.put_json("cells", "abc", {"preds": [0, 1, 2]})
    assert st.get_json("cells", "abc") == {"preds": [0, 1, 2]}
    rec = json.loads(p.read_text())
    rec["value"]["preds"][0] = 3
    p.write_text(json.dumps(rec))
    with caplog.at_level(logging.WARNING, logger="eas"):
        assert st.get_json("cells", "abc") is None
    assert "checksum mismatch" in caplog.text and str(p) in caplog.text


def test_overwritten_vector_bytes_are_recomputed(tmp_path, caplog):
    st = store.Store(tmp_path)
    p = st.put_tensors("vectors", "vk", {"vector": torch.arange(16, dtype=torch.float32)})
    assert torch.equal(st.get_tensors("vectors", "vk")["vector"], torch.arange(16, dtype=torch.float32))
    raw = bytearray(p.read_bytes())
    raw[-4:] = b"\x00\x00\x80\x7f"  # the last float becomes +inf, the header is intact
    p.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="eas"):
        assert st.get_tensors("vectors", "vk") is None
    assert "checksum mismatch" in caplog.text


def test_a_record_without_checksum_is_not_trusted(tmp_path):
    st = store.Store(tmp_path)
    p = st.path("cells", "old", ".json")
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"item_ids": ["a"], "labels": [0], "preds": [0]}))  # an older eas's layout
    assert st.get_json("cells", "old") is None


@pytest.mark.parametrize("bad", [{}, {"item_ids": ["a", "b"], "labels": [0, 1], "preds": [0]},
                                 {"item_ids": ["a", "b"], "labels": [0, 1], "preds": [0, 7]}])
def test_a_record_of_the_wrong_shape_is_recomputed(tmp_path, bad):
    items = [MCItem(id="a", question="q", options=["x", "y"], label=0),
             MCItem(id="b", question="q", options=["x", "y"], label=1)]
    st = store.Store(tmp_path)
    st.put_json("cells", "k", bad)  # a valid checksum over a record this job cannot use
    assert st.get_json("cells", "k", Scored.fits(items)) is None
    good = {"item_ids": ["a", "b"], "labels": [0, 1], "preds": [1, 1]}
    st.put_json("cells", "k", good)
    assert Scored(**st.get_json("cells", "k", Scored.fits(items))).accuracy == 0.5


# -- 12: disk full -------------------------------------------------------------------
def test_disk_full_is_one_error_naming_the_path_and_keeps_no_partial_file(tmp_path):
    def full(p):
        p.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "store" / "cells" / "x.json"
    with pytest.raises(store.StoreError, match=r"no space left writing .*x\.json \(needs 0\.0 MiB, .* free\)"):
        store._atomic(target, full, needed=1000)
    assert not target.exists() and not list(target.parent.glob(".*tmp"))


# -- 17: a re-run says what came from the store ----------------------------------------
def test_store_counts_hits_and_computed_records(tmp_path):
    st = store.Store(tmp_path)
    st.put_json("cells", "a", {"x": 1})
    st.get_json("cells", "a")
    st.get_json("cells", "missing")
    assert st.tally("cells") == (1, 1)


# -- 18: +field=value --------------------------------------------------------------
@pytest.mark.parametrize("extra", ["+foo=1", "+model.dtpye=bfloat16", "+experiment.fitnes=judge"])
def test_unknown_keys_are_rejected_even_with_plus(extra):
    cfg = _compose([extra])
    with pytest.raises(config_mod.ConfigError, match="unknown config key"):
        prepare(cfg)


def test_dict_fields_still_take_any_key():
    cfg = _compose(["model=tiny_random", "+model.random_config.rope_theta=10000.0"])
    prepare(cfg)


# -- 11 and 17 through the command line ---------------------------------------------------
def test_a_prompt_longer_than_the_context_fails_before_any_forward_pass(tmp_path):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "eas.cli", "model=tiny_random",
                          "model.random_config.max_position_embeddings=16", f"store.root={tmp_path / 'st'}",
                          "progress=false"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "tokens; the model's context is 16" in last and last.startswith("eas: error: item ")
    assert not (tmp_path / "st" / "cells").exists()  # nothing was scored
    assert time.perf_counter() - t0 < 600
