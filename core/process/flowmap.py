"""A denoiser of two times: the flow map ``x_t -> x_s`` of a few-step model.

A flow-map model (shortcut models, Frans et al. 2024; the average velocity of MeanFlow, Geng et
al. 2025) is conditioned on where a step starts *and* how long it is. :class:`FlowMapDenoiser` is
the :class:`~diffuse.core.process.denoiser.Denoiser` of such a model: its backbone takes two noise
inputs (``time_inputs=2``: ``c_noise(t)`` and the step ``(t - s) * time_scale``), and

* ``denoiser(x, t)`` with per-sample times ``t [B]`` is the zero-length step: the instantaneous
  prediction of an ordinary diffusion / flow model, so every sampler still runs on it;
* ``denoiser(x, pair)`` with ``pair [B, 2]`` of ``(t, s)``, ``s < t``, is the step from ``t`` to
  ``s``: its ``Prediction(x0, eps)`` is the one whose DDIM step lands on the model's ``x_s``,
  ``x_s = alpha_s x0 + sigma_s eps`` (on the linear flow path ``x_s = x_t - (t - s) u`` with ``u``
  the network's average velocity over ``[s, t]``). The ``flowmap`` sampler
  (``core.sampling.fewstep``) steps a grid this way.

The scalings are the process's parameterization's at the start time ``t``, so a flow-map model
trained with velocity prediction is, at zero step, exactly a flow-matching model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..data.space import Space
from ..errors import NotSupportedError
from .denoiser import Denoiser
from .parameterization import Parameterization, Prediction, Scalings
from .schedule import Schedule

__all__ = ["FlowMapDenoiser", "time_pair", "STEP_INPUT_SCALE"]

#: the step input of a parameterization without a time scale (EDM's): ``(t - s) * 1000``
STEP_INPUT_SCALE = 1000.0


def time_pair(t: Tensor, s: Tensor | float) -> Tensor:
    """Per-sample ``[B, 2]`` pairs ``(t, s)``: a step from ``t`` to ``s`` (``s`` broadcast)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64, device=t.device).expand_as(t)
    return torch.stack([t, s], dim=1)


class FlowMapDenoiser(Denoiser):
    """Backbone (with two noise inputs) + parameterization + schedule; see the module docstring."""

    def __init__(self, backbone: nn.Module, schedule: Schedule, param: Parameterization) -> None:
        inputs = getattr(backbone, "time_inputs", 1)
        if inputs != 2:
            raise NotSupportedError(f"a flow-map model needs a backbone with two noise inputs (time_inputs=2); "
                                    f"{type(backbone).__name__} takes {inputs}")
        super().__init__(backbone, schedule, param)
        self.step_scale = float(getattr(param, "time_scale", STEP_INPUT_SCALE))

    def _split(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = t.to(torch.float64)
        if t.ndim == 2:
            return t[:, 0], t[:, 1]
        return t, t

    def noise_inputs(self, t: Tensor, sc: Scalings) -> Tensor:
        """The backbone's ``[B, 2]`` noise inputs ``(c_noise(t), (t - s) * time_scale)``."""
        start, end = self._split(t)
        c = sc.c_noise.to(torch.float64).expand(start.shape)
        return torch.stack([c, (start - end) * self.step_scale], dim=1).to(torch.float32)

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None,
            scalings: Scalings | None = None) -> Tensor:
        assert space is not None, "FlowMapDenoiser needs the batch's Space"
        sc = self.scalings(self._split(t)[0])[2] if scalings is None else scalings
        x_in = space.coef(sc.c_in, x_t) * x_t
        return self.backbone(x_in, self.noise_inputs(t, sc), cond=cond, space=space)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None) -> Prediction:
        assert space is not None, "FlowMapDenoiser needs the batch's Space"
        _, _, sc = self.scalings(self._split(t)[0])
        out = self.raw(x_t, t, cond=cond, space=space, scalings=sc)
        x_t = x_t.to(out.dtype)
        x0 = space.coef(sc.c_skip, out) * x_t + space.coef(sc.c_out, out) * out
        eps = space.coef(sc.e_skip, out) * x_t + space.coef(sc.e_out, out) * out
        return Prediction(space.project(x0), space.project(eps))
