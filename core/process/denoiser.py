"""The one denoiser: a backbone, a parameterization (its preconditioning) and a schedule.

``Denoiser(x_t, t, cond=None, space=...) -> Prediction(x0, eps)`` evaluates, at per-sample
schedule times ``t`` (float64 ``[B]``) with ``alpha_t, sigma_t`` from the schedule,

    F = backbone(c_in x_t, c_noise, cond=cond, space=space),
    x0_hat = c_skip x_t + c_out F,    eps_hat = e_skip x_t + e_out F,

with the parameterization's scalings (``core.process.parameterization``): eps / x0 / v feed ``x_t``
and ``t * time_scale``; EDM feeds ``c_in x_t`` and ``ln(sigma / alpha) / 4``. The coefficients
are computed in float64 per sample and cast to the backbone's dtype. Backbones return a tensor
shaped like ``x_t``; dense backbones ignore ``space``, a graph backbone reads its batch index
from it. ``cond`` is a :class:`~diffuse.core.data.condition.Condition` (or ``None``), passed as is.

:meth:`Denoiser.raw` is ``F`` (the training view; the loss compares it with
``F* = (x_0 - c_skip x_t) / c_out``). The sampler-facing contract is the closure
``denoise(x, t) -> Prediction``; :meth:`Denoiser.bind` makes one for a given space and condition,
and guidance wrappers (``core.sampling.guidance``) wrap such closures or the denoiser itself.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .parameterization import Parameterization, Prediction, Scalings
from .schedule import Schedule
from ..data.space import Space

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
        self._one_time: dict[float, tuple] = {}     # time -> scalings as numbers, for _one_time_for
        self._one_time_for: tuple = ()

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
        if t.ndim == 2:   # a step (t, s) of a flow-map sampler (core.process.flowmap): one time answers at t
            t = t[:, 0]
        if t.device.type == "cpu" and t.numel() > 1 and bool((t == t[0]).all()):
            return self._forward_one_time(x_t, t, cond, space)
        _, _, sc = self.scalings(t)
        out = self.raw(x_t, t, cond=cond, space=space, scalings=sc)
        x_t = x_t.to(out.dtype)
        x0 = space.coef(sc.c_skip, out) * x_t + space.coef(sc.c_out, out) * out
        eps = space.coef(sc.e_skip, out) * x_t + space.coef(sc.e_out, out) * out
        return Prediction(space.project(x0), space.project(eps))

    def _forward_one_time(self, x_t: Tensor, t: Tensor, cond: Any, space: Space) -> Prediction:
        """:meth:`forward` for a batch at one time (every sampler step): the scalings of one
        sample as Python numbers (no per-sample float64 work, no broadcast coefficient tensors),
        and no multiplication by an exact 1 or 0 (eps-prediction: ``c_in = 1``, ``eps = F``).
        Only on CPU, where testing ``t`` for one value is free (on an accelerator it would sync).
        The numbers are cached per time (later chunks and Heun's second calls reuse them)."""
        held = self._one_time_for
        if not held or held[0] is not self.schedule or held[1] is not self.param:   # swapped: start afresh
            self._one_time, self._one_time_for = {}, (self.schedule, self.param)
        key = float(t[0])
        cached = self._one_time.get(key)
        if cached is None:
            _, _, sc = self.scalings(t[:1])
            cached = tuple(float(v) for v in (sc.c_skip, sc.c_out, sc.c_in, sc.e_skip, sc.e_out)) + (
                sc.c_noise.to(torch.float32),)
            if len(self._one_time) >= 4096:          # a sampler visits a few hundred times at most
                self._one_time.clear()
            self._one_time[key] = cached
        c_skip, c_out, c_in, e_skip, e_out, c_noise = cached
        c_noise = c_noise.expand(t.shape)
        out = self.backbone(x_t if c_in == 1.0 else x_t * c_in, c_noise, cond=cond, space=space)
        x_t = x_t.to(out.dtype)
        x0 = _affine(x_t, c_skip, out, c_out)
        eps = _affine(x_t, e_skip, out, e_out)
        return Prediction(space.project(x0), space.project(eps))

    def bind(self, space: Space, cond: Any = None) -> DenoiseFn:
        """A sampler-ready closure ``denoise(x, t)`` for one batch's space and condition."""
        def denoise(x: Tensor, t: Tensor) -> Prediction:
            return self(x, t, cond=cond, space=space)
        return denoise


def _affine(x: Tensor, a: float, y: Tensor, b: float) -> Tensor:
    """``a x + b y`` skipping exact zeros and ones."""
    if a == 0.0:
        return y if b == 1.0 else y * b
    if b == 0.0:
        return x * a
    return x * a + (y if b == 1.0 else y * b)
