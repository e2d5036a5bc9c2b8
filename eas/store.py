"""The store: atomic writes, content-addressed caches, manifests.

Everything a job computes that another job could reuse lives under
``store.root`` keyed by a hash of what decides it (model, data, prompts,
method, site, layer, strength, split): activations, vectors, scored cells.
Writes go to a temp file renamed into place, so a killed job never leaves a
half-written record, and every finished record survives.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def key(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj: Any) -> Path:
    return _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2, default=str)))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text))


def write_parquet(path: Path, df) -> Path:
    return _atomic(path, lambda p: df.to_parquet(p, index=False))


def write_csv(path: Path, df) -> Path:
    return _atomic(path, lambda p: df.to_csv(p, index=False))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda p: save_file(clean, str(p), metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class Store:
    """Content-addressed records shared by every job that points at the same root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, k: str, suffix: str) -> Path:
        return self.root / kind / k[:2] / f"{k}{suffix}"

    def get_json(self, kind: str, k: str) -> Any | None:
        p = self.path(kind, k, ".json")
        if not p.exists():
            return None
        try:
            return read_json(p)
        except (json.JSONDecodeError, OSError):
            return None  # unreadable record: recompute rather than fail

    def put_json(self, kind: str, k: str, obj: Any) -> Path:
        return write_json(self.path(kind, k, ".json"), obj)

    def get_tensors(self, kind: str, k: str) -> dict[str, torch.Tensor] | None:
        p = self.path(kind, k, ".safetensors")
        if not p.exists():
            return None
        try:
            return read_tensors(p)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed
            return None

    def put_tensors(self, kind: str, k: str, tensors: dict[str, torch.Tensor]) -> Path:
        return write_tensors(self.path(kind, k, ".safetensors"), tensors)


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5,
            check=False,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("eas", "torch", "transformers", "hydra-core", "omegaconf", "submitit", "numpy", "pandas"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out
