"""Training times: how the trainer draws ``t`` for each sample.

One axis of the process (``DiffusionConfig.time_sampler``), independent of the schedule and the
parameterization. Each entry of :data:`TIME_SAMPLERS` builds ``sample_t(n, generator, device)
-> float64 [n]`` from the schedule and the config:

* ``schedule``: the schedule's own times (uniform over ``{1..T}/T`` for a T-step chain, Ho et al.
  2020; ``U[t_min, 1]`` for a continuous one);
* ``uniform``: ``t ~ U[t_eps, t_max]`` (Song et al. 2021), even for a discrete chain (its
  interpolated ``alpha_t, sigma_t``);
* ``lognormal``: EDM's noise levels ``ln(sigma/alpha) ~ N(P_mean, P_std^2)`` (Karras et al. 2022),
  mapped to times through the schedule;
* ``logit_normal``: SD3's ``sigmoid(N(t_loc, t_scale^2))`` (Esser et al. 2024, eq. 19);
* ``mode``: SD3's mode sampling with heavy tails (eq. 20, ``mode_scale``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ConfigError, UnknownNameError
from .schedule import Schedule

__all__ = ["TIME_SAMPLERS", "make_time_sampler", "lognormal_t", "uniform_t", "logit_normal_t", "mode_t",
           "logit_normal_density", "mode_density"]

_F64 = torch.float64
SampleT = Callable[..., Tensor]


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
        raise ConfigError(f"mode_scale must be in [-1, {2.0 / (math.pi - 2.0):.4f}] (SD3 eq. 20), got {scale}")

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


#: name -> builder ``(schedule, config) -> sample_t``
TIME_SAMPLERS: dict[str, Callable[[Schedule, Any], SampleT]] = {
    "schedule": lambda schedule, cfg: schedule.sample_t,
    "uniform": lambda schedule, cfg: uniform_t(schedule, cfg.t_eps),
    "lognormal": lambda schedule, cfg: lognormal_t(schedule, cfg.p_mean, cfg.p_std),
    "logit_normal": lambda schedule, cfg: logit_normal_t(cfg.t_loc, cfg.t_scale),
    "mode": lambda schedule, cfg: mode_t(cfg.mode_scale),
}


def make_time_sampler(name: str, schedule: Schedule, config: Any) -> SampleT:
    """The training-time sampler ``name`` on ``schedule`` with ``config``'s parameters
    (``t_eps``, ``p_mean``, ``p_std``, ``t_loc``, ``t_scale``, ``mode_scale``)."""
    if name not in TIME_SAMPLERS:
        raise UnknownNameError(f"unknown time sampler {name!r}; expected one of {', '.join(TIME_SAMPLERS)}")
    return TIME_SAMPLERS[name](schedule, config)
