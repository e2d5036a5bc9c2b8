"""What every method shares: the contrast, its size check, the CAA pairs, and reading
vectors from files (one mechanism and one check for every vector that is not extracted)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from torch import Tensor

from eas import extensions
from eas.data.schema import MCItem
from eas.prompts import Prompter


class TooFewExamples(ValueError):
    """A method has too few positives or negatives to build a vector."""


class VectorError(ValueError):
    """Vectors from ``method.vector_path`` or the store do not fit the job (model, site, layer, width)."""


def module(method_cfg) -> ModuleType:
    """The module of ``method.name``, or of ``method.module`` when set (see ``eas.methods``).

    Raises:
        ExtensionError: no such module, or it is neither an extracted method (``contrast`` and
            ``aggregate``) nor one whose vectors another experiment makes (``stored_key``).
    """
    field = "method.module" if method_cfg.get("module") else "method.name"
    name = method_cfg.get("module") or method_cfg.get("name")
    mod = extensions.load("method", name, field)
    if not is_extracted(mod) and not hasattr(mod, "stored_key"):
        raise extensions.ExtensionError(
            f"{field}={name!r}: module {mod.__name__!r} defines neither "
            f"contrast() and aggregate() (an extracted method) nor stored_key() (vectors another experiment "
            f"makes): see eas/methods/__init__.py")
    return mod


def is_extracted(mod: ModuleType) -> bool:
    """Whether the method builds its vectors from train activations (``contrast`` + ``aggregate``)."""
    return hasattr(mod, "contrast") and hasattr(mod, "aggregate")


@dataclass(frozen=True)
class Contrast:
    positives: list[str]
    negatives: list[str]
    paired: bool  # positives[i] and negatives[i] come from the same item

    @property
    def texts(self) -> list[str]:
        """Positives then negatives: the order one capture pass over both sides uses."""
        return [*self.positives, *self.negatives]


def right_and_wrong(items: Sequence[MCItem], predicted: Sequence[int]) -> tuple[list[int], list[int]]:
    """Indices of the items the unsteered model answered right, and of those it answered wrong."""
    right = [i for i, (it, p) in enumerate(zip(items, predicted)) if p == it.label]
    wrong = [i for i, (it, p) in enumerate(zip(items, predicted)) if p != it.label]
    return right, wrong


def caa_pairs(items: Sequence[MCItem], predicted: Sequence[int], prompter: Prompter, seed: int) -> Contrast:
    """The CAA contrast: every item's scoring prompt followed by the correct (behaviour-matching)
    letter minus the same prompt followed by a wrong letter (the one the model chose when it
    was wrong, else a seeded random one)."""
    rng = np.random.default_rng(seed)
    pos, neg = [], []
    for it, p in zip(items, predicted):
        if p != it.label:
            other = int(p)
        else:
            others = [k for k in range(len(it.options)) if k != it.label]
            other = int(others[rng.integers(len(others))])
        pos.append(prompter.mc_with_letter(it, it.label))
        neg.append(prompter.mc_with_letter(it, other))
    return Contrast(pos, neg, paired=True)


def check_size(contrast: Contrast, method: str, items: Sequence[MCItem], predicted: Sequence[int],
               min_per_class: int) -> Contrast:
    """``contrast`` if each side has at least ``min_per_class`` texts.

    Raises:
        TooFewExamples: with the counts and what to change.
    """
    if len(contrast.positives) < min_per_class or len(contrast.negatives) < min_per_class:
        right, wrong = right_and_wrong(items, predicted)
        raise TooFewExamples(
            f"method={method}: {len(contrast.positives)} positives and {len(contrast.negatives)} negatives "
            f"from {len(items)} train items ({len(right)} answered right, {len(wrong)} wrong); "
            f"need at least {min_per_class} of each (method.min_per_class). Use more items "
            f"(n_train_proportion, max_sample_size) or another method."
        )
    return contrast


@dataclass(frozen=True)
class Expected:
    """What a vector must fit to steer this job."""

    method: str
    site: str
    position: str
    layers: list[int]
    model: str  # the model's name, as written in vector files' metadata
    d_model: int


def _candidates(path: Path, want: Expected) -> list[tuple[Path, dict]]:
    from safetensors import safe_open

    files = [path] if path.is_file() else sorted([*path.glob("vectors/*.safetensors"),
                                                 *path.glob("probes/*.safetensors")])
    out = []
    for f in files:
        with safe_open(str(f), "pt") as fh:
            meta = dict(fh.metadata() or {})
        if path.is_dir() and (meta.get("method") != want.method or meta.get("site") != want.site):
            continue  # a run dir holds other methods' and sites' vectors too
        out.append((f, meta))
    return out


def read_vectors(path: str | Path, want: Expected, field: str = "method.vector_path") -> dict[int, Tensor]:
    """``{layer: [d_model]}`` for ``want.layers`` from a vector file or a run dir.

    A run dir's ``vectors/*.safetensors`` and ``probes/*.safetensors`` written by ``method``
    at ``site`` are the candidates; where a layer has several, the one read at ``position``
    wins. Every file used must say it was made on this model at this site, and hold a
    ``vector`` of this model's width.

    Raises:
        VectorError: no such file, no vector for a requested layer, or one that does not fit,
            naming the file and what differs.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise VectorError(f"{field}={str(path)!r}: no such file or folder")
    by_layer: dict[int, list[tuple[Path, dict]]] = {}
    for f, meta in _candidates(path, want):
        if "layer" not in meta:
            raise VectorError(f"{field}: {f} has no 'layer' in its metadata: not a vector file of eas")
        by_layer.setdefault(int(meta["layer"]), []).append((f, meta))
    if not by_layer:
        raise VectorError(f"{field}={str(path)!r}: no {want.method} vector at steer_target={want.site} there "
                          f"(files: vectors/*.safetensors or probes/*.safetensors of a run dir, or one file)")
    missing = [L for L in want.layers if L not in by_layer]
    if missing:
        raise VectorError(f"{field}={str(path)!r}: no vector for layer={missing} (has layers {sorted(by_layer)})")
    out = {}
    for L in want.layers:
        found = by_layer[L]
        if len(found) > 1:
            found = [(f, m) for f, m in found if m.get("position") == want.position] or found
        if len(found) > 1:
            raise VectorError(f"{field}: {len(found)} vectors for layer {L} ({', '.join(str(f) for f, _ in found)}); "
                              f"name one file")
        f, meta = found[0]
        for key, have in (("site", want.site), ("model", want.model)):
            if meta.get(key, have) != have:
                raise VectorError(f"{field}: {f} was made at {key} {meta[key]!r}, this job has {have!r}"
                                  + (f"; use steer_target={meta[key]}" if key == "site" else ""))
        with safe_open(str(f), "pt") as fh:
            if "vector" not in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                raise VectorError(f"{field}: {f} holds no 'vector' tensor")
            v = fh.get_tensor("vector").float()
        check_width(v, want.d_model, f"{field}: {f}")
        out[L] = v
    return out


def check_width(vector: Tensor, d_model: int, where: str) -> None:
    """Raises VectorError unless ``vector`` is ``[d_model]``."""
    if tuple(vector.shape) != (d_model,):
        raise VectorError(f"{where}: the vector has shape {tuple(vector.shape)}, this model's residual "
                          f"width is {d_model}")


def vector_id(vectors: dict[int, Tensor]) -> str:
    """A short digest of the vectors' content: cells steered by them are keyed by it."""
    import hashlib

    h = hashlib.sha256()
    for L in sorted(vectors):
        h.update(vectors[L].float().numpy().tobytes())
    return h.hexdigest()[:20]
