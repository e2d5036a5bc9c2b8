"""Sparse autoencoders on one layer's activations, and steering vectors read as SAE features.

The SAE is sae-lens's "standard" architecture (Bricken et al. 2023, as sae-lens trains it):

    f(x)  = ReLU((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)     # [..., d_sae], >= 0
    x_hat = f(x) @ W_dec + b_dec                                          # [..., d_in]

with ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]`` (one row per
feature: its direction in the residual stream), ``b_dec [d_in]``. A JumpReLU SAE (a
``threshold [d_sae]`` tensor) zeroes pre-activations at or below the threshold.

- ``train_sae``: Adam on ``||x - x_hat||^2 + l1 * sum_f f_i ||W_dec_i||``, decoder rows set back to
  unit norm after every step, deterministic for a seed. The activations are scaled for training
  so that their mean centred norm is ``sqrt(d_in)`` (sae-lens's ``expected_average_only_in``, taken
  about the mean), so one ``l1`` means the same sparsity pressure at any layer or model; the scale
  is folded back into ``b_enc`` and ``b_dec``, so the returned SAE reads raw activations, its
  decoder rows stay unit and its feature activations are in the activations' own units.
- ``sae_stats``: reconstruction MSE, explained variance, L0, dead features, of any SAE on a set.
- ``load_sae`` / ``save_sae``: sae-lens's folder format, without importing sae-lens.
- ``decompose``: a steering vector as a few decoder rows (see there for the definition).

All arithmetic is float32 torch on the CPU unless the inputs are elsewhere; inputs are
``[n, d]`` tensors or arrays, finite. A width that does not match raises ``ValueError``
naming both widths.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# sae-lens (5.x and 6.x) names: SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME in sae_lens/constants.py
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
ARCHITECTURES = ("standard", "jumprelu")


def _as_tensor(x: Any, name: str) -> Tensor:
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    t = t.to("cpu", torch.float32)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite; got {int(bad.sum())} NaN/inf value(s)")
    return t


class SAE(nn.Module):
    """A sparse autoencoder (parameters as in sae-lens; shapes in the module docstring).

    Args:
        W_enc: ``[d_in, d_sae]``.
        b_enc: ``[d_sae]``.
        W_dec: ``[d_sae, d_in]``.
        b_dec: ``[d_in]``.
        apply_b_dec_to_input: Subtract ``b_dec`` before encoding (sae-lens's default).
        threshold: ``[d_sae]`` JumpReLU thresholds, or None for ReLU.

    Raises:
        ValueError: Shapes that do not fit together.
    """

    def __init__(self, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                 apply_b_dec_to_input: bool = True, threshold: Tensor | None = None):
        super().__init__()
        d_in, d_sae = W_enc.shape
        want = {"b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
        got = {"b_enc": tuple(b_enc.shape), "W_dec": tuple(W_dec.shape), "b_dec": tuple(b_dec.shape)}
        if threshold is not None:
            want["threshold"], got["threshold"] = (d_sae,), tuple(threshold.shape)
        wrong = [f"{k} {got[k]} (want {want[k]})" for k in want if got[k] != want[k]]
        if wrong:
            raise ValueError(f"SAE with W_enc [d_in={d_in}, d_sae={d_sae}]: wrong shapes: {', '.join(wrong)}")
        self.W_enc = nn.Parameter(W_enc.float().clone())
        self.b_enc = nn.Parameter(b_enc.float().clone())
        self.W_dec = nn.Parameter(W_dec.float().clone())
        self.b_dec = nn.Parameter(b_dec.float().clone())
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.register_buffer("threshold", None if threshold is None else threshold.float().clone())
        self.requires_grad_(False)  # an SAE is read, not trained, unless train_sae trains it

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    def check_width(self, d: int, what: str = "the activations") -> None:
        """Raises ValueError unless ``d == d_in``."""
        if int(d) != self.d_in:
            raise ValueError(f"{what} have width {int(d)}, the SAE's d_in is {self.d_in}: an SAE of "
                             f"another model or site")

    def pre(self, x: Tensor) -> Tensor:
        """``[..., d_in] -> [..., d_sae]``, the pre-activations."""
        x = x.to(self.W_enc)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """``[..., d_in] -> [..., d_sae]`` feature activations (>= 0)."""
        self.check_width(x.shape[-1])
        h = self.pre(x)
        if self.threshold is not None:
            return h * (h > self.threshold)
        return torch.relu(h)

    def decode(self, f: Tensor) -> Tensor:
        """``[..., d_sae] -> [..., d_in]``."""
        return f.to(self.W_dec) @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


@dataclass(frozen=True)
class SAEStats:
    """An SAE on a set of activations ``[n, d_in]``.

    Attributes:
        mse: Mean squared reconstruction error per element, in the activations' units squared.
        explained_variance: ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``.
        l0: Mean number of active (> 0) features per row.
        dead_fraction: Fraction of features active on no row of the set.
        n: Rows.
    """

    mse: float
    explained_variance: float
    l0: float
    dead_fraction: float
    n: int


@dataclass(frozen=True)
class TrainLog:
    """What ``train_sae`` did.

    Attributes:
        stats: ``SAEStats`` of the trained SAE on its training set.
        loss: Mean training loss per epoch (in the scaled units training uses).
        scale: The factor the activations were multiplied by for training.
        steps: Optimiser steps taken.
        hyper: The hyperparameters, as passed.
    """

    stats: SAEStats
    loss: list[float]
    scale: float
    steps: int
    hyper: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def sae_stats(sae: SAE, acts: Any, batch_size: int = 4096) -> SAEStats:
    """Reconstruction and sparsity of ``sae`` on ``acts [n, d_in]``.

    Raises:
        ValueError: Not 2-D, non-finite, empty, or a width other than ``sae.d_in``.
    """
    x = _as_tensor(acts, "acts")
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"acts must be 2-D [n, d] with n >= 1; got shape {tuple(x.shape)}")
    sae.check_width(x.shape[1])
    sq, active, alive = 0.0, 0.0, torch.zeros(sae.d_sae, dtype=torch.bool)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        f = sae.encode(xb)
        sq += float(((sae.decode(f) - xb).double() ** 2).sum())
        on = f > 0
        active += float(on.sum())
        alive |= on.any(0)
    total = float(((x.double() - x.double().mean(0)) ** 2).sum())
    return SAEStats(mse=sq / x.numel(), explained_variance=1 - sq / total if total > 0 else float("nan"),
                    l0=active / len(x), dead_fraction=float((~alive).float().mean()), n=len(x))


@contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_sae(acts: Any, n_features: int, l1: float = 1.0, epochs: int = 200, lr: float = 1e-3,
              batch_size: int = 64, seed: int = 0) -> tuple[SAE, TrainLog]:
    """Train an SAE on ``acts [n, d]`` (the loss and the scaling are in the module docstring).

    Initialisation: unit decoder rows drawn from a seeded Gaussian, ``W_enc = W_dec^T``,
    ``b_enc = 0``, ``b_dec`` the data mean. Each epoch visits the rows in a seeded random order.

    Args:
        acts: ``[n, d]`` activations, one row per text (or token).
        n_features: ``d_sae``.
        l1: Sparsity coefficient on ``sum_f f_i ||W_dec_i||`` in the scaled units.
        epochs: Passes over the data.
        lr: Adam's learning rate.
        batch_size: Rows per step (capped at ``n``).
        seed: Everything random (init, order) follows it: the same inputs give the same SAE.

    Returns:
        ``(sae, log)``; the SAE on the CPU in float32, ``log.stats`` on ``acts``.

    Raises:
        ValueError: Not 2-D, non-finite, fewer than 2 rows, or a hyperparameter out of range.
    """
    x = _as_tensor(acts, "acts")
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"acts must be 2-D [n, d] with n >= 2; got shape {tuple(x.shape)}")
    for name, value, low in (("n_features", n_features, 1), ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if int(value) < low:
            raise ValueError(f"{name} must be >= {low}; got {value!r}")
    if l1 < 0 or lr <= 0:
        raise ValueError(f"l1 must be >= 0 and lr > 0; got l1={l1!r}, lr={lr!r}")
    n, d = x.shape
    mean = x.mean(0)
    spread = float((x - mean).norm(dim=1).mean())
    scale = math.sqrt(d) / spread if spread > 0 else 1.0
    xs = x * scale
    gen = torch.Generator().manual_seed(int(seed))
    W_dec = torch.randn(int(n_features), d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    sae = SAE(W_dec.T.contiguous(), torch.zeros(int(n_features)), W_dec, mean * scale).requires_grad_(True)
    bs = min(int(batch_size), n)
    # A step this small gains nothing from intra-op threads, and on shared cores their spin-waits
    # made it ~10x slower (SmolLM2 width, 256 features): train such SAEs on one thread.
    threads = 1 if bs * d * int(n_features) <= 2**25 else torch.get_num_threads()
    with _intra_op_threads(threads):
        losses, steps = _fit(sae, xs, gen, int(epochs), bs, float(l1), float(lr))
    with torch.no_grad():  # back to raw units: f_raw = f_scaled / scale (see the module docstring)
        sae.b_enc /= scale
        sae.b_dec /= scale
    sae.requires_grad_(False)
    hyper = {"n_features": int(n_features), "l1": float(l1), "epochs": int(epochs), "lr": float(lr),
             "batch_size": int(batch_size), "seed": int(seed)}
    return sae, TrainLog(stats=sae_stats(sae, x), loss=losses, scale=scale, steps=steps, hyper=hyper)


def _fit(sae: SAE, xs: Tensor, gen: torch.Generator, epochs: int, bs: int, l1: float,
         lr: float) -> tuple[list[float], int]:
    """Adam on ``xs`` (already scaled); ``(mean loss per epoch, steps)``."""
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    n, losses, steps = len(xs), [], 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, bs):
            xb = xs[order[i:i + bs]]
            f = torch.relu(sae.pre(xb))
            recon = ((f @ sae.W_dec + sae.b_dec - xb) ** 2).sum(-1).mean()
            sparsity = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
            loss = recon + l1 * sparsity
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # unit decoder rows: the L1 cannot be dodged by growing them
                sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
            total += float(loss.detach()) * len(xb)
            steps += 1
        losses.append(total / n)
    return losses, steps


# --------------------------------------------------------------------------- sae-lens folders


def save_sae(sae: SAE, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``folder/cfg.json`` and ``folder/sae_weights.safetensors`` as sae-lens 6.x does.

    ``cfg.json`` holds sae-lens's fields for a standard (or JumpReLU) SAE: ``architecture``,
    ``d_in``, ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input``,
    ``normalize_activations: "none"`` (the scale is folded in) and ``metadata`` (free-form:
    e.g. the model, hook, layer). Returns the folder.
    """
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(sae, k).detach().to("cpu", torch.float32).contiguous()
               for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.to("cpu", torch.float32).contiguous()
    cfg = {"architecture": "standard" if sae.threshold is None else "jumprelu", "d_in": sae.d_in,
           "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": dict(metadata or {})}
    save_file(tensors, str(out / WEIGHTS_FILE))
    (out / CFG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    return out


def load_sae(folder: str | Path) -> tuple[SAE, dict[str, Any]]:
    """Read an SAE saved by sae-lens (``SAE.save_model``) or ``save_sae``.

    Reads ``cfg.json`` (``d_in``, ``d_sae``; ``architecture``, default "standard";
    ``apply_b_dec_to_input``, default True as in sae-lens) and the tensors ``W_enc``, ``b_enc``,
    ``W_dec``, ``b_dec`` (and ``threshold`` for "jumprelu") of ``sae_weights.safetensors``.
    Assumption, from sae-lens 6.x's source (``StandardSAE``, ``JumpReLUSAE``, ``constants.py``):
    those file and tensor names, ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``.

    Returns:
        ``(sae, cfg)``, the SAE in float32 on the CPU and the parsed ``cfg.json``.

    Raises:
        FileNotFoundError: A missing file. ValueError: An architecture other than
        "standard"/"jumprelu", an input normalisation whose scale is not in the folder, a
        missing tensor or shapes that disagree with ``d_in``/``d_sae``.
    """
    from safetensors.torch import load_file

    root = Path(folder)
    for name in (CFG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root}: no {name} (an sae-lens SAE folder holds {CFG_FILE} and {WEIGHTS_FILE})")
    cfg = json.loads((root / CFG_FILE).read_text())
    arch = cfg.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{root}: architecture {arch!r} is not supported; allowed: {', '.join(ARCHITECTURES)}")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise ValueError(f"{root}: normalize_activations={norm!r}: that scale is applied at run time by sae-lens, "
                         f"not stored here; allowed: 'none'")
    if cfg.get("hook_head_index") is not None or cfg.get("reshape_activations", "none") != "none":
        raise ValueError(f"{root}: an SAE of attention heads (hook_z reshaping) is not supported")
    w = load_file(str(root / WEIGHTS_FILE))
    need = ["W_enc", "b_enc", "W_dec", "b_dec", *(["threshold"] if arch == "jumprelu" else [])]
    missing = [k for k in need if k not in w]
    if missing:
        raise ValueError(f"{root}/{WEIGHTS_FILE}: missing tensor(s) {missing}; has {sorted(w)}")
    d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
    if tuple(w["W_enc"].shape) != (d_in, d_sae):
        raise ValueError(f"{root}: W_enc has shape {tuple(w['W_enc'].shape)}, cfg.json says "
                         f"[d_in={d_in}, d_sae={d_sae}]")
    sae = SAE(w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], bool(cfg.get("apply_b_dec_to_input", True)),
              w.get("threshold"))
    return sae, cfg


