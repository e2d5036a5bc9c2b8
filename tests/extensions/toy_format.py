"""A toy benchmark format outside eas: one item per line, ``question | option; option; ... | label``."""

from __future__ import annotations

from pathlib import Path

from eas.data.schema import Benchmark, DataError, MCItem


def load(cfg, seed: int = 0) -> Benchmark:
    if not cfg.path:
        raise DataError(f"benchmark.path is empty for benchmark.format={cfg.format}; give the .txt file")
    items = []
    for n, line in enumerate(Path(cfg.path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            question, options, label = (part.strip() for part in line.split("|"))
            items.append(MCItem(id=f"toy-{n}", question=question,
                                options=tuple(o.strip() for o in options.split(";")), label=int(label)))
        except ValueError as e:
            raise DataError(f"{cfg.path}:{n}: expected 'question | a; b | label' ({e})") from None
    return Benchmark(cfg.name, tuple(items), cfg.kind, str(cfg.path))
