"""DDPM ancestral sampling, DDIM and DDIM inversion on any descending grid."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..errors import UserInputError
from ..process.schedule import Schedule
from .common import Callback, call, clip_prediction, grid_coefs

__all__ = ["ddpm", "ddim", "ddim_invert"]



@torch.no_grad()
def ddpm(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
         generator: GeneratorLike = None, callback: Callback | None = None,
         variance: str = "posterior", clip_x0: float | None = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, algorithm 2), on any descending grid.

    Each step ``t -> s`` draws from the Gaussian posterior ``q(x_s | x_t, x0_hat)`` with
    ``alpha_{t|s} = alpha_t / alpha_s``, ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``:

        mean = alpha_{t|s} sigma_s^2 / sigma_t^2 * x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 * x0_hat
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2         ("posterior", beta-tilde in the paper)
               or sigma_{t|s}^2                           ("large", beta_t in the paper)

    On the full grid ``T/T, (T-1)/T, ..., 1/T, 0`` this is exactly the paper's chain. The last
    step to ``s = 0`` returns the mean (no noise), as in the paper.
    """
    if variance not in ("posterior", "large"):
        raise UserInputError(f"variance must be 'posterior' or 'large', got {variance!r}")
    coefs = grid_coefs(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (a_t, s_t), (a_s, s_s) = coefs[i], coefs[i + 1]
        pred = clip_prediction(call(denoise, x, t, space), x, a_t, s_t, clip_x0)
        a_ts = a_t / a_s
        var_ts = s_t ** 2 - a_ts ** 2 * s_s ** 2
        x = (a_ts * s_s ** 2 / s_t ** 2) * x + (a_s * var_ts / s_t ** 2) * pred.x0
        if s_s > 0:
            std = math.sqrt(var_ts * s_s ** 2 / s_t ** 2 if variance == "posterior" else var_ts)
            x = x + std * space.noise(x, generator)
        x = space.project(x)
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": pred.x0})
    return x


@torch.no_grad()
def ddim(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
         generator: GeneratorLike = None, callback: Callback | None = None,
         eta: float = 0.0, clip_x0: float | None = None) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) with stochasticity ``eta in [0, 1]``.

    Step ``t -> s``:  ``x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z``, with
    ``c = eta * sqrt(sigma_{t|s}^2 sigma_s^2 / sigma_t^2)`` (the DDPM posterior standard
    deviation times eta). ``eta = 0`` is the deterministic DDIM (a first-order solver of the
    probability-flow ODE in log-SNR); ``eta = 1`` is DDPM's posterior on the same grid.
    Any number of steps, any grid.
    """
    if not 0.0 <= eta <= 1.0:
        raise UserInputError(f"eta must be in [0, 1], got {eta}")
    coefs = grid_coefs(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (a_t, s_t), (a_s, s_s) = coefs[i], coefs[i + 1]
        pred = clip_prediction(call(denoise, x, t, space), x, a_t, s_t, clip_x0)
        c = 0.0
        if eta > 0 and s_s > 0:
            var_ts = s_t ** 2 - (a_t / a_s) ** 2 * s_s ** 2
            c = eta * math.sqrt(max(var_ts, 0.0) * s_s ** 2 / s_t ** 2)
        x = a_s * pred.x0 + math.sqrt(max(s_s ** 2 - c ** 2, 0.0)) * pred.eps
        if c > 0:
            x = x + c * space.noise(x, generator)
        x = space.project(x)
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": pred.x0})
    return x


@torch.no_grad()
def ddim_invert(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
                generator: GeneratorLike = None, callback: Callback | None = None,
                fixed_point_iters: int = 0) -> Tensor:
    """DDIM inversion: deterministically encode data ``x`` (at ``grid[-1]``, usually 0) to
    noise at ``grid[0]``, walking the *sampling* grid backwards.

    Each inverse step ``s -> t`` (``s < t``) solves the DDIM update
    ``x_s = (alpha_s / alpha_t) x_t + (sigma_s - alpha_s sigma_t / alpha_t) eps(x_t, t)`` for
    ``x_t``. With ``fixed_point_iters = 0`` it uses the usual approximation
    ``eps(x_t, t) ~ eps(x_s, t)`` (Dhariwal & Nichol 2021; Mokady et al. 2023); each extra
    fixed-point iteration re-evaluates ``eps`` at the current estimate of ``x_t``, which makes
    ``ddim(ddim_invert(x)) == x`` up to the fixed-point tolerance.
    """
    grid_up = grid.flip(0)
    steps = list(zip(grid_up[:-1], grid_up[1:]))
    coefs = grid_coefs(schedule, grid_up)
    for i, (s, t) in enumerate(steps):
        (a_s, s_s), (a_t, s_t) = coefs[i], coefs[i + 1]
        k = s_s - a_s * s_t / a_t
        x_s = x
        eps = call(denoise, x_s, t, space).eps
        x_t = (a_t / a_s) * (x_s - k * eps)
        for _ in range(fixed_point_iters):
            eps = call(denoise, x_t, t, space).eps
            x_t = (a_t / a_s) * (x_s - k * eps)
        x = space.project(x_t)
        if callback is not None:
            callback({"i": i, "t": float(s), "t_next": float(t), "x": x, "x0": None})
    return x

