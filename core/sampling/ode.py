"""Probability-flow ODE solvers: Euler and Heun in ``t`` (Song et al. 2021, eq. 13), EDM's Heun
sampler (Karras et al. 2022, algorithm 2) and adaptive RK45 (scipy ``solve_ivp``).

EDM's sampler and RK45 work in the schedule-free variables ``x~ = x / alpha_t``,
``sigma~ = sigma_t / alpha_t``, in which the ODE reads ``dx~ / dsigma~ = eps(x, t)`` for every
schedule (Karras et al. 2022, eq. 4 with ``s(t) = alpha_t``). The Heun samplers fall back to the
first-order step per sample where the correction is unreliable (:data:`HEUN_TRUST`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..process.parameterization import Prediction
from ..process.schedule import Schedule
from .common import (Callback, at_data, call, coefs, fg2, ode_finish, per_sample_where, report, sigma_ratio,
                     to_data)

logger = logging.getLogger(__name__)

__all__ = ["ode_euler", "ode_heun", "edm_heun", "rk45", "HEUN_TRUST", "HEUN_TRUST_STATE", "HEUN_NEGLIGIBLE"]


def _pf_drift(pred: Prediction, x: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """``dx/dt = f(t) x - g(t)^2 score / 2 = f x + g^2 eps / (2 sigma)`` (eq. 13)."""
    f, g2 = fg2(schedule, t)
    _, sig = coefs(schedule, t)
    return f * x + (0.5 * g2 / sig) * pred.eps


@torch.no_grad()
def ode_euler(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
              generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE in ``t`` (Song et al. 2021, eq. 13); the step
    onto the data (``sigma = 0``) is the denoising step ``x = alpha x0_hat``."""
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        pred = call(denoise, x, t, space)
        x = (to_data(pred, schedule, s, space) if at_data(schedule, s)
             else space.project(x + (float(s) - float(t)) * _pf_drift(pred, x, t, schedule)))
        report(callback, i, t, s, x, pred.x0)
    return x


#: the Heun correction (``x_heun - x_euler``, the embedded error estimate of the Euler step) is
#: trusted only while it is at most this fraction of the Euler step itself (the slope changes
#: little over the step) ...
HEUN_TRUST = 0.25
#: ... and at most this fraction of the state it lands on (a relative local-error test, as an
#: adaptive solver's ``rtol``); past either bound the sample takes the Euler step. A correction
#: below :data:`HEUN_NEGLIGIBLE` of the state is always kept (where the drift itself nearly
#: vanishes, a tiny correction can exceed the tiny Euler step on any grid).
HEUN_TRUST_STATE = 1.0
HEUN_NEGLIGIBLE = 0.05


class _Fallbacks:
    """Per-sample choice between the Heun and the Euler step, and ONE log line per sampler call."""

    def __init__(self, name: str, space: Space) -> None:
        self.name, self.space, self.steps, self.pairs, self.total = name, space, 0, 0, 0

    def choose(self, x: Tensor, x_euler: Tensor, x_heun: Tensor) -> Tensor:
        sp = self.space
        self.total += 1
        d_e = sp.inner(x_euler - x, x_euler - x)
        d_x = sp.inner(x_euler, x_euler)
        d_c = sp.inner(x_heun - x_euler, x_heun - x_euler)
        large = d_c > HEUN_TRUST_STATE ** 2 * d_x
        steep = (d_c > HEUN_TRUST ** 2 * d_e) & (d_c > HEUN_NEGLIGIBLE ** 2 * d_x)
        bad = ~torch.isfinite(d_c) | large | steep
        if not bool(bad.any()):
            return x_heun
        self.steps += 1
        self.pairs += int(bad.sum())
        return per_sample_where(sp, ~bad, x_heun, x_euler)

    def report(self) -> None:
        if self.steps:
            logger.warning("%s: the Heun correction was unreliable on %d of %d steps (%d sample-steps); "
                           "those samples took the first-order (DDIM) step there", self.name, self.steps, self.total, self.pairs)


