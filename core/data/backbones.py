"""Backbones: the networks a domain can build, a registry of each domain.

A domain declares its built-in backbones as :class:`Backbone` records in its class attribute
``Domain.backbones`` (``{"unet": Backbone(...), "dit": Backbone(...)}``) with one of them as
``Domain.default_backbone``; the run's model config chooses one by name
(``{"model": {"backbone": "dit", ...}}``, ``diffuse train --backbone dit``), the default when it
names none (so every run written before backbones had names keeps its network). A third-party
package adds a backbone to any domain through the entry-point group ``diffuse.backbones``, named
``DOMAIN.NAME`` and pointing to a :class:`Backbone`::

    [project.entry-points."diffuse.backbones"]
    "image.mynet" = "my_package.nets:MYNET"        # a Backbone record

A record holds the builder ``build(domain, options) -> nn.Module`` (on a bound domain: it reads
``domain.info``), the checker ``check(domain, options)`` of user options (run before anything is
created), its default options and a one-line description. Domains that build exactly one network
may instead override ``Domain.build_backbone`` and declare no records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import ConfigError, UnknownNameError

__all__ = ["Backbone", "BACKBONE_GROUP", "domain_backbones", "backbone_of", "BACKBONE_KEY"]

#: the entry-point group of third-party backbones (``DOMAIN.NAME = module:RECORD``)
BACKBONE_GROUP = "diffuse.backbones"
#: the model-config key that names the backbone
BACKBONE_KEY = "backbone"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """One network a domain can build (see the module docstring)."""

    name: str
    build: Callable[[Any, dict[str, Any]], nn.Module]
    check: Callable[[Any, dict[str, Any]], None] | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


def _plugged(domain_name: str) -> dict[str, Backbone]:
    out: dict[str, Backbone] = {}
    for ep in entry_points(group=BACKBONE_GROUP):
        dom, _, name = ep.name.partition(".")
        if dom != domain_name or not name:
            continue
        try:
            record = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the domain
            log.warning("backbone %s failed to load from %s: %s: %s", ep.name, ep.value, type(exc).__name__, exc)
            continue
        if isinstance(record, Backbone):
            out[name] = record
        else:
            log.warning("entry point %s (%s) is not a diffuse Backbone record; ignored", ep.name, ep.value)
    return out


def domain_backbones(domain: Any) -> dict[str, Backbone]:
    """The backbones ``domain`` can build: its own records, then those plugged in for it (a plug-in
    does not replace a built-in of the same name)."""
    own = dict(getattr(type(domain), "backbones", {}) or {})
    return {**_plugged(domain.name), **own}


def backbone_of(domain: Any, model: Mapping[str, Any]) -> tuple[Backbone, dict[str, Any]]:
    """The record ``model`` chooses (``model["backbone"]``, else the domain's default) and the
    model options without that key; an UnknownNameError naming the domain's backbones otherwise."""
    known = domain_backbones(domain)
    options = {k: v for k, v in model.items() if k != BACKBONE_KEY}
    name = model.get(BACKBONE_KEY, getattr(domain, "default_backbone", None))
    if not known:
        if BACKBONE_KEY in model:
            raise ConfigError(f"the {domain.name} domain builds one network; it has no named backbones "
                              f"(leave out model.{BACKBONE_KEY})")
        raise UnknownNameError(f"the {domain.name} domain declares no backbone")
    if not isinstance(name, str) or name not in known:
        raise UnknownNameError(f"unknown {domain.name} backbone {name!r}; expected one of {', '.join(sorted(known))}")
    return known[name], options
