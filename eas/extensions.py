"""How a name in a config reaches its code: one rule for every extension point.

A config names an extension by a short name, which is a module of eas's own package for
that point (``method.name=pasf`` -> ``eas.methods.pasf``), or by a dotted import path to a
module anywhere on ``sys.path`` (``method.module=my_lab.methods.toy``), so a method, a
benchmark format or an experiment kind written outside eas is one module plus one yaml,
with no list to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

# extension point -> the package holding eas's own modules for it
PACKAGES = {
    "method": "eas.methods",
    "format": "eas.data.formats",
    "experiment": "eas.experiments",
    "launcher": "eas.sweep.backends",
    "scorer": "eas.scorers",
}


class ExtensionError(ValueError):
    """A config names a module that does not exist or lacks what its extension point needs."""


def builtin(point: str) -> list[str]:
    """The short names eas ships for ``point`` (the modules of its package, ``base`` aside)."""
    pkg = importlib.import_module(PACKAGES[point])
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")
                  and m.name != "base")


def load(point: str, name: str, field: str, needs: tuple[str, ...] = ()) -> ModuleType:
    """The module ``name`` names for extension point ``point`` (see the module docstring).

    Args:
        point: a key of ``PACKAGES``.
        name: a short name of eas's package for ``point`` or a dotted import path.
        field: the config field that gave ``name``, for the error message.
        needs: attributes the module must define.

    Raises:
        ExtensionError: no such module, or it lacks one of ``needs``; the message names the
            field, the value and eas's own choices.
    """
    name = str(name)
    path = name if "." in name else f"{PACKAGES[point]}.{name}"
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as e:
        if e.name is not None and not path.startswith(e.name) and not e.name.startswith(path):
            raise  # the module exists but imports something missing: that is its own error
        raise ExtensionError(f"{field}={name!r}: no module {path!r}; choose one of "
                             f"{', '.join(builtin(point))} or give a dotted import path on sys.path") from None
    missing = [a for a in needs if not hasattr(module, a)]
    if missing:
        raise ExtensionError(f"{field}={name!r}: module {path!r} defines no {', '.join(missing)} "
                             f"(a {point} module needs {', '.join(needs)})")
    return module
