"""Reading activations in vocabulary space: the logit lens, steering vectors and principal
directions unembedded.

The logit lens (nostalgebraist 2020) decodes a residual-stream state as if it were the
last block's output: through the model's final norm, then its unembedding (the LM
head), then Gemma's final logit softcapping ``cap * tanh(logits / cap)`` where
``config.final_logit_softcapping`` is set, exactly as the model's own forward does. So the
lens of block ``L - 1``'s output (site ``residual``) is the model's logits.

What lies between the last block and the LM head is data, one row per family of
``eas.core.sites.FAMILIES``: ``FINAL_NORM``. A new architecture is one more row.

All functions run without gradients and return float32 logits on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from eas.core.sites import ModelError, family_of

# Family (as in eas.core.sites.FAMILIES) -> the modules applied, in order, to the last
# block's output before the LM head; a module the loaded model sets to None is skipped
# (OPT without a final norm, or without project_out when word_embed_proj_dim == hidden_size).
FINAL_NORM: dict[str, tuple[str, ...]] = {
    "llama": ("model.norm",),
    "gemma": ("model.norm",),
    "gpt2": ("transformer.ln_f",),
    "gpt_neox": ("gpt_neox.final_layer_norm",),
    "opt": ("model.decoder.final_layer_norm", "model.decoder.project_out"),
    "phi": ("model.final_layernorm",),
}


def _resolve(model: nn.Module, path: str) -> nn.Module | None:
    obj: Any = model
    for part in path.split("."):
        if obj is None:
            return None
        if not hasattr(obj, part):
            raise ModelError(
                f"{type(model).__name__} has no module {path!r} (eas.core.lens.FINAL_NORM row "
                f"of the {family_of(model)} family); fix that row for this model"
            )
        obj = getattr(obj, part)
    return obj


def final_norm(model: nn.Module) -> list[nn.Module]:
    """The modules between the last block's output and the LM head, in order (``FINAL_NORM``).

    Raises:
        ModelError: An architecture with no family, or a path the model does not have.
    """
    mods = [_resolve(model, p) for p in FINAL_NORM[family_of(model)]]
    return [m for m in mods if m is not None]


def _unembedding(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ModelError(f"{type(model).__name__} has no output embeddings (not a causal LM?)")
    return head


def _softcap(model: nn.Module, logits: Tensor) -> Tensor:
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def logit_lens(model: nn.Module, hidden: Tensor) -> Tensor:
    """Decode residual-stream states as next-token logits.

    Args:
        model: A loaded HF causal LM of a family in ``FINAL_NORM``.
        hidden: ``[..., d_model]`` states (any device and dtype; cast to the head's).

    Returns:
        ``[..., vocab]`` float32 on the model's device: final norm, LM head (its bias
        included), then softcapping where configured.
    """
    head = _unembedding(model)
    x = hidden.to(device=head.weight.device, dtype=head.weight.dtype)
    for module in final_norm(model):
        x = module(x)
    return _softcap(model, head(x).float())


@torch.no_grad()
def layer_lens(model: nn.Module, hidden_per_layer: Tensor | list[Tensor]) -> Tensor:
    """The logit lens of every layer.

    Args:
        hidden_per_layer: ``[layer, ..., d_model]`` (e.g. ``capture``'s ``[layer, text, d]``
            for site ``residual``) or a list of ``[..., d_model]``, one per layer.

    Returns:
        ``[layer, ..., vocab]`` float32. Memory grows with ``layer x vocab``: pass few
        positions (or slice the layers) for large vocabularies.
    """
    return torch.stack([logit_lens(model, h) for h in hidden_per_layer])


@dataclass(frozen=True)
class AnswerRank:
    """Where one token stands in a distribution.

    Attributes:
        rank: ``[...]`` int64, how many tokens have a strictly higher logit (0 = top; ties
            rank together).
        prob: ``[...]`` float32, the token's softmax probability over the whole vocabulary.
    """

    rank: Tensor
    prob: Tensor


def answer_rank(logits: Tensor, token_id: int | Tensor) -> AnswerRank:
    """Rank and probability of ``token_id`` in ``logits [..., vocab]``.

    Args:
        logits: ``[..., vocab]``.
        token_id: One id for every row, or ``[...]`` ids, one per row.

    Raises:
        ValueError: An id outside ``[0, vocab)``.
    """
    vocab = logits.shape[-1]
    ids = torch.as_tensor(token_id, dtype=torch.long, device=logits.device)
    ids = ids.expand(logits.shape[:-1])[..., None]
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token_id must lie in [0, {vocab}); got {token_id!r}")
    logits = logits.float()
    target = logits.gather(-1, ids)
    rank = (logits > target).sum(-1)
    prob = torch.softmax(logits, dim=-1).gather(-1, ids)[..., 0]
    return AnswerRank(rank=rank, prob=prob)


@dataclass(frozen=True)
class TopTokens:
    """The ``k`` highest-scoring tokens, best first.

    Attributes:
        ids: ``[..., k]`` int64 token ids (decode with the model's tokenizer).
        logits: ``[..., k]`` their logits (or unembedding scores), float32.
    """

    ids: Tensor
    logits: Tensor


def top_tokens(logits: Tensor, k: int = 10) -> TopTokens:
    """The ``k`` largest entries of ``logits [..., vocab]`` (ties in index order not
    guaranteed).

    Raises:
        ValueError: ``k`` outside ``[1, vocab]``.
    """
    vocab = logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must lie in [1, vocab={vocab}]; got {k!r}")
    values, ids = torch.topk(logits.float(), k, dim=-1)
    return TopTokens(ids=ids, logits=values)


@dataclass(frozen=True)
class VectorLens:
    """Top tokens of a direction and of its negation.

    Attributes:
        positive: ``TopTokens`` of ``+v``: what adding the vector promotes.
        negative: ``TopTokens`` of ``-v``: what subtracting it promotes.
        normed: Whether the final norm (and head bias, softcapping) was applied.
    """

    positive: TopTokens
    negative: TopTokens
    normed: bool


@torch.no_grad()
def vector_lens(model: nn.Module, vector: Any, k: int = 10, normed: bool = False) -> VectorLens:
    """Unembed a direction (a steering vector, a probe weight) of the residual stream.

    ``normed=False``: the direct unembedding ``v @ W_U^T``, linear in ``v`` (no head bias,
    no softcapping), so ``-v``'s top tokens are ``+v``'s bottom tokens and the scale of
    ``v`` only scales the scores. ``normed=True``: ``logit_lens(model, ±v)``, reading the
    vector as if it were a residual state (RMSNorm makes the result independent of
    ``v``'s norm; a LayerNorm also removes its mean and adds its bias).

    Args:
        vector: ``[..., d_model]`` (numpy or tensor).
        k: Tokens per sign.
        normed: Whether to pass through the final norm.

    Returns:
        ``VectorLens`` with ``[..., k]`` ids and scores per sign.
    """
    head = _unembedding(model)
    v = torch.as_tensor(vector).to(device=head.weight.device, dtype=head.weight.dtype)
    if normed:
        pos, neg = logit_lens(model, v), logit_lens(model, -v)
    else:
        pos = (v @ head.weight.T).float()
        neg = -pos
    return VectorLens(top_tokens(pos, k), top_tokens(neg, k), normed)


@dataclass(frozen=True)
class SVD:
    """Leading principal directions of a set of activations.

    Attributes:
        singular_values: ``[k]``, descending.
        explained: ``[k]``, each direction's fraction of the total sum of squares
            (``s_i^2 / sum_j s_j^2`` over all singular values): of the variance when
            centred, of the uncentred second moment otherwise.
        components: ``[k, d]``, the right singular vectors (unit rows), each signed so
            that its largest-magnitude entry is positive.
        mean: ``[d]``, the mean subtracted before the decomposition (zeros when
            ``center=False``).
    """

    singular_values: np.ndarray
    explained: np.ndarray
    components: np.ndarray
    mean: np.ndarray


def svd(acts: Any, k: int, center: bool = True) -> SVD:
    """Top-``k`` singular directions of ``acts [n, d]`` (``numpy.linalg.svd``, float64).

    Args:
        acts: ``[n, d]``, one row per text (numpy or tensor).
        k: Directions to keep, ``1 <= k <= min(n, d)``.
        center: Subtract the column mean first (PCA) or not.

    Raises:
        ValueError: Not 2-D, a non-finite value, or ``k`` out of range.
    """
    if isinstance(acts, Tensor):
        acts = acts.detach().to("cpu").double().numpy()
    x = np.asarray(acts, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"acts must be 2-D [n, d]; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(
            f"acts must be finite; got {int((~np.isfinite(x)).sum())} NaN/inf value(s)"
        )
    if not 1 <= k <= min(x.shape):
        raise ValueError(f"k must lie in [1, min(n, d)={min(x.shape)}]; got {k!r}")
    mean = x.mean(axis=0) if center else np.zeros(x.shape[1])
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    total = float(np.sum(s**2))
    explained = s[:k] ** 2 / total if total > 0 else np.full(k, np.nan)
    v = vt[:k]
    signs = np.sign(v[np.arange(k), np.argmax(np.abs(v), axis=1)])
    signs[signs == 0] = 1.0
    return SVD(singular_values=s[:k], explained=explained, components=v * signs[:, None], mean=mean)


def unembed_directions(model: nn.Module, V: Any, k: int = 10, normed: bool = False) -> VectorLens:
    """Top tokens of both signs of each direction, e.g. ``svd(...).components``.

    Args:
        V: ``[n_directions, d_model]``.
        k: Tokens per sign.
        normed: As for ``vector_lens``.

    Returns:
        ``VectorLens`` with ``[n_directions, k]`` ids and scores per sign.
    """
    return vector_lens(model, V, k, normed)
