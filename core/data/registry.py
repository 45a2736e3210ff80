"""Domain registry: domains registered in code plus the entry-point group ``diffuse.domains``.

The built-in domains are registered through the same entry-point group in diffuse's own
``pyproject.toml``, so core never imports ``diffuse.domains``.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from ..errors import UnknownDomainError
from .domain import Domain

__all__ = ["register_domain", "get_domain", "domain_class", "available_domains", "ENTRY_POINT_GROUP",
           "UnknownDomainError"]

ENTRY_POINT_GROUP = "diffuse.domains"
_REGISTERED: dict[str, type[Domain]] = {}
log = logging.getLogger(__name__)


def register_domain(cls: type[Domain]) -> type[Domain]:
    """Register a :class:`Domain` subclass under ``cls.name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Domain)):
        raise TypeError(f"{cls!r} is not a Domain subclass")
    _REGISTERED[cls.name] = cls
    return cls


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_domains() -> dict[str, str]:
    """``{name: one-line description}`` of every registered and plugged-in domain."""
    out: dict[str, str] = {}
    for name, ep in sorted(_entry_points().items()):
        try:
            cls = ep.load()
            out[name] = getattr(cls, "description", "")
        except Exception as exc:  # a broken plug-in must not break the listing
            out[name] = f"(failed to load: {exc})"
    for name, cls in _REGISTERED.items():
        out[name] = cls.description
    return dict(sorted(out.items()))


def get_domain(name: str) -> Domain:
    """An instance of the domain called ``name``."""
    return domain_class(name)()


def domain_class(name: str) -> type[Domain]:
    """The :class:`Domain` subclass called ``name`` (registered in code, or an entry point); an
    UnknownDomainError naming the available ones, or saying why a plug-in failed to load."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    eps = _entry_points()
    if name in eps:
        try:
            cls = eps[name].load()
        except Exception as exc:  # a broken plug-in: say which and why, in one line
            raise UnknownDomainError(f"domain {name!r} failed to load from {eps[name].value}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Domain)):
            raise UnknownDomainError(f"entry point {name!r} does not point to a Domain subclass")
        return cls
    known = sorted(set(eps) | set(_REGISTERED))
    raise UnknownDomainError(f"unknown domain {name!r}; available: {', '.join(known) or 'none'}")
