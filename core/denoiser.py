"""The denoiser: a backbone plus a parameterization plus a schedule.

``Denoiser(x_t, t, cond=None, space=...) -> Prediction(x0, eps)``. Backbones are called as
``backbone(x_t_in, noise_level, cond=cond, space=space)`` and return a tensor shaped like
``x_t``; ``noise_level`` is ``t * time_scale`` (the DDPM convention of feeding the step index
0..T to a sinusoidal embedding). Dense backbones ignore ``space``; a graph backbone reads
its batch index from it.

The sampler-facing contract is the closure ``denoise(x, t) -> Prediction`` with ``t`` a
per-sample float64 tensor ``[B]``; :meth:`Denoiser.bind` makes one for a given condition and
space. Guidance wrappers (``core.guidance``) wrap such closures.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .parameterization import Parameterization, Prediction
from .schedule import Schedule
from .space import Space

__all__ = ["Denoiser", "DenoiseFn"]

DenoiseFn = Callable[[Tensor, Tensor], Prediction]


class Denoiser(nn.Module):
    """Backbone + parameterization, evaluated at schedule time ``t``."""

    def __init__(self, backbone: nn.Module, schedule: Schedule, param: Parameterization,
                 time_scale: float = 1000.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule
        self.param = param
        self.time_scale = float(time_scale)

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None) -> Tensor:
        """The backbone's output for ``x_t`` at per-sample times ``t`` (the training target view)."""
        noise_level = (t * self.time_scale).to(torch.float32)
        return self.backbone(x_t, noise_level, cond=cond, space=space)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None) -> Prediction:
        assert space is not None, "Denoiser needs the batch's Space"
        alpha, sigma = self.schedule.alpha_sigma(t.to(torch.float64))
        out = self.raw(x_t, t, cond=cond, space=space)
        a, s = space.coef(alpha, out), space.coef(sigma, out)
        pred = self.param.to_prediction(out, x_t.to(out.dtype), a, s)
        return Prediction(space.project(pred.x0), space.project(pred.eps))

    def bind(self, space: Space, cond: Any = None) -> DenoiseFn:
        """A sampler-ready closure ``denoise(x, t)`` for one batch's space and condition."""
        def denoise(x: Tensor, t: Tensor) -> Prediction:
            return self(x, t, cond=cond, space=space)
        return denoise
