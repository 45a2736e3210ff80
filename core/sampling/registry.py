"""The samplers: one record per sampler, built here in one visible place.

Every sampler is a pure function with the signature::

    sampler(denoise, x, grid, *, schedule, space, generator=None, callback=None, **options) -> x_0

* ``denoise(x, t) -> Prediction(x0, eps)`` with ``t`` a per-sample float64 tensor ``[B]``
  (see :meth:`diffuse.core.process.denoiser.Denoiser.bind`; guidance wrappers have the same shape);
* ``x`` is the starting point (noise at ``grid[0]``, scaled for the schedule:
  :func:`~diffuse.core.sampling.common.prior_sample`);
* ``grid`` is a 1-D float64 tensor of times, descending, usually ending at ``0`` (clean data);
  the sampler steps ``zip(grid[:-1], grid[1:])`` and keeps no state between calls;
* ``generator`` is a ``torch.Generator`` or one generator per sample (see ``core.data.space``);
* ``callback(info)`` is called after each step with a dict ``i, t, t_next, x, x0``.

A :class:`SamplerRecord` states each sampler's facts once (its paper, whether it is
deterministic, its network evaluations per step, its default grid on VP schedules, its default
number of steps, the limits of its options, whether it reports statistics); callers ask the
record, never the name. :data:`SAMPLERS` maps names to records; a record is callable as its
sampler function.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor

from ..errors import ConfigError, UnknownNameError
from ..process.schedule import Schedule
from ..validation import NON_NEGATIVE, POSITIVE, UNIT, OneOf, check_kwargs
from . import ancestral, fewstep, flow, multistep, ode, stochastic
from .grids import AUTO_MIN_STEPS

__all__ = ["SamplerRecord", "SAMPLERS", "RECORDS", "get_sampler", "sampler_record", "sampler_options",
           "check_sampler_options", "check_sampler_name", "default_spacing", "default_steps", "OPTION_LIMITS",
           "RESERVED_OPTIONS", "DEFAULT_STEPS"]

#: the arguments every sampler gets from the caller, not from the user
RESERVED_OPTIONS = ("schedule", "space", "generator", "callback", "stats")

#: ranges / choices of user options beyond their types (keyed by option name; the same name means
#: the same thing in every sampler); checked by :func:`check_sampler_options`
OPTION_LIMITS: dict[str, Any] = {
    "eta": UNIT, "clip_x0": POSITIVE, "variance": OneOf(("posterior", "large")), "fixed_point_iters": NON_NEGATIVE,
    "s_churn": NON_NEGATIVE, "s_tmin": NON_NEGATIVE, "s_tmax": NON_NEGATIVE, "s_noise": NON_NEGATIVE,
    "rtol": POSITIVE, "atol": POSITIVE, "method": OneOf(("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")),
    "snr": POSITIVE, "corrector_steps": NON_NEGATIVE, "predictor": OneOf(tuple(sorted(stochastic.PREDICTORS))),
    "order": OneOf((1, 2, 3)), "noise": NON_NEGATIVE,
}

#: the number of steps of every sampler but DDPM's when none is asked for
DEFAULT_STEPS = 50


@dataclass(frozen=True)
class SamplerRecord:
    """The facts of one sampler. ``vp_grid`` is its default grid spacing on a VP schedule
    (chosen on the TUNE problems of ``benchmarks/bench_grids.py``, reported on its HELD-OUT ones;
    docs, "Default grids"): ``auto`` at every number of steps, ``few_step_auto`` (``auto`` below
    :data:`~diffuse.core.sampling.grids.AUTO_MIN_STEPS` steps, ``trailing`` from there), or a
    spacing's name. ``evals_per_step``: network evaluations per grid step (``None``: adaptive).
    ``full_chain``: its default number of steps is the schedule's whole chain (``T``) when it has one."""

    name: str
    fn: Callable[..., Tensor]
    paper: str
    deterministic: bool
    evals_per_step: int | None = 1
    vp_grid: str = "trailing"
    full_chain: bool = False
    #: it writes statistics (the evaluation count) into a ``stats`` dict it is given
    reports_stats: bool = False
    #: it integrates the probability-flow ODE from the prior (a deterministic map noise -> sample,
    #: as reflow and grid optimisation need)
    ode: bool = False
    description: str = ""
    limits: Mapping[str, Any] = field(default_factory=dict)
    #: the grid spacing it runs on by default on every schedule (``None``: the core's rule, see
    #: :func:`default_spacing`); the few-step samplers need their evaluations spread over the noise
    #: levels, which a Karras grid of 1-4 steps is not
    grid: str | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.fn(*args, **kwargs)

    def options(self) -> list[str]:
        """The options a user may give (the function's keyword-only arguments)."""
        params = inspect.signature(self.fn).parameters
        return sorted(n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n not in RESERVED_OPTIONS)

    def default_steps(self, schedule: Schedule) -> int:
        """Steps when none are asked for: the whole chain for DDPM, else :data:`DEFAULT_STEPS`."""
        return schedule.num_steps if self.full_chain and schedule.num_steps else DEFAULT_STEPS

    def evaluations(self, steps: int) -> int | None:
        """Network evaluations of ``steps`` grid steps (``None``: adaptive)."""
        return None if self.evals_per_step is None else steps * self.evals_per_step


