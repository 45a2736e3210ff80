"""The one denoiser: a backbone, a parameterization (its preconditioning) and a schedule.

``Denoiser(x_t, t, cond=None, space=...) -> Prediction(x0, eps)`` evaluates, at per-sample
schedule times ``t`` (float64 ``[B]``) with ``alpha_t, sigma_t`` from the schedule,

    F = backbone(c_in x_t, c_noise, cond=cond, space=space),
    x0_hat = c_skip x_t + c_out F,    eps_hat = e_skip x_t + e_out F,

with the parameterization's scalings (``core.parameterization``): eps / x0 / v feed ``x_t``
and ``t * time_scale``; EDM feeds ``c_in x_t`` and ``ln(sigma / alpha) / 4``. The coefficients
are computed in float64 per sample and cast to the backbone's dtype. Backbones return a tensor
shaped like ``x_t``; dense backbones ignore ``space``, a graph backbone reads its batch index
from it. ``cond`` is a :class:`~diffuse.core.condition.Condition` (or ``None``), passed as is.

:meth:`Denoiser.raw` is ``F`` (the training view; the loss compares it with
``F* = (x_0 - c_skip x_t) / c_out``). The sampler-facing contract is the closure
``denoise(x, t) -> Prediction``; :meth:`Denoiser.bind` makes one for a given space and condition,
and guidance wrappers (``core.guidance``) wrap such closures or the denoiser itself.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .parameterization import Parameterization, Prediction, Scalings
from .schedule import Schedule
from .space import Space

__all__ = ["Denoiser", "DenoiseFn"]

DenoiseFn = Callable[[Tensor, Tensor], Prediction]


class Denoiser(nn.Module):
    """Backbone + parameterization, evaluated at schedule time ``t``. Only the backbone holds
    weights (``backbone.*`` in a state dict)."""

    def __init__(self, backbone: nn.Module, schedule: Schedule, param: Parameterization) -> None:
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule
        self.param = param

    def scalings(self, t: Tensor) -> tuple[Tensor, Tensor, Scalings]:
        """``(alpha, sigma, scalings)`` per sample (float64) at times ``t``."""
        t = t.to(torch.float64)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return alpha, sigma, self.param.scalings(alpha, sigma, t)

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None,
            scalings: Scalings | None = None) -> Tensor:
        """The network's ``F(c_in x_t, c_noise)`` at per-sample times ``t`` (the training view)."""
        assert space is not None, "Denoiser needs the batch's Space"
        sc = self.scalings(t)[2] if scalings is None else scalings
        x_in = space.coef(sc.c_in, x_t) * x_t
        return self.backbone(x_in, sc.c_noise.to(torch.float32), cond=cond, space=space)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None) -> Prediction:
        assert space is not None, "Denoiser needs the batch's Space"
        _, _, sc = self.scalings(t)
        out = self.raw(x_t, t, cond=cond, space=space, scalings=sc)
        x_t = x_t.to(out.dtype)
        x0 = space.coef(sc.c_skip, out) * x_t + space.coef(sc.c_out, out) * out
        eps = space.coef(sc.e_skip, out) * x_t + space.coef(sc.e_out, out) * out
        return Prediction(space.project(x0), space.project(eps))

    def bind(self, space: Space, cond: Any = None) -> DenoiseFn:
        """A sampler-ready closure ``denoise(x, t)`` for one batch's space and condition."""
        def denoise(x: Tensor, t: Tensor) -> Prediction:
            return self(x, t, cond=cond, space=space)
        return denoise
