"""Objectives beside plain diffusion: the few-step ones, one record each, built here in one place.

A run's ``objective`` section (``RunConfig.objective``; ``None``: the diffusion loss of
:class:`~diffuse.core.process.diffusion.Diffusion`) is ``{"name": NAME, **options}``. Each
:class:`ObjectiveRecord` states its facts once: the paper, its options (a dataclass with
``validate``), how to build the trainer's objective, whether it distils a teacher, how many noise
inputs its backbone takes (2 for flow maps) and so which denoiser it is, and the few-step sampler
its models default to. The trainer runs every one the same way (EMA, checkpoints, exact resume,
several processes); ``diffuse.api`` builds the denoiser and the teacher through the record.

=========== ================================================= ======== =========== ==============
name        objective                                         teacher  sampler     default steps
=========== ================================================= ======== =========== ==============
cd          consistency distillation (Song et al. 2023; iCT)  yes      consistency 2
ct          consistency training (iCT; ECT from a model)      no       consistency 2
shortcut    shortcut models (Frans et al. 2024)               no       flowmap     4
progressive progressive distillation (Salimans & Ho 2022)     yes      ddim        its N
=========== ================================================= ======== =========== ==============

``--training ct`` / ``--training shortcut`` select the from-scratch ones through their presets
(``core.process.presets.PRESET_OBJECTIVES``); ``diffuse distill`` the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import ConfigError, UnknownNameError
from .consistency import ConsistencyConfig, ConsistencyObjective
from .denoiser import Denoiser
from .diffusion import Diffusion
from .flowmap import FlowMapDenoiser
from .progressive import ProgressiveConfig, ProgressiveObjective, student_grid
from .shortcut import ShortcutConfig, ShortcutObjective

__all__ = ["ObjectiveRecord", "OBJECTIVES", "objective_record", "objective_options", "objective_section", "check_one_tensor",
           "build_objective", "make_denoiser", "few_step_sampling", "model_options", "NAME_KEY"]

#: the key of an objective section that names the objective
NAME_KEY = "name"


@dataclass(frozen=True)
class ObjectiveRecord:
    """The facts of one objective (see the module docstring)."""

    name: str
    build: Callable[..., Any]
    options: type
    paper: str
    sampler: str
    teacher: bool
    time_inputs: int = 1
    denoiser: type = Denoiser
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


OBJECTIVES: dict[str, ObjectiveRecord] = {r.name: r for r in (
    ObjectiveRecord("cd", ConsistencyObjective, ConsistencyConfig,
                    "Song et al. 2023 (CD, algorithm 2); loss and weights of Song & Dhariwal 2023 (iCT)",
                    "consistency", teacher=True, defaults={"levels": 18},
                    description="consistency distillation: one teacher ODE step per pair"),
    ObjectiveRecord("ct", ConsistencyObjective, ConsistencyConfig,
                    "Song & Dhariwal 2023 (iCT); from a trained model: Geng et al. 2024 (ECT)",
                    "consistency", teacher=False, defaults={"levels": 160, "levels_start": 10},
                    description="consistency training: the same noise at both ends of a pair, iCT curriculum"),
    ObjectiveRecord("shortcut", ShortcutObjective, ShortcutConfig, "Frans et al. 2024 (shortcut models)",
                    "flowmap", teacher=False, time_inputs=2, denoiser=FlowMapDenoiser,
                    description="one network for every step size: flow matching plus self-consistency"),
    ObjectiveRecord("progressive", ProgressiveObjective, ProgressiveConfig,
                    "Salimans & Ho 2022 (progressive distillation, algorithm 2)", "ddim", teacher=True,
                    description="a student's one DDIM step matches its teacher's two"),
)}


def objective_record(name: Any) -> ObjectiveRecord:
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise UnknownNameError(f"unknown objective {name!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_options(section: Mapping[str, Any] | None, what: str = "objective") -> tuple[ObjectiveRecord, Any] | None:
    """``(record, options)`` of an objective section (validated; ``None`` for none). Unknown keys,
    wrong types and ranges are a ConfigError naming the key."""
    if section is None:
        return None
    if not isinstance(section, Mapping) or NAME_KEY not in section:
        raise ConfigError(f"the {what} section must be an object with a \"{NAME_KEY}\" "
                          f"({', '.join(OBJECTIVES)}), got {section!r}")
    record = objective_record(section[NAME_KEY])
    values = {**record.defaults, **{k: v for k, v in section.items() if k != NAME_KEY}}
    known = {f.name for f in fields(record.options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) of {record.name}: {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known))}")
    return record, record.options(**values).validate(what)


def objective_section(record: ObjectiveRecord, options: Any) -> dict[str, Any]:
    """The JSON section of ``options`` (what ``config.json`` holds)."""
    return {NAME_KEY: record.name, **asdict(options)}


def build_objective(section: Mapping[str, Any] | None, diffusion: Diffusion, teacher: nn.Module | None = None,
                    total_steps: int = 1):
    """The trainer's objective of a run: ``diffusion`` itself without a section."""
    parsed = objective_options(section)
    if parsed is None:
        return diffusion
    record, options = parsed
    if record.teacher and teacher is None:
        raise ConfigError(f"the {record.name} objective distils a teacher; none was given")
    return record.build(diffusion, options, teacher if record.teacher else None, total_steps)


def check_one_tensor(what: str, mixed: bool) -> None:
    """Refuse a few-step objective for a mixed continuous-categorical state (``diffusion.components``):
    the objectives train maps of one continuous tensor."""
    if mixed:
        raise ConfigError(f"{what} generates a mixed continuous-categorical state (diffusion.components); "
                          "few-step objectives train models of one continuous tensor")


def make_denoiser(section: Mapping[str, Any] | None, diffusion: Diffusion, backbone: nn.Module) -> Denoiser:
    """The denoiser a run's backbone is wrapped in (a flow-map one for two-time objectives)."""
    parsed = objective_options(section)
    if parsed is None:
        return diffusion.denoiser(backbone)          # the process's own (a mixed state's too)
    if not isinstance(diffusion, Diffusion):
        check_one_tensor("this process", True)
    return parsed[0].denoiser(backbone, diffusion.schedule, diffusion.param)


def model_options(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """Backbone options the objective needs (``{"time_inputs": 2}`` for flow maps)."""
    parsed = objective_options(section)
    if parsed is None or parsed[0].time_inputs == 1:
        return {}
    return {"time_inputs": parsed[0].time_inputs}


def few_step_sampling(section: Mapping[str, Any] | None, schedule: Any = None) -> tuple[str, int, str | None] | None:
    """``(sampler, steps, spacing or None)`` a few-step model samples with when none is asked for."""
    parsed = objective_options(section)
    if parsed is None:
        return None
    record, options = parsed
    if isinstance(options, ProgressiveConfig):
        steps = options.student_steps or options.sample_steps
        spacing = student_grid(schedule, steps, options.spacing)[1] if schedule is not None else options.spacing
        return record.sampler, steps, spacing
    return record.sampler, options.sample_steps, None
