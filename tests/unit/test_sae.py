"""eas.core.sae: the trainer recovers a planted dictionary, its statistics, the sae-lens folder
format, steering vectors as features, wrong widths."""

from __future__ import annotations

import json

import pytest
import torch

from eas.core import sae as S


def _planted(n: int = 3000, d: int = 24, f: int = 32, active: int = 3, seed: int = 0):
    """Rows that are sparse non-negative sums of ``f`` known unit directions, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(f, d, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, f)
    for i in range(n):
        idx = torch.randperm(f, generator=g)[:active]
        codes[i, idx] = 1 + 2 * torch.rand(active, generator=g)
    return codes @ D + 5.0, D


@pytest.fixture(scope="module")
def trained():
    x, D = _planted()
    sae, log = S.train_sae(x, n_features=64, l1=0.3, epochs=30, lr=3e-3, batch_size=128, seed=0)
    return x, D, sae, log


def test_the_trainer_recovers_planted_features(trained):
    _, D, sae, log = trained
    learned = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (D @ learned.T).max(dim=1).values  # each true feature's closest learned decoder row
    assert (best > 0.9).float().mean() >= 0.8, best
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)  # unit decoder rows
    assert log.stats.explained_variance > 0.9 and log.stats.l0 < 20 and log.loss[-1] < log.loss[0]
    assert log.steps == 30 * -(-3000 // 128) and log.hyper["n_features"] == 64


def test_training_is_deterministic_for_a_seed():
    x, _ = _planted(n=300)
    threads = torch.get_num_threads()
    a, la = S.train_sae(x, 16, l1=0.3, epochs=3, batch_size=64, seed=3)
    assert torch.get_num_threads() == threads  # one thread for a small SAE, only while it trains
    b, lb = S.train_sae(x, 16, l1=0.3, epochs=3, batch_size=64, seed=3)
    c, _ = S.train_sae(x, 16, l1=0.3, epochs=3, batch_size=64, seed=4)
    assert torch.equal(a.W_dec, b.W_dec) and torch.equal(a.b_enc, b.b_enc) and la.loss == lb.loss
    assert not torch.equal(a.W_dec, c.W_dec)


def test_stats_are_computed_right_and_a_forced_dead_feature_counts():
    x, _ = _planted(n=200)
    sae, _ = S.train_sae(x, 16, l1=0.3, epochs=2, seed=0)
    with torch.no_grad():
        sae.b_enc[[3, 7]] = -1e6  # never active on anything
    st = S.sae_stats(sae, x, batch_size=64)  # batched: the same as one pass
    f = sae.encode(x)
    alive = (f > 0).any(0)
    assert not alive[3] and not alive[7]
    assert st.dead_fraction == pytest.approx(float((~alive).float().mean())) and st.dead_fraction >= 2 / 16
    recon = sae.decode(f)
    assert st.mse == pytest.approx(float(((recon - x) ** 2).mean()), rel=1e-4)
    assert st.explained_variance == pytest.approx(
        1 - float(((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()), rel=1e-4)
    assert st.l0 == pytest.approx(float((f > 0).sum(1).float().mean())) and st.n == 200


def test_the_trained_sae_reads_raw_activations():
    """The training scale is folded back: decoding the codes of raw rows gives raw rows."""
    x, _ = _planted(n=500)
    big = 1000 * x
    sae, log = S.train_sae(big, 32, l1=0.3, epochs=10, seed=0)
    assert log.scale < 0.01 and log.stats.explained_variance > 0.5
    assert float((sae(big) - big).pow(2).mean()) == pytest.approx(log.stats.mse, rel=1e-4)


def test_save_load_round_trip_in_the_sae_lens_format(trained, tmp_path):
    x, _, sae, _ = trained
    S.save_sae(sae, tmp_path / "sae", {"layer": 3})
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["d_in"] == 24 and cfg["d_sae"] == 64 and cfg["architecture"] == "standard"
    assert cfg["metadata"] == {"layer": 3}
    from safetensors.torch import load_file

    w = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert sorted(w) == ["W_dec", "W_enc", "b_dec", "b_enc"] and w["W_enc"].shape == (24, 64)
    back, _ = S.load_sae(tmp_path / "sae")
    for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, k), getattr(sae, k)), k
    assert torch.equal(back.encode(x[:50]), sae.encode(x[:50]))


def test_load_reads_jumprelu_and_refuses_what_it_cannot_read(tmp_path):
    g = torch.Generator().manual_seed(0)
    sae = S.SAE(torch.randn(8, 4, generator=g), torch.zeros(4), torch.randn(4, 8, generator=g), torch.zeros(8),
                apply_b_dec_to_input=False, threshold=torch.full((4,), 0.5))
    S.save_sae(sae, tmp_path / "j")
    back, cfg = S.load_sae(tmp_path / "j")
    x = torch.randn(10, 8, generator=g)
    h = x @ sae.W_enc
    assert cfg["architecture"] == "jumprelu" and torch.equal(back.encode(x), h * (h > 0.5))
    cfg["architecture"] = "topk"
    (tmp_path / "j" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architecture 'topk' is not supported"):
        S.load_sae(tmp_path / "j")
    cfg.update(architecture="standard", normalize_activations="expected_average_only_in")
    (tmp_path / "j" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="normalize_activations='expected_average_only_in'"):
        S.load_sae(tmp_path / "j")
    with pytest.raises(FileNotFoundError, match="no cfg.json"):
        S.load_sae(tmp_path / "nothing")


def test_decompose_finds_the_two_features_a_vector_is_made_of():
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(128, 64, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    sae = S.SAE(W_dec.T.contiguous(), torch.zeros(128), W_dec, torch.zeros(64))
    a, b = 5, 40
    v = 3.0 * sae.W_dec[a] - 2.0 * sae.W_dec[b]
    dec = S.decompose(sae, v, k=2)
    assert set(dec.features.tolist()) == {a, b}
    weights = dict(zip(dec.features.tolist(), dec.weights.tolist()))
    assert weights[a] == pytest.approx(3.0, abs=1e-4) and weights[b] == pytest.approx(-2.0, abs=1e-4)
    assert dec.reconstruction == pytest.approx(1.0, abs=1e-6) and dec.norm == pytest.approx(float(v.norm()))
    one = S.decompose(sae, v, k=1)
    assert int(one.features[0]) == a and 0 < one.reconstruction < 1
    rows, values = S.top_activating(sae, sae.W_dec[[a, b]] * 10 + sae.b_dec, [a], k=2)
    assert rows.shape == (1, 2) and int(rows[0, 0]) == 0 and values[0, 0] >= values[0, 1]


def test_wrong_widths_name_both(trained):
    _, _, sae, _ = trained
    with pytest.raises(ValueError, match=r"width 25, the SAE's d_in is 24"):
        S.decompose(sae, torch.ones(25), k=2)
    with pytest.raises(ValueError, match=r"width 30, the SAE's d_in is 24"):
        S.sae_stats(sae, torch.ones(4, 30))
    with pytest.raises(ValueError, match=r"width 30, the SAE's d_in is 24"):
        sae.encode(torch.ones(4, 30))
    with pytest.raises(ValueError, match="vector is zero"):
        S.decompose(sae, torch.zeros(24), k=2)
    with pytest.raises(ValueError, match="wrong shapes: W_dec"):
        S.SAE(torch.zeros(4, 3), torch.zeros(3), torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="must be finite"):
        S.train_sae(torch.full((4, 3), float("nan")), 2)
