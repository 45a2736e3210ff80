"""Model presets: a model config ``{"preset": NAME, **overrides}`` resolved against a domain's
table of named sizes, written once for every domain that has presets."""

from __future__ import annotations

from typing import Any, Collection, Mapping

from ..core.errors import ConfigError

__all__ = ["resolve_preset"]


def resolve_preset(model: Mapping[str, Any] | None, presets: Mapping[str, Mapping[str, Any]],
                   known: Collection[str], *, what: str, default: str = "small",
                   base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{**base, **presets[model["preset"]], **other keys of model}``; the preset defaults to
    ``default``. A :class:`~diffuse.core.errors.ConfigError` names an unknown preset or an
    option outside ``known`` (``what`` names the model in the message, e.g. ``"audio model"``)."""
    model = dict(model or {})
    name = model.pop("preset", default)
    if name not in presets:
        raise ConfigError(f"unknown {what} preset {name!r}; expected one of {', '.join(presets)}")
    unknown = sorted(set(model) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(unknown)}; known: preset, {', '.join(sorted(known))}")
    return {**(base or {}), **presets[name], **model}
