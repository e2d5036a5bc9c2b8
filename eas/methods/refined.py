"""``method=refined``: the vector ``experiment=cmaes`` refined from an extracted one (``method.source``).

Not extracted here: the steer experiment finds the refinement in the store, at the same
setup, layer and site, or reads it from ``method.vector_path`` (a cmaes run dir or file)."""

from __future__ import annotations

from eas import store
from eas.config import ConfigError
from eas.methods.base import is_extracted, module

MISSING = ("Run `eas experiment=cmaes method={source} layer={layer}` with the same model, benchmark and "
           "splits first, or set method.vector_path=<cmaes run dir>")


def stored_key(base_key: list, source: str, site: str, layer: int) -> str:
    """Where experiment=cmaes puts the vector it refined from method ``source`` at ``layer``."""
    return store.key("cmaes_vector", base_key, str(source), site, int(layer))


def validate(cfg) -> None:
    source = cfg.method.source
    if not is_extracted(module({"name": source})):
        raise ConfigError(f"method.source={source!r}: method=refined steers with a vector refined from an "
                          f"extracted one; name how it was extracted, e.g. method.source=pasf")
