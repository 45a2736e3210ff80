"""What every sampler shares: the prior draw, the per-step coefficients, the network call at one
time for the whole batch, the step report, and the per-sample choices of the multistep and Heun
samplers.

A sampler is ``sampler(denoise, x, grid, *, schedule, space, generator=None, callback=None,
**options) -> x_0`` (see :mod:`diffuse.core.sampling`); the helpers here keep each sampler's
body to its algorithm.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..errors import UserInputError
from ..process.parameterization import Prediction
from ..process.schedule import Schedule
from ..process.sde import sde_coefficients

__all__ = ["Callback", "prior_sample", "coefs", "grid_coefs", "clip_prediction", "call", "report", "ode_finish",
           "fg2", "sigma_ratio", "at_data", "to_data", "per_sample_where"]

Callback = Callable[[dict[str, Any]], None]


def prior_sample(schedule: Schedule, space: Space, like: Tensor, t: float = 1.0,
                 generator: GeneratorLike = None) -> Tensor:
    """A draw from the approximate marginal at time ``t``: ``sqrt(alpha^2 + sigma^2) * noise``
    (``sigma_max * noise`` for VE, plain noise for VP)."""
    alpha, sigma = schedule.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
    scale = float(torch.sqrt(alpha ** 2 + sigma ** 2))
    return scale * space.noise(like, generator)


def coefs(schedule: Schedule, t: Tensor) -> tuple[float, float]:
    a, s = schedule.alpha_sigma(t)
    return float(a), float(s)


def grid_coefs(schedule: Schedule, grid: Tensor) -> list[tuple[float, float]]:
    """``(alpha, sigma)`` at every grid time, computed once per call as Python floats."""
    a, s = schedule.alpha_sigma(torch.as_tensor(grid, dtype=torch.float64))
    return list(zip(a.tolist(), s.tolist()))


def clip_prediction(pred: Prediction, x: Tensor, a: float, s: float, clip: float | None) -> Prediction:
    """Clip x0 to ``[-clip, clip]`` and recompute eps consistently (DDPM's ``clip_denoised``)."""
    if clip is None:
        return pred
    x0 = pred.x0.clamp(-clip, clip)
    return Prediction(x0, (x - a * x0) / s if s > 0 else pred.eps)


def call(denoise, x: Tensor, t: Tensor, space: Space) -> Prediction:
    tv = torch.full((space.batch_size(x),), float(t), dtype=torch.float64, device=x.device)
    return denoise(x, tv)


def fg2(schedule: Schedule, t: Tensor) -> tuple[float, float]:
    f, g2 = sde_coefficients(schedule, torch.as_tensor(t, dtype=torch.float64))
    f, g2 = float(f), float(g2)
    if not (math.isfinite(f) and math.isfinite(g2)):
        raise UserInputError(f"the SDE coefficients of {schedule!r} are infinite at t={float(t):g} (alpha_t = 0: pure "
                         "noise); start the grid below it or use ddim, dpmpp_2m or a flow_* sampler")
    return f, g2


def report(callback: Callback | None, i: int, t, s, x: Tensor, x0: Tensor | None, **extra: Any) -> None:
    if callback is not None:
        callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": x0, **extra})


def ode_finish(denoise, x: Tensor, t_end: Tensor, alpha_end, space: Space, final_denoise: bool, nfe: int,
                stats: dict | None, callback: Callback | None, grid: Tensor) -> Tensor:
    """The end of an adaptive ODE solve (``rk45``, ``flow_rk45``): where the grid ends at zero noise,
    one last denoising step ``x = alpha_end x0_hat``; then ``stats["nfe"]`` and the callback."""
    x0 = None
    if final_denoise:
        x0 = call(denoise, x, t_end, space).x0
        nfe += 1
        x = space.project(alpha_end * x0)
    if stats is not None:
        stats["nfe"] = nfe
    report(callback, 0, grid[0], grid[-1], x, x0, nfe=nfe)
    return x


def sigma_ratio(schedule: Schedule, t) -> tuple[float, float]:
    """``(alpha_t, sigma_t / alpha_t)``: the EDM scale ``s(t)`` and noise level."""
    a, s = coefs(schedule, t)
    if a == 0.0:
        raise UserInputError(f"{schedule!r} has alpha_t = 0 at t={float(t):g} (infinite noise level sigma/alpha); "
                         "start the grid below it or use ddim, dpmpp_2m or a flow_* sampler")
    return a, s / a



def at_data(schedule: Schedule, s) -> bool:
    return coefs(schedule, s)[1] == 0.0


def to_data(pred: Prediction, schedule: Schedule, s, space: Space) -> Tensor:
    """The step onto the clean data (``sigma_s = 0``, where the score is singular): ``x = alpha_s
    x0_hat``, the exact flow step for a constant ``x0_hat`` (DDIM's last step; score_sde's final
    denoising, EDM's last Euler step). A schedule whose noise level jumps to 0 at ``t = 0`` (EDM,
    VE) needs it: an Euler step in ``t`` of length ``t_min`` would leave ``sigma_min`` of noise."""
    return space.project(coefs(schedule, s)[0] * pred.x0)



def per_sample_where(space: Space, keep: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` for the samples where the per-sample boolean ``keep`` holds, ``b`` elsewhere."""
    return torch.where(space.coef(keep.to(torch.float64), a) > 0, a, b)

