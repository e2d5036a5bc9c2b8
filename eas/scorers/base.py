"""What every scorer shares: the sample it reads, the context it may use, loading by name, and
the one check of its output (the right length, finite floats: a scorer never returns NaN)."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from eas import extensions
from eas.config import ConfigError

Columns = dict[str, list[float]]


@dataclass(frozen=True)
class Sample:
    """One generation as scorers see it.

    Attributes:
        prompt: the user prompt, as a judge is shown it.
        response: the decoded continuation.
        prompt_ids: the model's input tokens (the templated prompt).
        response_ids: the generated token ids (EOS excluded).
    """

    prompt: str
    response: str
    prompt_ids: list[int]
    response_ids: list[int]


@dataclass
class Context:
    """What scorers may use: the subject model (run unsteered) and its tokenizer, for perplexity
    and the default local judge; where the API judge caches its answers."""

    model: Any
    tokenizer: Any
    pad: int
    batch_size: int
    prompt_format: str = "chat"
    store_root: str | None = None


def module(name: str, field: str) -> ModuleType:
    """The scorer module ``name`` (``eas.scorers.<name>`` or a dotted import path).

    Raises:
        ConfigError: no such module, or it defines no ``make``; names ``field``.
    """
    try:
        return extensions.load("scorer", name, field, needs=("make",))
    except extensions.ExtensionError as e:
        raise ConfigError(str(e)) from None


def check(name: str, params: dict, field: str | None = None) -> None:
    """Before anything loads: the scorer exists and its ``validate`` accepts ``params``."""
    field = field or f"experiment.scorers.{name}"
    _validate(module(name, field), params, field)


def _validate(mod: ModuleType, params: dict, field: str) -> None:
    """``mod.validate(params, field)``, or ``mod.validate(params)`` for a scorer that names no field."""
    fn = getattr(mod, "validate", None)
    if fn is None:
        return
    try:
        takes_field = len(inspect.signature(fn).parameters) >= 2
    except (TypeError, ValueError):  # no signature to read (a builtin): give it the field
        takes_field = True
    if takes_field:
        fn(dict(params), field)
    else:
        fn(dict(params))


def columns(name: str, params: dict, field: str | None = None) -> list[str] | None:
    """The columns scorer ``name`` will write with ``params``; None if it does not say."""
    mod = module(name, field or f"experiment.scorers.{name}")
    return list(mod.columns(dict(params))) if hasattr(mod, "columns") else None


def load(name: str, params: dict, ctx: Context, field: str | None = None) -> Callable[[Sequence[Sample]], Columns]:
    """The scorer ``name`` built with ``params``: ``samples -> {column: values}``, checked.

    The callable carries ``fingerprint`` (what besides its params decides its numbers: the
    module's ``VERSION`` and whatever the scorer reports, e.g. a judge model's fingerprint).
    """
    field = field or f"experiment.scorers.{name}"
    mod = module(name, field)
    _validate(mod, params, field)
    fn = mod.make(dict(params), ctx)

    def score(samples: Sequence[Sample]) -> Columns:
        return checked(name, fn(list(samples)), len(samples))

    score.fingerprint = [mod.__name__, getattr(mod, "VERSION", 0), getattr(fn, "fingerprint", None)]
    return score


def checked(name: str, columns: Any, n: int) -> Columns:
    """``columns`` as ``{str: [n floats]}``; anything else, or a value that is not finite, raises.

    Raises:
        ValueError: names the scorer, the column and the first bad value.
    """
    if not isinstance(columns, dict) or not columns:
        raise ValueError(f"scorer {name} returned {type(columns).__name__}, not a dict of columns")
    out: Columns = {}
    for col, values in columns.items():
        values = list(values)
        if len(values) != n:
            raise ValueError(f"scorer {name}: column {col!r} has {len(values)} values for {n} samples")
        floats = [float(v) for v in values]
        bad = next((i for i, v in enumerate(floats) if not math.isfinite(v)), None)
        if bad is not None:
            raise ValueError(f"scorer {name}: column {col!r} is {floats[bad]} for sample {bad}; "
                             f"a score must be a finite number")
        out[str(col)] = floats
    return out


def param(params: dict, key: str, field: str, kind: type, default: Any = None, choices: Sequence | None = None):
    """``params[key]`` checked against ``kind`` (and ``choices``); a ConfigError naming ``field.key``."""
    value = params.get(key, default)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok or (choices is not None and value not in choices):
        allowed = f"one of {', '.join(map(str, choices))}" if choices else f"a {kind.__name__}"
        raise ConfigError(f"{field}.{key}={value!r}: must be {allowed}")
    return value


def known(params: dict, field: str, keys: Sequence[str]) -> None:
    """Every key of ``params`` is one the scorer reads: a misspelt one is an error, never ignored."""
    unknown = sorted(set(params) - set(keys))
    if unknown:
        raise ConfigError(f"{field}: unknown parameter {unknown[0]!r}; this scorer takes: "
                          f"{', '.join(keys) or 'none'}")
