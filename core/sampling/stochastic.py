"""The reverse-time SDE: Euler-Maruyama and predictor-corrector sampling (Song et al. 2021).

Scores come from the denoiser as ``score = -eps / sigma_t``; the SDE coefficients ``f, g^2``
come from the schedule (:func:`diffuse.core.process.sde.sde_coefficients`), so the same code
serves the discrete DDPM chain, the VP / sub-VP / VE SDEs and EDM's sigmas.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..errors import UserInputError
from ..process.parameterization import Prediction
from ..process.schedule import Schedule
from .common import Callback, at_data, call, coefs, fg2, report, sigma_ratio, to_data

__all__ = ["euler_maruyama", "pc", "PREDICTORS"]


# ---------------------------------------------------------------------------- reverse SDE
def _em_step(pred: Prediction, x: Tensor, t: Tensor, s: Tensor, schedule: Schedule, space: Space,
             generator: GeneratorLike) -> Tensor:
    """One Euler-Maruyama step ``t -> s`` of ``dx = [f x - g^2 score] dt + g dW_bar``;
    a step that ends at the data (``sigma_s = 0``) is the denoising step (:func:`to_data`)."""
    if at_data(schedule, s):
        return to_data(pred, schedule, s, space)
    f, g2 = fg2(schedule, t)
    _, sig = coefs(schedule, t)
    dt = float(s) - float(t)                     # negative: time runs backwards
    drift = f * x + (g2 / sig) * pred.eps        # f x - g^2 * (-eps / sigma)
    x = x + dt * drift
    if float(s) > 0:
        x = x + math.sqrt(g2 * -dt) * space.noise(x, generator)
    return space.project(x)


@torch.no_grad()
def euler_maruyama(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
                   generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6):
    ``x_s = x_t - [f(t) x_t - g(t)^2 score(x_t, t)] (t - s) + g(t) sqrt(t - s) z``."""
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        pred = call(denoise, x, t, space)
        x = _em_step(pred, x, t, s, schedule, space, generator)
        report(callback, i, t, s, x, pred.x0)
    return x


def _reverse_diffusion_step(pred: Prediction, x: Tensor, t: Tensor, s: Tensor, schedule: Schedule,
                            space: Space, generator: GeneratorLike) -> Tensor:
    """Song et al.'s reverse-diffusion predictor (eq. 46) for the discretised forward step
    ``x_t = alpha_{t|s} x_s + sqrt(v) z``, ``v = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``:
    ``x_s = x_t - (alpha_{t|s} - 1) x_t + v score + sqrt(v) z``."""
    a_t, s_t = coefs(schedule, t)
    a_s, s_s = coefs(schedule, s)
    a_ts = a_t / a_s
    v = max(s_t ** 2 - a_ts ** 2 * s_s ** 2, 0.0)
    x = (2.0 - a_ts) * x - (v / s_t) * pred.eps
    if float(s) > 0:
        x = x + math.sqrt(v) * space.noise(x, generator)
    return space.project(x)


PREDICTORS = {"reverse_diffusion": _reverse_diffusion_step, "euler_maruyama": _em_step}


@torch.no_grad()
def pc(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
       generator: GeneratorLike = None, callback: Callback | None = None,
       predictor: str = "reverse_diffusion", corrector_steps: int = 1, snr: float = 0.16) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, algorithms 2-5).

    At each grid time ``t``: ``corrector_steps`` Langevin steps with target signal-to-noise
    ratio ``snr`` (algorithm 4/5: ``step = 2 a (snr |z| / |score|)^2``,
    ``x <- x + step * score + sqrt(2 step) z``, ``a = alpha_{t|s}^2`` i.e. ``1 - beta_i`` for
    VP, 1 for VE), then one predictor step ``t -> s`` (``reverse_diffusion`` or
    ``euler_maruyama``). As in the paper's code the norms are batch means of per-sample norms
    (through the Space): a per-sample ratio explodes where the score vanishes, so the step
    size, and hence a sample, depends on the batch. Evaluations: ``(1 + corrector_steps)`` per step.
    """
    if predictor not in PREDICTORS:
        raise UserInputError(f"unknown predictor {predictor!r}; expected one of {sorted(PREDICTORS)}")
    if corrector_steps < 0:
        raise UserInputError(f"corrector_steps must be >= 0, got {corrector_steps}")
    step_fn = PREDICTORS[predictor]
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        sigma_ratio(schedule, t)                    # refuses alpha_t = 0 (pure noise) with one line
        a_t, s_t = coefs(schedule, t)
        a_s, _ = coefs(schedule, s)
        a_lang = (a_t / a_s) ** 2
        for _ in range(corrector_steps):
            score = -call(denoise, x, t, space).eps / s_t
            z = space.noise(x, generator)
            ratio = float(torch.sqrt(space.inner(z, z)).mean() / torch.sqrt(space.inner(score, score)).mean().clamp_min(1e-30))
            step = 2.0 * a_lang * (snr * ratio) ** 2
            x = space.project(x + step * score + math.sqrt(2.0 * step) * z)
        pred = call(denoise, x, t, space)
        x = step_fn(pred, x, t, s, schedule, space, generator)
        report(callback, i, t, s, x, pred.x0)
    return x


