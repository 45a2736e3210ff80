"""Checks of user values, driven by types: no config framework.

:func:`check_kwargs` checks keyword arguments against a callable's signature (annotations, else
the default's type; ``bool`` is not an integer, integers are accepted for floats, ``NaN`` never,
infinity only where the default is infinite) plus optional :class:`Range` / :class:`OneOf`
limits; :func:`check_value` checks one value. The configs (``core.config``), the samplers'
options (``core.sampling.registry``) and the domains' model options use them. Every failure is
a :class:`~diffuse.core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import types
import typing
from collections.abc import Sequence as _AbcSequence
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import ConfigError

__all__ = ["Range", "OneOf", "POSITIVE", "NON_NEGATIVE", "AT_LEAST_ONE", "FRACTION", "UNIT", "check_value",
           "check_kwargs", "check_device", "check_fields", "check_positive_int", "check_seed"]


@dataclass(frozen=True)
class Range:
    """A numeric interval; ``None`` ends are open-ended. ``lo_open`` / ``hi_open`` exclude the end."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: Any) -> str | None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return self.describe()
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return self.describe()
        return None

    def describe(self) -> str:
        if self.lo == 1 and self.hi is None and not self.lo_open:
            return "a positive integer"
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (names)."""

    values: tuple

    def check(self, value: Any) -> str | None:
        return None if value in self.values else "one of " + ", ".join(map(str, self.values))


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, hi_open=True)   # [0, 1)
UNIT = Range(0, 1)                     # [0, 1]


def _hints(fn: Callable) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: fall back to the defaults' types
        return {}


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _matches(value: Any, hint: Any, allow_inf: bool) -> bool:
    if hint is Any or hint is inspect.Parameter.empty or hint is None:
        return True
    if hint is type(None):
        return value is None
    if _is_union(hint):
        return any(_matches(value, h, allow_inf) for h in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return not math.isnan(value) and (allow_inf or not math.isinf(value))
    if hint is str:
        return isinstance(value, str)
    if hint in (dict,) or origin is dict:
        return isinstance(value, dict)
    if hint in (list, tuple) or origin in (list, tuple, _AbcSequence) or hint is _AbcSequence or hint is typing.Sequence:
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return all(_matches(v, args[0], allow_inf) for v in value) if len(args) == 1 else True
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    if _is_union(hint):
        parts = [_describe(h) for h in typing.get_args(hint) if h is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + " or null" if type(None) in typing.get_args(hint) else text
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "an object"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is dict:
        return "an object"
    if hint in (list, tuple) or origin in (list, tuple, _AbcSequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        inner = _describe(args[0]) if len(args) == 1 else ""
        return f"a list of {inner.removeprefix('an ').removeprefix('a ')}s" if inner and " or " not in inner else "a list"
    return getattr(hint, "__name__", str(hint))


def _hint_from_default(default: Any) -> Any:
    if default is inspect.Parameter.empty or default is None:
        return Any
    for t in (bool, int, float, str):
        if type(default) is t:
            return t
    if isinstance(default, (list, tuple)):
        return list
    if isinstance(default, dict):
        return dict
    return Any


def check_value(name: str, value: Any, hint: Any = Any, default: Any = inspect.Parameter.empty,
                limit: Range | OneOf | Callable[[Any], str | None] | None = None) -> Any:
    """Check one value against a type hint (or, without one, the default's type) and a limit.
    ``name`` is used in the message as given (e.g. ``train.lr``). Returns ``value``."""
    if hint is Any or hint is inspect.Parameter.empty:
        hint = _hint_from_default(default)
    allow_inf = isinstance(default, float) and math.isinf(default)
    if not _matches(value, hint, allow_inf):
        raise ConfigError(f"{name} must be {_describe(hint)}, got {json.dumps(value) if _jsonable(value) else repr(value)}")
    if limit is not None and value is not None:
        problem = limit.check(value) if hasattr(limit, "check") else limit(value)
        if problem:
            raise ConfigError(f"{name} must be {problem}, got {json.dumps(value) if _jsonable(value) else repr(value)}")
    return value


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
        return True
    except (TypeError, ValueError):
        return False


def check_kwargs(fn: Callable, values: dict[str, Any], what: str, *, limits: dict[str, Any] | None = None,
                 skip: Sequence[str] = (), allow_unknown: bool = False, sep: str = ".") -> dict[str, Any]:
    """Check keyword arguments for ``fn`` (a function or a class): known names, types from the
    signature, and ``limits`` (name -> :class:`Range` / :class:`OneOf` / callable returning a
    problem or None). Messages name the key as ``f"{what}{sep}{key}"``. Returns ``values``."""
    if not isinstance(values, dict):
        raise ConfigError(f"{what} must be a JSON object of options, got {values!r}")
    sig = inspect.signature(fn)
    params = {n: p for n, p in sig.parameters.items()
              if n not in skip and n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = sorted(set(values) - set(params))
    if unknown and not allow_unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(unknown)}; known: {', '.join(sorted(params)) or 'none'}")
    hints = _hints(fn)
    for key, value in values.items():
        if key not in params:
            continue
        check_value(f"{what}{sep}{key}", value, hints.get(key, Any), params[key].default, (limits or {}).get(key))
    return values


_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def check_device(name: Any) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that exists on this machine; else a ValueError
    listing the valid devices here."""
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    valid = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else [])
    m = _DEVICE.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise ConfigError(f"unknown device {name!r}; valid devices here: {', '.join(valid)}")
    if name.startswith("cuda") and not n_cuda:
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine; "
                         f"valid devices here: {', '.join(valid)}")
    if m.group(1) is not None and int(m.group(1)) >= n_cuda:
        raise ConfigError(f"device {name!r} does not exist; valid devices here: {', '.join(valid)}")
    return name



def check_fields(obj: Any, section: str, limits: dict[str, Any]) -> None:
    """Check every field of dataclass ``obj`` against its type hint (or default) and ``limits``;
    messages name the key as ``section.field``."""
    from dataclasses import MISSING, fields

    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        default = f.default if f.default is not MISSING else inspect.Parameter.empty
        check_value(f"{section}.{f.name}", getattr(obj, f.name), hints.get(f.name, Any), default, limits.get(f.name))


def check_positive_int(name: str, value: Any) -> int:
    """``value`` when it is an integer >= 1 (not a bool); else a ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_seed(value: Any, name: str = "the seed") -> int:
    """A seed: an integer in ``[0, 2^63)``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 63:
        raise ConfigError(f"{name} must be an integer in [0, 2^63), got {value!r}")
    return value
