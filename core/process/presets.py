"""Training presets: names that fill the axes of the process a user leaves open.

The process has independent axes (``DiffusionConfig``: schedule, parameterization, time sampler,
loss weighting). A preset (``DiffusionConfig.training``, ``diffuse train --training NAME``)
only supplies defaults for the axes left ``None``; a value given explicitly always wins:

=========== ================== ============== ======== ==========================================
preset      parameterization   time sampler   t_eps    schedule
=========== ================== ============== ======== ==========================================
ddpm        eps                schedule       1e-3     linear (a domain's default replaces it)
continuous  eps                uniform        1e-3     linear
edm         edm                lognormal      1e-3     linear (EDM's own is ``{"kind": "sigma"}``)
flow        flow               logit_normal   0        the linear flow path, with ``diffusion.shift``
                                                       written in (a given schedule must be a flow path)
ct          edm                lognormal      1e-3     EDM's sigmas (``{"kind": "sigma"}``)
shortcut    flow               logit_normal   0        the linear flow path (as ``flow``)
=========== ================== ============== ======== ==========================================

A preset may also select an *objective* (:data:`PRESET_OBJECTIVES`): ``ct`` trains a consistency
model from scratch (iCT), ``shortcut`` a shortcut model (``core.process.objectives``); the run's
``objective`` section is then filled from the objective's defaults (a config file's own
``objective`` section wins). The other presets train the diffusion objective.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..config import DiffusionConfig
from ..errors import ConfigError, UnknownNameError

__all__ = ["PRESETS", "PRESET_OWNS", "PRESET_OBJECTIVES", "resolve"]

#: preset name -> the values it gives the axes left ``None``
PRESETS: dict[str, dict[str, Any]] = {
    "ddpm": {"parameterization": "eps", "time_sampler": "schedule", "t_eps": 1e-3, "schedule": {"kind": "linear"}},
    "continuous": {"parameterization": "eps", "time_sampler": "uniform", "t_eps": 1e-3, "schedule": {"kind": "linear"}},
    "edm": {"parameterization": "edm", "time_sampler": "lognormal", "t_eps": 1e-3, "schedule": {"kind": "linear"}},
    "flow": {"parameterization": "flow", "time_sampler": "logit_normal", "t_eps": 0.0,
             "schedule": {"kind": "flow", "path": "linear"}},
    "ct": {"parameterization": "edm", "time_sampler": "lognormal", "t_eps": 1e-3, "schedule": {"kind": "sigma"}},
    "shortcut": {"parameterization": "flow", "time_sampler": "logit_normal", "t_eps": 0.0,
                 "schedule": {"kind": "flow", "path": "linear"}},
}

#: presets that train an objective other than diffusion: preset name -> objective name
#: (``core.process.objectives.OBJECTIVES``)
PRESET_OBJECTIVES: dict[str, str] = {"ct": "ct", "shortcut": "shortcut"}

#: the axes that define a preset: where a user names this preset, a domain's own defaults for them
#: yield (an image domain's v-prediction default does not turn ``--training edm`` into v-prediction;
#: ``--training continuous`` keeps it)
PRESET_OWNS: dict[str, tuple[str, ...]] = {"edm": ("parameterization",), "flow": ("parameterization", "schedule"),
                                           "ct": ("parameterization", "schedule"),
                                           "shortcut": ("parameterization", "schedule")}


def resolve(config: DiffusionConfig) -> DiffusionConfig:
    """``config`` with the axes left ``None`` filled from its preset; for ``flow`` a ``shift`` other
    than 1 is written into the flow schedule (a different shift already there is an error: the
    shift is given once). A given schedule that is not a flow path with the ``flow`` preset is an
    error (a preset never overrides what was given). Idempotent."""
    if config.training not in PRESETS:
        raise UnknownNameError(f"diffusion.training must be one of {', '.join(PRESETS)} (the training mode), got "
                               f"{config.training!r}")
    fill = {k: v for k, v in PRESETS[config.training].items() if getattr(config, k) is None}
    out = replace(config, **fill)
    flow_preset = PRESETS[config.training]["schedule"].get("kind") == "flow"
    if flow_preset and isinstance(out.schedule, (dict, str)):
        sched = {"kind": out.schedule} if isinstance(out.schedule, str) else dict(out.schedule)
        if sched.get("kind") != "flow":
            raise ConfigError(f"the {config.training} preset (training \"{config.training}\") runs on a flow path; "
                              f"diffusion.schedule is "
                              f"{sched!r}: leave it out, or give {{\"kind\": \"flow\", \"path\": \"linear\" | \"cosine\"}}")
        shift = out.shift
        if not isinstance(shift, bool) and isinstance(shift, (int, float)) and shift != 1.0:
            if sched.get("shift", 1.0) not in (1.0, shift):
                raise ConfigError(f"diffusion.shift is {shift} but the flow schedule already has shift "
                                  f"{sched['shift']}; give the shift once")
            sched["shift"] = shift
        out = replace(out, schedule=sched)
    return out