def _r(name, fn, paper, deterministic, evals=1, vp_grid="trailing", description="", **kw) -> SamplerRecord:
    return SamplerRecord(name, fn, paper, deterministic, evals, vp_grid, description=description, **kw)


#: every sampler, in the order the CLI lists them
RECORDS: tuple[SamplerRecord, ...] = (
    _r("ddpm", ancestral.ddpm, "Ho et al. 2020, algorithm 2", False, full_chain=True,
       description="DDPM ancestral sampling"),
    _r("ddim", ancestral.ddim, "Song, Meng & Ermon 2021, eq. 12", True, vp_grid="few_step_auto",
       description="DDIM (eta = 0 deterministic; eta = 1 DDPM's posterior)", ode=True),
    _r("euler_maruyama", stochastic.euler_maruyama, "Song et al. 2021, eq. 6", False,
       description="reverse-time SDE, Euler-Maruyama"),
    _r("pc", stochastic.pc, "Song et al. 2021, algorithms 2-5", False, evals=2,
       description="predictor-corrector (1 + corrector_steps evaluations per step)"),
    _r("ode_euler", ode.ode_euler, "Song et al. 2021, eq. 13", True, ode=True,
       description="probability-flow ODE in t, Euler"),
    _r("ode_heun", ode.ode_heun, "Song et al. 2021, eq. 13 (Heun)", True, evals=2, vp_grid="auto", ode=True,
       description="probability-flow ODE in t, Heun"),
    _r("rk45", ode.rk45, "Song et al. 2021, section 4.3", True, evals=None, reports_stats=True, ode=True,
       description="probability-flow ODE, adaptive RK45 (scipy)"),
    _r("edm_heun", ode.edm_heun, "Karras et al. 2022, algorithm 2", True, evals=2, vp_grid="leading", ode=True,
       description="EDM's Heun sampler (stochastic with s_churn > 0)"),
    _r("dpmpp_2m", multistep.dpmpp_2m, "Lu et al. 2022 (DPM-Solver++), algorithm 2", True, vp_grid="auto",
       ode=True, description="DPM-Solver++(2M)"),
    _r("dpmpp_3m", multistep.dpmpp_3m, "Lu et al. 2022 (DPM-Solver++), third-order multistep", True,
       vp_grid="auto", ode=True, description="DPM-Solver++(3M)"),
    _r("dpmpp_2m_sde", multistep.dpmpp_2m_sde, "Lu et al. 2022 (DPM-Solver++), SDE variant", False,
       description="DPM-Solver++(2M) SDE"),
    _r("unipc", multistep.unipc, "Zhao et al. 2023", True, vp_grid="auto", ode=True,
       description="UniPC (UniP-p + UniC, bh2)"),
    _r("flow_euler", flow.flow_euler, "Liu et al. 2023 (rectified flow)", True, ode=True,
       description="Euler on the flow velocity"),
    _r("flow_heun", flow.flow_heun, "Karras et al. 2022, algorithm 1, on the velocity", True, evals=2, ode=True,
       description="Heun on the flow velocity"),
    _r("flow_midpoint", flow.flow_midpoint, "explicit midpoint on the velocity", True, evals=2, ode=True,
       description="explicit midpoint on the flow velocity"),
    _r("flow_rk45", flow.flow_rk45, "adaptive RK45 (scipy) on the velocity", True, evals=None, reports_stats=True,
       ode=True, description="adaptive RK45 on the flow velocity"),
    _r("flow_sde", flow.flow_sde, "Ma et al. 2024 (SiT), reverse SDE", False,
       description="reverse SDE with the flow's marginals"),
    _r("consistency", fewstep.consistency, "Song et al. 2023 (consistency models), algorithm 1", False,
       vp_grid="uniform", grid="uniform",
       description="multistep consistency sampling (consistency models' 1-8 steps)"),
    _r("flowmap", fewstep.flowmap, "Frans et al. 2024 (shortcut models)", True, vp_grid="uniform", ode=True,
       grid="uniform",
       description="flow-map steps (shortcut models); DDIM on a one-time model"),
)

