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
  Karras et al.'s eq. 8.

Condition dropout: when a batch carries a :class:`~diffuse.core.condition.Condition`, each
sample's condition is replaced by its null value with probability ``cond_drop`` (a Bernoulli
draw from the training generator, after ``t`` and ``eps``), so the model also learns the
unconditional denoiser that classifier-free guidance needs.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .condition import Condition
from .config import DiffusionConfig
from .denoiser import Denoiser
from .domain import Batch
from .loss import DiffusionLoss
from .parameterization import EDMParam, make_parameterization
from .schedule import Schedule, make_schedule

__all__ = ["Diffusion", "lognormal_t", "uniform_t", "TRAINING_MODES"]

_F64 = torch.float64
TRAINING_MODES = ("ddpm", "continuous", "edm")


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
        if mode == "edm":
            self.param = EDMParam(config.sigma_data)
            self._sample_t = lognormal_t(self.schedule, config.p_mean, config.p_std)
        else:
            self.param = make_parameterization(config.parameterization, time_scale=config.time_scale)
            self._sample_t = (uniform_t(self.schedule, config.t_eps) if mode == "continuous"
                              else self.schedule.sample_t)
        kwargs = {"gamma": config.min_snr_gamma} if config.weighting == "min_snr" else {}
        self.loss = DiffusionLoss(self.param, config.weighting, **kwargs)

    def denoiser(self, backbone: nn.Module) -> Denoiser:
        """Wrap a backbone into the :class:`Denoiser` of this process."""
        return Denoiser(backbone, self.schedule, self.param)

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """Training times (float64, ``[n]``)."""
        return self._sample_t(n, generator=generator, device=device)

    def training_losses(self, denoiser: Denoiser, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample loss ``[B]`` of one batch (not yet averaged)."""
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        t = self.sample_t(n, generator, x0.device)
        eps = space.noise(x0, generator)
        cond = batch.cond
        if isinstance(cond, Condition) and self.config.cond_drop > 0:
            drop = torch.rand(n, generator=generator, device=x0.device) < self.config.cond_drop
            cond = cond.drop(drop)
        alpha, sigma = self.schedule.alpha_sigma(t)
        a, s = space.coef(alpha, x0), space.coef(sigma, x0)
        x_t = a * x0 + s * eps
        out = denoiser.raw(x_t, t, cond=cond, space=space)
        per_element = self.loss(out, x0, eps, a, s, (alpha / sigma) ** 2, space)
        return space.reduce(per_element)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.config)
