"""The diffusion process used for training: schedule + parameterization + loss.

:class:`Diffusion` turns a :class:`~diffuse.core.config.DiffusionConfig` into the objects the
trainer and the samplers use, and computes the per-sample training loss of a batch:

    t ~ schedule.sample_t,  eps ~ space.noise,  x_t = alpha_t x_0 + sigma_t eps,
    loss = space.reduce(weight(snr) * |f(x_t, t) - target|^2)

(Ho et al. 2020, algorithm 1, with the target and weighting of the configured parameterization).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from .config import DiffusionConfig
from .denoiser import Denoiser
from .domain import Batch
from .loss import DiffusionLoss
from .parameterization import make_parameterization
from .precond import training_setup
from .schedule import make_schedule

__all__ = ["Diffusion"]


class Diffusion:
    """Schedule, parameterization and loss built from a :class:`DiffusionConfig`."""

    def __init__(self, config: DiffusionConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = DiffusionConfig()
        elif isinstance(config, dict):
            config = DiffusionConfig(**config)
        self.config = config
        self.schedule = make_schedule(config.schedule)
        self.param = make_parameterization(config.parameterization)
        kwargs = {"gamma": config.min_snr_gamma} if config.weighting == "min_snr" else {}
        self.loss = DiffusionLoss(self.param, config.weighting, **kwargs)
        # training mode ddpm | continuous | edm (core.precond): denoiser wrapper, times, loss
        self.training = training_setup(config)
        self.schedule, self.loss = self.training.schedule, self.training.loss

    def denoiser(self, backbone: nn.Module) -> Denoiser:
        """Wrap a backbone into a :class:`Denoiser` (or, for ``edm`` training, an ``EDMPrecond``)."""
        return self.training.build_denoiser(backbone)

    def sample_t(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """Training times (float64, ``[n]``)."""
        return self.training.sample_t(n, generator=generator, device=device)

    def training_losses(self, denoiser: Denoiser, batch: Batch, generator: torch.Generator | None = None) -> Tensor:
        """Per-sample loss ``[B]`` of one batch (not yet averaged)."""
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        t = self.sample_t(n, generator, x0.device)
        eps = space.noise(x0, generator)
        alpha, sigma = self.schedule.alpha_sigma(t)
        a, s = space.coef(alpha, x0), space.coef(sigma, x0)
        x_t = a * x0 + s * eps
        out = denoiser.raw(x_t, t, cond=batch.cond, space=space)
        per_element = self.loss(out, x0, eps, a, s, (alpha / sigma) ** 2, space)
        return space.reduce(per_element)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.config)