@torch.no_grad()
def ode_heun(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
             generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Heun's method (explicit trapezoid) on the probability-flow ODE in ``t``; a step ending
    where ``sigma = 0`` (the score is singular there) is the denoising step ``x = alpha x0_hat``.

    Stable on any grid: where a sample's Heun step differs from the first-order DDIM step from the
    same evaluation (the exponential integrator ``x = alpha_s x0_hat + sigma_s eps_hat``, exact for
    a constant ``x0_hat`` and stable for any step length, unlike Euler in ``t``, which overshoots by
    orders of magnitude on EDM's ``sigma(t)``) by more than the state it lands on
    (:data:`HEUN_TRUST_STATE`), or both by more than a quarter of the DDIM step
    (:data:`HEUN_TRUST`) and not negligibly (:data:`HEUN_NEGLIGIBLE`), or is non-finite, that
    sample takes the DDIM step, and the call logs one warning saying on how many steps this
    happened (the two differ by O(h^2) against an O(h) step, so a fine grid of a smooth problem
    never falls back and the order is kept)."""
    fb = _Fallbacks("ode_heun", space)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        dt = float(s) - float(t)
        pred = call(denoise, x, t, space)
        if at_data(schedule, s):
            x = to_data(pred, schedule, s, space)
            report(callback, i, t, s, x, pred.x0)
            continue
        d1 = _pf_drift(pred, x, t, schedule)
        x_next = space.project(x + dt * d1)
        d2 = _pf_drift(call(denoise, x_next, s, space), x_next, s, schedule)
        a_s, s_s = coefs(schedule, s)
        x_ddim = space.project(a_s * pred.x0 + s_s * pred.eps)        # the fallback: stable on any grid
        x = fb.choose(x, x_ddim, space.project(x + 0.5 * dt * (d1 + d2)))
        report(callback, i, t, s, x, pred.x0)
    fb.report()
    return x


@torch.no_grad()
def edm_heun(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
             generator: GeneratorLike = None, callback: Callback | None = None,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
             s_noise: float = 1.0) -> Tensor:
    """EDM's stochastic Heun sampler (Karras et al. 2022, algorithm 2), on any schedule.

    In the variables ``x~ = x / alpha_t``, ``sigma = sigma_t / alpha_t`` (eq. 4 with
    ``s(t) = alpha_t``), step ``i`` with ``N = len(grid) - 1`` steps:

    1. ``gamma = min(S_churn / N, sqrt(2) - 1)`` if ``S_tmin <= sigma_i <= S_tmax`` else 0;
    2. ``sigma^ = sigma_i (1 + gamma)``, ``x^ = x~ + sqrt(sigma^2 - sigma_i^2) S_noise z``;
    3. ``d = (x^ - D(x^, sigma^)) / sigma^`` (= eps), ``x~' = x^ + (sigma_{i+1} - sigma^) d``;
    4. if ``sigma_{i+1} > 0``: ``d' = (x~' - D(x~', sigma_{i+1})) / sigma_{i+1}``,
       ``x~' = x^ + (sigma_{i+1} - sigma^) (d + d') / 2``.

    ``S_churn = 0`` is the deterministic Heun sampler (algorithm 1). Evaluations: 2 per step,
    1 on the step to ``sigma = 0``. As in :func:`ode_heun`, a sample whose correction is
    unreliable takes the Euler step (here DDIM's step) and the call logs one warning.
    """
    fb = _Fallbacks("edm_heun", space)
    n = len(grid) - 1
    a0, _ = sigma_ratio(schedule, grid[0])
    xs = x / a0
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        _, sig = sigma_ratio(schedule, t)
        a_n, sig_n = sigma_ratio(schedule, s)
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sig <= s_tmax else 0.0
        t_hat, sig_hat = t, sig
        if gamma > 0:
            t_hat = schedule.t_from_sigma_ratio(torch.tensor(sig * (1.0 + gamma), dtype=torch.float64))
            sig_hat = sigma_ratio(schedule, t_hat)[1]           # the schedule may cap sigma
            xs = space.project(xs + math.sqrt(max(sig_hat ** 2 - sig ** 2, 0.0)) * s_noise * space.noise(xs, generator))
        a_hat = coefs(schedule, t_hat)[0]
        pred = call(denoise, a_hat * xs, t_hat, space)
        d = pred.eps
        x_next = space.project(xs + (sig_n - sig_hat) * d)
        if sig_n > 0:
            d2 = call(denoise, a_n * x_next, s, space).eps
            x_next = fb.choose(xs, x_next, space.project(xs + (sig_n - sig_hat) * 0.5 * (d + d2)))
        xs = x_next
        report(callback, i, t, s, a_n * xs, pred.x0)
    fb.report()
    return coefs(schedule, grid[-1])[0] * xs


@torch.no_grad()
def rk45(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
         generator: GeneratorLike = None, callback: Callback | None = None,
         rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45",
         stats: dict | None = None) -> Tensor:
    """The probability-flow ODE solved adaptively with scipy's ``solve_ivp`` (Song et al. 2021,
    section 4.3, which uses RK45 with ``rtol = atol = 1e-5``).

    Integrates ``dx~ / dsigma = eps(alpha_t x~, t)`` (``x~ = x / alpha_t``, ``sigma =
    sigma_t / alpha_t``; the ODE is the same for every schedule) from ``grid[0]`` to the last
    positive-noise time of ``grid``; if ``grid`` ends where ``sigma = 0`` the result is then
    denoised once (``x0_hat``, Song et al.'s final denoising step). The whole batch is one
    system (one step size). The number of function evaluations is written to ``stats["nfe"]``
    (when a dict is given) and passed to ``callback`` as ``info["nfe"]``.
    """
    from scipy.integrate import solve_ivp

    t0, t_end = grid[0], grid[-1]
    final_denoise = coefs(schedule, t_end)[1] == 0.0
    if final_denoise:
        positive = [t for t in grid.tolist() if coefs(schedule, t)[1] > 0]
        t_end = torch.tensor(positive[-1], dtype=torch.float64)
    a0, sig0 = sigma_ratio(schedule, t0)
    a_end, sig_end = sigma_ratio(schedule, t_end)
    shape, dtype, device = x.shape, x.dtype, x.device
    nfe = 0

    def fun(sig: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        t = schedule.t_from_sigma_ratio(torch.tensor(sig, dtype=torch.float64))
        a = coefs(schedule, t)[0]
        xs = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        eps = call(denoise, a * xs, t, space).eps
        return eps.to(torch.float64).reshape(-1).cpu().numpy()

    y0 = (x / a0).to(torch.float64).reshape(-1).cpu().numpy()
    sol = solve_ivp(fun, (sig0, sig_end), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
    xs = space.project(torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype))
    return ode_finish(denoise, a_end * xs, t_end, coefs(schedule, grid[-1])[0], space, final_denoise, nfe,
                       stats, callback, grid)

