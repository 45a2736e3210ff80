"""The schedule kinds by name, and building one from a config (``{"kind": NAME, **kwargs}``)."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigError, UnknownNameError
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, OneOf, Range, check_kwargs
from .paths import FlowSchedule
from .schedule import (CosineSchedule, LinearBetaSchedule, PolynomialSchedule, Schedule, SigmaSchedule,
                       SubVPSchedule, TableSchedule)

__all__ = ["SCHEDULES", "make_schedule", "build_schedule", "SCHEDULE_LIMITS"]


SCHEDULES: dict[str, type[Schedule]] = {
    "linear": LinearBetaSchedule,
    "cosine": CosineSchedule,
    "polynomial": PolynomialSchedule,
    "sigma": SigmaSchedule,
    "flow": FlowSchedule,
    "table": TableSchedule,
    "subvp": SubVPSchedule,
}


def make_schedule(config: dict[str, Any] | str) -> Schedule:
    """Build a schedule from ``{"kind": name, **kwargs}`` (or just a name)."""
    if isinstance(config, str):
        config = {"kind": config}
    config = dict(config)
    kind = config.pop("kind", "linear")
    if kind not in SCHEDULES:
        raise UnknownNameError(f"unknown schedule {kind!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[kind](**config)


#: limits of schedule keywords beyond their types (the constructors check the rest)
SCHEDULE_LIMITS: dict[str, Any] = {
    "num_steps": AT_LEAST_ONE, "beta_start": Range(0, 1, True, True), "beta_end": Range(0, 1, True, True),
    "s": NON_NEGATIVE, "min_alpha_bar": Range(0, 1, True, True), "power": POSITIVE,
    "precision": Range(0, 1, True, True), "sigma_min": POSITIVE, "sigma_max": POSITIVE, "rho": POSITIVE,
    "continuous_scale": POSITIVE, "beta_min": NON_NEGATIVE, "beta_max": POSITIVE,
    "shift": POSITIVE, "path": OneOf(("cosine", "linear")),
}


def build_schedule(config: Any, what: str = "diffusion.schedule") -> Schedule:
    """Build the schedule ``{"kind": ..., **kwargs}`` (or a kind's name) with every key checked;
    a ConfigError naming the key otherwise."""
    if isinstance(config, str):
        config = {"kind": config}
    if not isinstance(config, dict):
        raise ConfigError(f"{what} must be an object like {{\"kind\": \"cosine\"}}, got {config!r}")
    kind = config.get("kind", "linear")
    if not isinstance(kind, str) or kind not in SCHEDULES:
        raise ConfigError(f"{what}.kind must be one of {', '.join(sorted(SCHEDULES))}, got {kind!r}")
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    check_kwargs(SCHEDULES[kind], kwargs, f"{what}", limits=SCHEDULE_LIMITS)
    try:
        return make_schedule(config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ConfigError(f"{what} {json.dumps(config)} is invalid: {str(exc).splitlines()[0]}") from None