#: name -> record
SAMPLERS: dict[str, SamplerRecord] = {r.name: r for r in RECORDS}


def sampler_record(name: Any) -> SamplerRecord:
    """The record of sampler ``name``; an UnknownNameError listing the samplers otherwise."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise UnknownNameError(f"unknown sampler {name!r}; expected one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


def check_sampler_name(name: Any, what: str = "sampler") -> str:
    """``name`` when it names a sampler; else an UnknownNameError naming ``what`` (e.g. ``train.eval_sampler``)."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise UnknownNameError(f"{what} must be one of {', '.join(sorted(SAMPLERS))}, got {name!r}")
    return name


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function called ``name``."""
    return sampler_record(name).fn


def sampler_options(name: str) -> list[str]:
    """The options a user may give sampler ``name`` (its keyword-only arguments)."""
    return sampler_record(name).options()


def check_sampler_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check user options of sampler ``name``: known names, types from the signature (a number
    where the default is a number, a bool for a bool...), and :data:`OPTION_LIMITS`. Returns
    ``options``; a ConfigError naming the option otherwise."""
    record = sampler_record(name)
    user = {k: v for k, v in options.items() if k not in RESERVED_OPTIONS}
    allowed = record.options()
    unknown = sorted(set(user) - set(allowed))
    if unknown:
        raise ConfigError(f"sampler {name!r} has no option {unknown[0]!r}; it takes: {', '.join(allowed) or 'none'}")
    check_kwargs(record.fn, user, f"sampler {name!r} option", limits={**OPTION_LIMITS, **record.limits},
                 skip=RESERVED_OPTIONS, sep=" ")
    if "s_tmin" in user or "s_tmax" in user:
        params = inspect.signature(record.fn).parameters
        lo = user.get("s_tmin", params["s_tmin"].default)
        hi = user.get("s_tmax", params["s_tmax"].default)
        if lo > hi:
            raise ConfigError(f"sampler option s_tmin ({lo}) must not exceed s_tmax ({hi})")
    return options


def default_steps(sampler: str, schedule: Schedule) -> int:
    """The number of steps ``sampler`` runs when none is asked for (:meth:`SamplerRecord.default_steps`)."""
    return sampler_record(sampler).default_steps(schedule)


def default_spacing(schedule: Schedule, sampler: str, steps: int | None = None) -> str:
    """The grid spacing a sampler runs on when none is asked for: the record's own ``grid`` where it
    fixes one (the few-step samplers: ``uniform``); else the schedule's own (uniform in ``t`` for
    flow paths); ``karras`` for other non-VP schedules (EDM's and VE's sigmas: on the exact
    problems ``auto`` beat it for the multistep solvers, but on a small EDM-trained image model
    ``karras`` gave the lower FID at 5 and 10 evaluations, so ``auto`` stays opt-in there); for VP
    schedules the record's ``vp_grid``."""
    fixed = sampler_record(sampler).grid
    if fixed:
        return fixed
    own = getattr(schedule, "default_spacing", None)
    if own:
        return own
    if not schedule.variance_preserving:
        return "karras"
    grid = sampler_record(sampler).vp_grid
    if grid == "few_step_auto":
        return "auto" if steps is not None and steps < AUTO_MIN_STEPS else "trailing"
    return grid
