"""The store: atomic writes, content-addressed caches, manifests.

Everything a job computes that another job could reuse lives under
``store.root`` keyed by a hash of what decides it (model, data, prompts,
method, site, layer, strength, split): activations, vectors, scored cells.
Writes go to a temp file renamed into place, so a killed job never leaves a
half-written record, and every finished record survives.

A record is a claim, so the store checks it both ways: nothing non-finite is
written (a NaN score or vector is an error of the computation, not a result),
every record carries a SHA-256 of its content, and a read that does not match
(edited, truncated, wrong shape, written by an older eas) is logged with the
record's path and recomputed instead of used.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("eas")
RECORD_FORMAT = 1  # bump when the record layout changes: older records are then recomputed


class StoreError(OSError):
    """A record or output could not be written (disk full, read-only); the message names the path."""


class NonFiniteError(ValueError):
    """A value about to be stored holds NaN or infinity; the message says where."""


def key(*parts: Any) -> str:
    """A short, stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _no_space(path: Path, needed: int | None, e: OSError) -> StoreError:
    try:
        free = shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free
        room = f"{free / 2**20:.1f} MiB free"
    except (OSError, StopIteration):
        room = "free space unknown"
    need = f"needs {needed / 2**20:.1f} MiB, " if needed else ""
    return StoreError(e.errno, f"no space left writing {path} ({need}{room}); free space or point "
                               f"store.root / EAS_OUTPUTS at a larger disk")


def _atomic(path: Path, write: Callable[[Path], None], needed: int | None = None) -> Path:
    """Write through a temp file renamed into place; ``needed`` (bytes) goes into a disk-full error."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(path, needed, e) from None
        raise
    return path


def _dumps(obj: Any, allow_nan: bool = True) -> str:
    return json.dumps(obj, indent=2, default=str, allow_nan=allow_nan)


def write_json(path: Path, obj: Any) -> Path:
    text = _dumps(obj)
    return _atomic(path, lambda p: p.write_text(text), len(text))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text), len(text))


def write_parquet(path: Path, df) -> Path:
    return _atomic(path, lambda p: df.to_parquet(p, index=False))


def write_csv(path: Path, df) -> Path:
    return _atomic(path, lambda p: df.to_csv(p, index=False))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    needed = sum(v.numel() * v.element_size() for v in clean.values())
    return _atomic(path, lambda p: save_file(clean, str(p), metadata=metadata), needed)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def check_finite(obj: Any, where: str = "value") -> None:
    """Raise NonFiniteError if a number or tensor anywhere in ``obj`` is NaN or infinite."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
            n = int((~torch.isfinite(obj)).sum())
            raise NonFiniteError(f"{where}: {n} of {obj.numel()} values are NaN or infinite")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise NonFiniteError(f"{where} is {obj} (NaN or infinite)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_finite(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite(v, f"{where}[{i}]")


def _digest_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Store:
    """Content-addressed records shared by every job that points at the same root.

    ``counts`` tallies, per kind, records read back (``hit``), written (``computed``) and
    found corrupt (``corrupt``), so a job can say how much of a re-run came from the store.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.counts: Counter[tuple[str, str]] = Counter()

    def path(self, kind: str, k: str, suffix: str) -> Path:
        return self.root / kind / k[:2] / f"{k}{suffix}"

    def _corrupt(self, kind: str, p: Path, why: str) -> None:
        self.counts[(kind, "corrupt")] += 1
        log.warning("store: record %s is not trusted (%s); recomputing it", p, why)

    def get_json(self, kind: str, k: str, valid: Callable[[Any], bool] | None = None) -> Any | None:
        """The record's value, or None when missing or untrusted (checksum, format, ``valid``)."""
        p = self.path(kind, k, ".json")
        if not p.exists():
            return None
        try:
            rec = read_json(p)
        except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
            self._corrupt(kind, p, f"unreadable: {e}")
            return None
        if not (isinstance(rec, dict) and rec.get("format") == RECORD_FORMAT and "value" in rec):
            self._corrupt(kind, p, "no checksum: written by an older eas or by hand")
            return None
        if _digest_json(rec["value"]) != rec.get("sha256"):
            self._corrupt(kind, p, "checksum mismatch")
            return None
        try:
            ok = valid is None or bool(valid(rec["value"]))
        except Exception:  # noqa: BLE001 - any failure of the shape check means the record is unusable
            ok = False
        if not ok:
            self._corrupt(kind, p, "wrong shape for this job")
            return None
        self.counts[(kind, "hit")] += 1
        return rec["value"]

    def put_json(self, kind: str, k: str, obj: Any, undefined_ok: bool = False) -> Path:
        """Write a record. Non-finite numbers raise NonFiniteError, unless ``undefined_ok``
        (statistics that are undefined on their input, e.g. an AUROC of one class, are NaN)."""
        if not undefined_ok:
            check_finite(obj, f"{kind} record {k}")
        value = json.loads(_dumps(obj))  # the value as it will read back (tuples -> lists, keys -> str)
        rec = {"format": RECORD_FORMAT, "sha256": _digest_json(value), "value": value}
        self.counts[(kind, "computed")] += 1
        return write_json(self.path(kind, k, ".json"), rec)

    def get_tensors(self, kind: str, k: str) -> dict[str, torch.Tensor] | None:
        p = self.path(kind, k, ".safetensors")
        if not p.exists():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(p), framework="pt") as f:  # one open: metadata and tensors
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as e:  # noqa: BLE001 - a corrupt cache entry is recomputed
            self._corrupt(kind, p, f"unreadable: {e}")
            return None
        if meta.get("format") != str(RECORD_FORMAT):
            self._corrupt(kind, p, "no checksum: written by an older eas or by hand")
            return None
        if _digest_tensors(tensors) != meta.get("sha256"):
            self._corrupt(kind, p, "checksum mismatch")
            return None
        self.counts[(kind, "hit")] += 1
        return tensors

    def put_tensors(self, kind: str, k: str, tensors: dict[str, torch.Tensor]) -> Path:
        for name, t in tensors.items():
            check_finite(t, f"{kind} record {k} tensor {name!r}")
        meta = {"format": str(RECORD_FORMAT), "sha256": _digest_tensors(tensors)}
        self.counts[(kind, "computed")] += 1
        return write_tensors(self.path(kind, k, ".safetensors"), tensors, meta)

    def tally(self, kind: str) -> tuple[int, int]:
        """``(from the store, computed)`` records of ``kind`` so far in this process."""
        return self.counts[(kind, "hit")], self.counts[(kind, "computed")]


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