# --------------------------------------------------------------------------- steering vectors as features


@dataclass(frozen=True)
class Decomposition:
    """A vector as ``k`` SAE features, best first.

    Attributes:
        features: ``[k]`` int64 feature indices, by ``|cosine|`` descending.
        cosine: ``[k]`` cosine of the vector with each feature's decoder row.
        weights: ``[k]`` least-squares coefficients of the vector on those decoder rows together
            (in the vector's units; negative: the vector points against the feature).
        encoder: ``[k]`` ``v @ W_enc`` for those features (no biases: a steering vector is a
            difference of activations, so offsets cancel), a secondary reading.
        reconstruction: ``1 - ||v - v_hat||^2 / ||v||^2`` with ``v_hat = weights @ W_dec[features]``.
        norm: ``||v||``.
    """

    features: Tensor
    cosine: Tensor
    weights: Tensor
    encoder: Tensor
    reconstruction: float
    norm: float


@torch.no_grad()
def decompose(sae: SAE, vector: Any, k: int = 10) -> Decomposition:
    """Read a steering vector as SAE features.

    Definition: the features are the ``k`` decoder rows with the largest ``|cos(v, W_dec_i)|``
    (a direction is compared with directions, and neither bias applies to a difference of
    activations); their weights are the least-squares fit of ``v`` on those rows jointly, and
    the reconstruction fraction says how much of ``||v||^2`` the ``k`` features carry.

    Args:
        vector: ``[d_in]``.
        k: Features, ``1 <= k <= d_sae``.

    Raises:
        ValueError: Not 1-D, non-finite, a width other than ``sae.d_in``, ``k`` out of range
            or a zero vector.
    """
    v = _as_tensor(vector, "vector")
    if v.ndim != 1:
        raise ValueError(f"vector must be 1-D [d]; got shape {tuple(v.shape)}")
    sae.check_width(v.shape[0], "the vector")
    if not 1 <= k <= sae.d_sae:
        raise ValueError(f"k must lie in [1, d_sae={sae.d_sae}]; got {k!r}")
    norm = float(v.norm())
    if norm == 0:
        raise ValueError("vector is zero: it has no direction to decompose")
    W = sae.W_dec.detach().cpu().double()
    rows = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    cos = rows @ (v.double() / norm)
    idx = torch.topk(cos.abs(), k).indices
    D = W[idx]  # [k, d]
    weights = torch.linalg.lstsq(D.T, v.double()[:, None]).solution[:, 0]
    resid = v.double() - weights @ D
    enc = v @ sae.W_enc.detach().cpu()[:, idx]
    return Decomposition(features=idx, cosine=cos[idx].float(), weights=weights.float(), encoder=enc.float(),
                         reconstruction=float(1 - resid.pow(2).sum() / norm**2), norm=norm)


@torch.no_grad()
def top_activating(sae: SAE, acts: Any, features: Any, k: int = 5) -> tuple[Tensor, Tensor]:
    """The rows of ``acts [n, d_in]`` on which each of ``features`` fires most.

    Returns:
        ``(rows [m, min(k, n)] int64, values [m, min(k, n)])`` for ``m`` features, highest first;
        a value of 0 means the feature is not active on that row.
    """
    x = _as_tensor(acts, "acts")
    if x.ndim != 2:
        raise ValueError(f"acts must be 2-D [n, d]; got shape {tuple(x.shape)}")
    f = sae.encode(x)[:, torch.as_tensor(features, dtype=torch.long)]  # [n, m]
    values, rows = torch.topk(f.T, min(int(k), len(x)), dim=1)
    return rows, values
