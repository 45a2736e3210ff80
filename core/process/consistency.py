"""Consistency models: consistency distillation (CD) and consistency training (CT).

A consistency function ``f(x_t, t)`` maps every point of a probability-flow ODE trajectory to the
trajectory's origin, ``f(x_t, t) = x_0`` (Song, Dhariwal, Chen & Sutskever 2023, "Consistency
Models"), so one evaluation from pure noise is a sample and a few (:func:`multistep consistency
sampling <diffuse.core.sampling.fewstep.consistency>`) refine it. Here ``f`` is the denoiser's
clean-data view, ``f = c_skip x_t + c_out F`` with the process's own parameterization
(``core.process.parameterization``): eps, v, EDM and flow velocity all have ``c_out -> 0`` and
``alpha c_skip -> 1`` as ``sigma -> 0``, so the boundary condition ``f(x, 0) = x`` holds by
construction (Song et al.'s ``c_skip(s) = sd^2 / ((s - s_min)^2 + sd^2)`` with ``s_min = 0`` is
EDM's), and nothing but the objective changes: a consistency model is a ``Denoiser`` trained with
another loss, in every domain and on every path (x0-prediction, whose ``c_out`` stays 1, is refused).
Equivariance is kept: ``f`` is a ``Space``-projected combination of ``x_t`` and the network's
output, so an equivariant backbone gives an equivariant ``f`` with its centre of mass at zero.

**Discretisation** (:func:`consistency_levels`): noise levels ``s = sigma / alpha`` spaced as
Karras et al. 2022 (``rho = 7``) between the schedule's lowest and ``min(its highest, s_cap)``,
mapped back to times, the top one replaced by ``t_max`` (where sampling starts; a flow path's
``s`` is infinite there), plus ``t_0 = 0``: times ``0 = t_0 < t_1 < ... < t_N = t_max``.

**Loss** (iCT, Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models"), for
a pair ``(t_i, t_{i+1})`` drawn with iCT's log-normal weights ``p(i) ~ erf((ln s_{i+1} - P_mean) /
(sqrt 2 P_std)) - erf((ln s_i - P_mean) / (sqrt 2 P_std))``::

    x_{i+1} = alpha x_0 + sigma eps,      x_i = teacher ODE step from x_{i+1} (CD)
                                          x_i = alpha_i x_0 + sigma_i eps (CT: the same eps)
    loss    = lambda_i (sqrt(|f_theta(x_{i+1}, t_{i+1}) - f_sg(x_i, t_i)|^2 + c^2) - c),
    lambda_i = 1 / (s_{i+1} - s_i)

with the pseudo-Huber distance (``|.|^2`` the mean over the sample's elements through the Space,
so ``c`` is iCT's ``0.00054 sqrt(d)`` per element), the target network the stopped-gradient
online one (iCT: no EMA target), and the boundary ``f(x_0, 0) = x_0`` (CT: the data; CD: the
teacher's clean estimate). CD's teacher step is DDIM (Euler in ``x / alpha`` against ``s``) or
Heun on it (Karras et al.'s second order; Song et al. 2023 used Heun). CT's number of levels
follows iCT's curriculum ``N(k) = min(s0 2^floor(k / K'), s1)``, ``K' = floor(K / (log2(s1 / s0) +
1))``; CT started from a trained diffusion model is Geng et al. 2024's "consistency tuning"
(ECT: ``diffuse distill --method ct``). CD uses ``levels`` throughout.

Guidance: a conditional teacher is evaluated with the condition each sample has after condition
dropout, optionally with classifier-free guidance at ``guidance_scale`` (the guided flow map is
distilled in; the student then needs no guidance at sampling, and its null condition still gives
the unconditional map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..data.condition import Condition
from ..data.domain import Batch
from ..errors import ConfigError
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, OneOf, check_fields
from .diffusion import Diffusion, SamplesThroughDiffusion
from .parameterization import Prediction
from .schedule import Schedule

__all__ = ["ConsistencyConfig", "ConsistencyObjective", "consistency_levels", "level_weights", "pseudo_huber",
           "curriculum_levels", "teacher_step", "guided_teacher", "select_rows", "drop_condition"]

_F64 = torch.float64


@dataclass
class ConsistencyConfig:
    """Options of consistency distillation (``cd``) and consistency training (``ct``)."""

    #: CD: the number of discretisation intervals N; CT: the curriculum's final ``s1``
    levels: int = 0
    #: CT: the curriculum's first ``s0`` (iCT: 10)
    levels_start: int = 10
    #: Karras spacing of the noise levels
    rho: float = 7.0
    #: the largest noise level ``sigma / alpha`` spaced (above it, one step to ``t_max``)
    s_cap: float = 80.0
    #: iCT's log-normal level weights
    p_mean: float = -1.1
    p_std: float = 2.0
    #: pseudo-Huber constant per element (iCT: ``0.00054 sqrt(d)`` on a sum over ``d`` elements)
    huber_c: float = 0.00054
    #: ``inverse_step`` (iCT's ``1 / (s_{i+1} - s_i)``) or ``uniform``
    weighting: str = "inverse_step"
    #: CD's teacher ODE step: ``ddim`` (one evaluation) or ``heun`` (two)
    solver: str = "heun"
    #: CD: classifier-free guidance of a conditional teacher (``None``: unguided)
    guidance_scale: float | None = None
    #: steps of the few-step sampler when ``diffuse sample`` names none
    sample_steps: int = 2
    #: where the teacher is (a run folder or a shipped model, with the SHA-256 of its weights);
    #: read by ``diffuse.api``, not by the objective
    teacher: dict[str, Any] | None = None

    def validate(self, what: str = "objective") -> "ConsistencyConfig":
        check_fields(self, what, {"levels": NON_NEGATIVE, "levels_start": AT_LEAST_ONE, "rho": POSITIVE,
                                  "s_cap": POSITIVE, "p_std": POSITIVE, "huber_c": NON_NEGATIVE,
                                  "weighting": OneOf(("inverse_step", "uniform")), "solver": OneOf(("ddim", "heun")),
                                  "guidance_scale": NON_NEGATIVE, "sample_steps": AT_LEAST_ONE})
        return self


def consistency_levels(schedule: Schedule, n: int, rho: float = 7.0, s_cap: float = 80.0) -> tuple[Tensor, Tensor]:
    """``(times, levels)``, both ascending float64 ``[n + 1]``: ``times[0] = 0``, ``times[n] = t_max``,
    ``levels = sigma / alpha`` at those times with the top capped at ``max(s_cap, next level)``
    (see the module docstring)."""
    if n < 1:
        raise ConfigError(f"consistency models need at least 1 discretisation interval, got {n}")
    lo = _ratio(schedule, schedule.t_min)
    hi = min(_ratio(schedule, schedule.t_max), s_cap)
    if n == 1:
        s = torch.tensor([hi], dtype=_F64)
    else:
        ramp = torch.linspace(0.0, 1.0, n, dtype=_F64)
        s = (lo ** (1 / rho) + ramp * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho
    t = schedule.t_from_sigma_ratio(s).clamp(schedule.t_min, schedule.t_max)
    t[-1] = schedule.t_max
    zero = torch.zeros(1, dtype=_F64)
    return torch.cat([zero, t]), torch.cat([zero, s])


def _ratio(schedule: Schedule, t: float) -> float:
    a, s = schedule.alpha_sigma(torch.tensor(float(t), dtype=_F64))
    return float(s / a) if float(a) > 0 else math.inf


def level_weights(levels: Tensor, p_mean: float, p_std: float) -> Tensor:
    """iCT's probabilities of the ``n`` intervals ``(levels[i], levels[i + 1])`` (float64 ``[n]``):
    the log-normal mass ``N(p_mean, p_std^2)`` of ``ln s`` between their ends (``s_0 = 0``: from -inf)."""
    logs = torch.log(levels.clamp_min(1e-300))
    logs[0] = -math.inf
    cdf = torch.erf((logs - p_mean) / (math.sqrt(2.0) * p_std))
    w = (cdf[1:] - cdf[:-1]).clamp_min(0.0)
    if float(w.sum()) <= 0:
        return torch.full_like(w, 1.0 / len(w))
    return w / w.sum()


def curriculum_levels(step: int, total: int, start: int, final: int) -> int:
    """iCT's number of intervals at training step ``step`` of ``total``: ``min(s0 2^floor(k / K'), s1)``
    with ``K' = floor(K / (log2(s1 / s0) + 1))`` (its ``+ 1`` counts levels, ours intervals)."""
    if final <= start:
        return final
    per = max(1, total // (int(math.floor(math.log2(final / start))) + 1))
    return int(min(start * 2 ** (step // per), final))


def pseudo_huber(err2: Tensor, c: float) -> Tensor:
    """``sqrt(e + c^2) - c`` of a per-sample mean squared error ``e`` (the squared error if ``c = 0``)."""
    if c == 0:
        return err2
    return torch.sqrt(err2 + c * c) - c


def drop_condition(cond: Any, p: float, n: int, generator: torch.Generator | None, device) -> Any:
    """Condition dropout as :class:`~diffuse.core.process.diffusion.Diffusion` draws it (a Bernoulli
    draw per sample from the training generator)."""
    if isinstance(cond, Condition) and p > 0:
        drop = torch.rand(n, generator=generator, device=device) < p
        return cond.drop(drop)
    return cond


def select_rows(shard: tuple[int, int] | None, space, tensors: list[Tensor], per_sample: list[Tensor], cond: Any):
    """One rank's shard of a global batch: ``(tensors (Space rows), space, per-sample tensors, cond)``."""
    if shard is None:
        return tensors, space, per_sample, cond
    start, stop = shard
    out, sp = [], space
    for x in tensors:
        y, sp2 = space.take(x, start, stop)
        out.append(y)
        sp = sp2
    if isinstance(cond, Condition):
        cond = cond.select(slice(start, stop))
    elif isinstance(cond, Tensor):
        cond = cond[start:stop]
    return out, sp, [p[start:stop] for p in per_sample], cond


def guided_teacher(teacher: nn.Module, schedule: Schedule, cond: Any, space, scale: float | None
                   ) -> Callable[[Tensor, Tensor], Prediction]:
    """The teacher as ``denoise(x, t)`` for a batch's (dropped-out) condition: classifier-free guided
    at ``scale`` where the batch has a condition and a scale other than 1 is asked for."""
    if scale is not None and scale != 1.0 and isinstance(cond, Condition):
        from ..sampling.guidance import classifier_free_guidance
        return classifier_free_guidance(teacher, space, cond, scale, schedule)

    def denoise(x: Tensor, t: Tensor) -> Prediction:
        return teacher(x, t, cond=cond, space=space)
    return denoise


def teacher_step(teacher: Callable[[Tensor, Tensor], Prediction], schedule: Schedule, space, x: Tensor, t: Tensor,
                 r: Tensor, solver: str = "heun") -> tuple[Tensor, Tensor]:
    """One probability-flow ODE step of ``teacher(x, t) -> Prediction`` from per-sample times ``t``
    to ``r < t`` in the variables ``y = x / alpha``, ``s = sigma / alpha`` (where ``dy / ds = eps``):
    DDIM / Euler ``y_r = y_t + (s_r - s_t) eps_t``, or Heun (Karras et al. 2022, algorithm 1)
    averaging ``eps`` at both ends where ``s_r > 0``. Returns ``(x_r, x0_hat at t)``; a flow path's
    pure-noise end (``alpha_t = 0``) is stepped as ``x_r = alpha_r x0_hat + sigma_r eps_hat``."""
    a_t, s_t = schedule.alpha_sigma(t)
    a_r, s_r = schedule.alpha_sigma(r)
    pred = teacher(x, t)
    x_r = space.coef(a_r, x) * pred.x0 + space.coef(s_r, x) * pred.eps
    if solver == "heun":
        second = s_r > 0
        if bool(second.any()):
            pred2 = teacher(x_r, torch.where(second, r, t))
            eps = 0.5 * (pred.eps + pred2.eps)
            # y_r = y_t + (s_r - s_t) eps_avg, written as alpha_r x0(eps_avg) + sigma_r eps_avg at alpha_t > 0
            ok = second & (a_t > 0)
            x0_avg = (x - space.coef(s_t, x) * eps) / space.coef(torch.where(a_t > 0, a_t, 1.0), x)
            heun = space.coef(a_r, x) * x0_avg + space.coef(s_r, x) * eps
            x_r = torch.where(space.coef(ok.to(x.dtype), x) > 0, heun, x_r)
    return space.project(x_r), pred.x0


class ConsistencyObjective(SamplesThroughDiffusion):
    """The trainer's objective for consistency distillation (``teacher`` given) or consistency
    training (``teacher=None``); see the module docstring. ``total_steps``: the run's
    ``train.steps`` (CT's curriculum); :meth:`follow` gives it the run's step counter."""

    def __init__(self, diffusion: Diffusion, config: ConsistencyConfig, teacher: nn.Module | None = None,
                 total_steps: int = 1) -> None:
        if diffusion.param.name == "x0":
            raise ConfigError("consistency models need a parameterization whose clean-data view tends to x_t as the "
                              "noise vanishes (eps, v, edm or flow); x0-prediction cannot keep f(x, 0) = x")
        self.diffusion, self.config, self.teacher = diffusion, config, teacher
        self.schedule = diffusion.schedule
        self.total_steps = max(1, int(total_steps))
        self.distill = teacher is not None
        if isinstance(teacher, nn.Module):
            teacher.eval().requires_grad_(False)
        self._clock: Callable[[], int] = lambda: 0
        self._levels: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def follow(self, clock: Callable[[], int]) -> None:
        """Read the run's current step from ``clock()`` (CT's curriculum depends on it)."""
        self._clock = clock

    def intervals(self, step: int | None = None) -> int:
        """The number of discretisation intervals at ``step`` (default: the run's current one)."""
        cfg = self.config
        if self.distill:
            return cfg.levels
        step = self._clock() if step is None else step
        return curriculum_levels(step, self.total_steps, cfg.levels_start, cfg.levels)

    def discretisation(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(times, levels, interval probabilities)`` of ``n`` intervals (cached)."""
        if n not in self._levels:
            t, s = consistency_levels(self.schedule, n, self.config.rho, self.config.s_cap)
            self._levels[n] = (t, s, level_weights(s, self.config.p_mean, self.config.p_std))
        return self._levels[n]

    def training_losses(self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        cfg = self.config
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        times, levels, probs = self.discretisation(self.intervals())
        i = torch.multinomial(probs, n, replacement=True, generator=generator if x0.device.type == "cpu" else None)
        eps = space.noise(x0, generator)
        cond = drop_condition(batch.cond, self.diffusion.config.cond_drop, n, generator, x0.device)
        (x0, eps), space, (i,), cond = select_rows(shard, space, [x0, eps], [i], cond)
        t, r = times[i + 1].to(x0.device), times[i].to(x0.device)
        a_t, s_t = self.schedule.alpha_sigma(t)
        x_t = space.coef(a_t, x0) * x0 + space.coef(s_t, x0) * eps
        boundary = r == 0
        r_eval = torch.where(boundary, t, r)      # where r = 0 the boundary value replaces f(x_r, r)
        with torch.no_grad():
            if self.distill:
                teacher = guided_teacher(self.teacher, self.schedule, cond, space, cfg.guidance_scale)
                x_r, clean = teacher_step(teacher, self.schedule, space, x_t, t, r, cfg.solver)
            else:
                a_r, s_r = self.schedule.alpha_sigma(r)
                x_r, clean = space.coef(a_r, x0) * x0 + space.coef(s_r, x0) * eps, x0
            target = model(x_r, r_eval, cond=cond, space=space).x0
            target = torch.where(space.coef(boundary.to(x0.dtype), x0) > 0, clean.to(target.dtype), target)
        pred = model(x_t, t, cond=cond, space=space).x0
        dtype = torch.promote_types(pred.dtype, torch.float32)
        err2 = space.reduce((pred.to(dtype) - target.to(dtype).detach()) ** 2)
        loss = pseudo_huber(err2, cfg.huber_c)
        if cfg.weighting == "inverse_step":
            step = (levels[i + 1] - levels[i]).to(loss.device)
            loss = loss * (1.0 / step).to(loss.dtype)
        return loss

