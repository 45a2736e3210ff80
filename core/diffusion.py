"""The diffusion process used for training: schedule + parameterization + loss + training times.

:class:`Diffusion` turns a :class:`~diffuse.core.config.DiffusionConfig` into the objects the
trainer and the samplers use, and computes the per-sample training loss of a batch:

    t ~ sample_t,  eps ~ space.noise,  x_t = alpha_t x_0 + sigma_t eps,
    loss = space.reduce(weight * |F(c_in x_t, c_noise, cond) - F*|^2),  F* = (x_0 - c_skip x_t) / c_out

(Ho et al. 2020, algorithm 1, generalised by the parameterization's scalings; see
``core.parameterization``). The three training modes (``DiffusionConfig.training``):

* ``ddpm``: the configured parameterization (eps / x0 / v), the schedule's own times (uniform
  over ``{1..T}/T`` for a discrete chain);
* ``continuous``: the same, with ``t ~ U[t_eps, 1]`` (Song et al. 2021);
* ``edm``: EDM preconditioning (:class:`~diffuse.core.parameterization.EDMParam`), log-normal
  noise levels ``ln(sigma/alpha) ~ N(P_mean, P_std^2)``; with the uniform weighting the loss is
  Karras et al.'s eq. 8;
* ``flow``: flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; Esser et al.
  2024): a flow path schedule (:class:`~diffuse.core.schedule.FlowSchedule`, the linear
  interpolant ``x_t = (1 - t) x_0 + t eps`` by default, with its time shift), the velocity
  parameterization (:class:`~diffuse.core.parameterization.FlowParam`; uniform weighting: the
  conditional flow-matching loss ``|v_hat - (eps - x_0)|^2``) and training times from
  ``time_sampler``: ``uniform`` (``U[0, 1]``), ``logit_normal`` (``sigmoid(N(t_loc, t_scale^2))``,
  SD3's default) or ``mode`` (SD3 eq. 20 with ``mode_scale``). Times are drawn in the schedule's
  clock; the schedule applies the shift.

A ``coupling`` (rectified-flow reflow, :func:`diffuse.api.reflow`) is a batch whose
``extras["noise"]`` holds the noise paired with each sample: training then uses that noise
instead of an independent draw.

Condition dropout: when a batch carries a :class:`~diffuse.core.condition.Condition`, each
sample's condition is replaced by its null value with probability ``cond_drop`` (a Bernoulli
draw from the training generator, after ``t`` and ``eps``), so the model also learns the
unconditional denoiser that classifier-free guidance needs.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .condition import Condition
from .config import DiffusionConfig
from .denoiser import Denoiser
from .domain import Batch
from .loss import DiffusionLoss
from .parameterization import EDMParam, FlowParam, make_parameterization
from .schedule import FlowSchedule, Schedule, make_schedule

__all__ = ["Diffusion", "lognormal_t", "uniform_t", "logit_normal_t", "mode_t", "logit_normal_density",
           "mode_density", "TRAINING_MODES", "TIME_SAMPLERS"]

_F64 = torch.float64
TRAINING_MODES = ("ddpm", "continuous", "edm", "flow")
TIME_SAMPLERS = ("uniform", "logit_normal", "mode")


def logit_normal_t(loc: float = 0.0, scale: float = 1.0) -> Callable[..., Tensor]:
    """SD3's logit-normal times (Esser et al. 2024, eq. 19): ``t = sigmoid(loc + scale z)``, ``z ~ N(0, 1)``."""
    def sample_t(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        z = torch.randn(n, generator=generator, device=device, dtype=_F64)
        return torch.sigmoid(loc + scale * z)
    return sample_t


def logit_normal_density(t: Tensor, loc: float = 0.0, scale: float = 1.0) -> Tensor:
    """``pi(t) = exp(-(logit t - loc)^2 / 2 scale^2) / (scale sqrt(2 pi) t (1 - t))``."""
    t = torch.as_tensor(t, dtype=_F64)
    logit = torch.log(t) - torch.log1p(-t)
    return torch.exp(-0.5 * ((logit - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi) * t * (1 - t))


def _mode_map(u: Tensor, scale: float) -> Tensor:
    """SD3 eq. 20: ``f(u) = 1 - u - s (cos^2(pi u / 2) - 1 + u)``, decreasing on [0, 1] for ``-1 <= s <= 2/(pi-2)``."""
    return 1.0 - u - scale * (torch.cos(0.5 * math.pi * u) ** 2 - 1.0 + u)


def mode_t(scale: float = 1.29) -> Callable[..., Tensor]:
    """SD3's mode sampling with heavy tails (Esser et al. 2024, eq. 20): ``t = f_mode(u)``, ``u ~ U[0, 1]``."""
    if not -1.0 <= scale <= 2.0 / (math.pi - 2.0):
        raise ValueError(f"mode_scale must be in [-1, {2.0 / (math.pi - 2.0):.4f}] (SD3 eq. 20), got {scale}")

    def sample_t(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        u = torch.rand(n, generator=generator, device=device, dtype=_F64)
        return _mode_map(u, scale).clamp(0.0, 1.0)
    return sample_t


def mode_density(t: Tensor, scale: float = 1.29, iters: int = 80) -> Tensor:
    """Density of :func:`mode_t`: ``1 / |f'(u)|`` at ``u = f^{-1}(t)`` (inverted by bisection)."""
    t = torch.as_tensor(t, dtype=_F64)
    lo, hi = torch.zeros_like(t), torch.ones_like(t)
    for _ in range(iters):                  # f is decreasing: f(mid) > t means u lies right of mid
        mid = 0.5 * (lo + hi)
        right = _mode_map(mid, scale) > t
        lo, hi = torch.where(right, mid, lo), torch.where(right, hi, mid)
    u = 0.5 * (lo + hi)
    deriv = -1.0 - scale * (1.0 - 0.5 * math.pi * torch.sin(math.pi * u))
    return 1.0 / deriv.abs()


def lognormal_t(schedule: Schedule, p_mean: float = -1.2, p_std: float = 1.2) -> Callable[..., Tensor]:
    """Training times whose noise levels are EDM's log-normal ``ln sigma ~ N(P_mean, P_std^2)``
    (mapped to times through the schedule; levels beyond its range are clipped to its ends)."""
    def sample_t(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        z = torch.randn(n, generator=generator, device=device, dtype=_F64)
        sig = torch.exp(p_mean + p_std * z)
        t = schedule.t_from_sigma_ratio(sig.cpu()).to(device)
        return t.clamp(max(schedule.t_min, 1e-6), schedule.t_max)
    return sample_t


def uniform_t(schedule: Schedule, eps: float = 1e-3) -> Callable[..., Tensor]:
    """Continuous-time training times ``t ~ U[eps, 1]`` (Song et al. 2021), even for a
    schedule with a discrete chain (its interpolated ``alpha_t, sigma_t``)."""
    def sample_t(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        u = torch.rand(n, generator=generator, device=device, dtype=_F64)
        return eps + (schedule.t_max - eps) * u
    return sample_t


class Diffusion:
    """Schedule, parameterization, training times and loss built from a :class:`DiffusionConfig`."""

    def __init__(self, config: DiffusionConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = DiffusionConfig()
        elif isinstance(config, dict):
            config = DiffusionConfig(**config)
        self.config = config
        mode = config.training
        if mode not in TRAINING_MODES:
            raise ValueError(f"unknown training mode {mode!r}; expected one of {TRAINING_MODES}")
        if not 0.0 <= float(config.cond_drop) <= 1.0:
            raise ValueError(f"cond_drop must be a probability in [0, 1], got {config.cond_drop!r}")
        self.mode = mode
        self.schedule = make_schedule(config.schedule)
        if mode == "flow":
            if not isinstance(self.schedule, FlowSchedule):
                raise ValueError(f"flow training needs a flow schedule ({{\"kind\": \"flow\"}}), got {config.schedule!r}")
            self.param = FlowParam(config.time_scale, self.schedule.path.name)
            self._sample_t = self.time_sampler(config)
        elif mode == "edm":
            self.param = EDMParam(config.sigma_data)
            self._sample_t = lognormal_t(self.schedule, config.p_mean, config.p_std)
        else:
            if (config.parameterization == "flow") != isinstance(self.schedule, FlowSchedule):
                raise ValueError("the flow parameterization and a flow schedule go together (training \"flow\"); "
                                 f"got parameterization {config.parameterization!r} with schedule {config.schedule!r}")
            path = self.schedule.path.name if isinstance(self.schedule, FlowSchedule) else "linear"
            self.param = make_parameterization(config.parameterization, time_scale=config.time_scale, path=path)
            self._sample_t = (uniform_t(self.schedule, config.t_eps) if mode == "continuous"
                              else self.schedule.sample_t)
        kwargs = {"gamma": config.min_snr_gamma} if config.weighting == "min_snr" else {}
        self.loss = DiffusionLoss(self.param, config.weighting, **kwargs)

    @staticmethod
    def time_sampler(config: DiffusionConfig) -> Callable[..., Tensor]:
        """Flow training times from ``config.time_sampler`` (see the module docstring)."""
        if config.time_sampler == "uniform":
            return lambda n, generator=None, device=None: torch.rand(n, generator=generator, device=device, dtype=_F64)
        if config.time_sampler == "logit_normal":
            return logit_normal_t(config.t_loc, config.t_scale)
        if config.time_sampler == "mode":
            return mode_t(config.mode_scale)
        raise ValueError(f"unknown time sampler {config.time_sampler!r}; expected one of {TIME_SAMPLERS}")

    def denoiser(self, backbone: nn.Module) -> Denoiser:
        """Wrap a backbone into the :class:`Denoiser` of this process."""
        return Denoiser(backbone, self.schedule, self.param)

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """Training times (float64, ``[n]``)."""
        return self._sample_t(n, generator=generator, device=device)

    def training_losses(self, denoiser: Denoiser, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        """Per-sample loss ``[B]`` of one batch (not yet averaged).

        ``shard = (start, stop)``: the loss of samples ``start .. stop - 1`` only (one rank's part of
        a global batch). The random draws (times, noise, condition dropout) are made for the whole
        batch first, so every sample gets the same draws whichever shard it falls in."""
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        t = self.sample_t(n, generator, x0.device)
        eps = space.noise(x0, generator)
        coupled = (batch.extras or {}).get("noise") if isinstance(batch.extras, dict) else None
        if coupled is not None:                      # reflow: the noise paired with each sample
            eps = space.project(coupled.to(x0))
        cond = batch.cond
        if isinstance(cond, Condition) and self.config.cond_drop > 0:
            drop = torch.rand(n, generator=generator, device=x0.device) < self.config.cond_drop
            cond = cond.drop(drop)
        if shard is not None:
            start, stop = shard
            eps, _ = space.take(eps, start, stop)
            x0, space = space.take(x0, start, stop)
            t = t[start:stop]
            if isinstance(cond, Condition):
                cond = cond.select(slice(start, stop))
            elif isinstance(cond, Tensor):
                cond = cond[start:stop]
        alpha, sigma = self.schedule.alpha_sigma(t)
        a, s = space.coef(alpha, x0), space.coef(sigma, x0)
        x_t = a * x0 + s * eps
        out = denoiser.raw(x_t, t, cond=cond, space=space)
        per_element = self.loss(out, x0, eps, a, s, (alpha / sigma) ** 2, space)
        return space.reduce(per_element)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.config)
