"""Flow samplers: ODE solvers on the velocity, and the reverse SDE with the matching score.

Any schedule ``x_t = alpha_t x_0 + sigma_t eps`` is the linear interpolant after a rescaling
and a change of clock: with

    c_t = alpha_t + sigma_t,     rho_t = sigma_t / c_t,     y = x / c_t,

``y = (1 - rho) x_0 + rho eps``, and the probability-flow ODE reads (exactly, for every
schedule; the analogue of Karras et al.'s ``x / alpha``, ``sigma / alpha``)

    dy / drho = u(y, rho) = eps_hat - x0_hat,

the rectified-flow velocity (Liu et al. 2023). On a linear flow path (``alpha + sigma = 1``)
``y = x`` and ``rho = t'`` (the path time, after any shift), so these samplers are the flow
solvers of SD3 / rectified flow; on a VP or VE schedule they are valid PF-ODE solvers too. They
read only ``schedule.alpha_sigma`` (and ``t_from_log_snr`` for times between grid points:
``rho = sigmoid(-lambda / 2)``), never which path they run on, and take any descending grid.

================ ============================================================ ===================
name             method                                                       evaluations / step
================ ============================================================ ===================
flow_euler       Euler in ``rho`` (identical to DDIM with ``eta = 0``)          1
flow_heun        Heun (explicit trapezoid); Euler on a step to ``sigma = 0``     2 (1 on that step)
flow_midpoint    explicit midpoint in ``rho``                                  2
flow_rk45        adaptive (scipy ``solve_ivp``), then one final denoise         adaptive
flow_sde         reverse SDE ``dy = [u - g^2 score / 2] drho + g dW``,          1
                 ``g^2 = 2 noise rho`` (Euler-Maruyama; last step deterministic)
================ ============================================================ ===================

Heun / midpoint / RK45 never evaluate the model where ``sigma = 0``; ``alpha = 0`` (pure noise,
``rho = 1``) is fine wherever the denoiser is finite there (the velocity and x0 parameterizations,
the exact Gaussian mixture).
"""


from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..process.parameterization import Prediction
from ..process.schedule import Schedule
from .common import Callback, call, grid_coefs, ode_finish, report

__all__ = ["flow_coords", "t_from_rho", "flow_euler", "flow_heun", "flow_midpoint", "flow_rk45", "flow_sde"]


_F64 = torch.float64


def flow_coords(schedule: Schedule, grid: Tensor) -> list[tuple[float, float]]:
    """``(c, rho) = (alpha + sigma, sigma / (alpha + sigma))`` at every grid time (Python floats)."""
    return [(a + s, s / (a + s)) for a, s in grid_coefs(schedule, grid)]


def t_from_rho(schedule: Schedule, rho: float) -> float:
    """The schedule time whose ``rho = sigma / (alpha + sigma)`` is ``rho`` (log-SNR ``2 log((1 - rho) / rho)``)."""
    if rho <= 0.0:
        return 0.0
    lam = -math.inf if rho >= 1.0 else 2.0 * (math.log1p(-rho) - math.log(rho))
    return float(schedule.t_from_log_snr(torch.tensor(lam, dtype=_F64)))


def _u(pred: Prediction) -> Tensor:
    return pred.eps - pred.x0


@torch.no_grad()
def flow_euler(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
               generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Euler on the velocity: ``y_s = y_t + (rho_s - rho_t) (eps_hat - x0_hat)``.

    Since ``y_t = (1 - rho_t) x0_hat + rho_t eps_hat`` this is ``x_s = alpha_s x0_hat + sigma_s eps_hat``:
    DDIM (``eta = 0``) is Euler in these coordinates, on every schedule (Liu et al. 2023)."""
    co = flow_coords(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (c_t, r_t), (c_s, r_s) = co[i], co[i + 1]
        pred = call(denoise, x, t, space)
        x = space.project((c_s / c_t) * x + (c_s * (r_s - r_t)) * _u(pred))
        report(callback, i, t, s, x, pred.x0)
    return x


@torch.no_grad()
def flow_heun(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
              generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Heun's method on ``dy / drho = u``: an Euler predictor, then the trapezoid of the two
    velocities; a step ending where ``sigma = 0`` stays an Euler step (as EDM's algorithm 1)."""
    co = flow_coords(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (c_t, r_t), (c_s, r_s) = co[i], co[i + 1]
        y = x / c_t
        pred = call(denoise, x, t, space)
        u1 = _u(pred)
        y_next = space.project(y + (r_s - r_t) * u1)
        if r_s > 0:
            u2 = _u(call(denoise, c_s * y_next, s, space))
            y_next = space.project(y + (r_s - r_t) * 0.5 * (u1 + u2))
        x = c_s * y_next
        report(callback, i, t, s, x, pred.x0)
    return x


@torch.no_grad()
def flow_midpoint(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
                  generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """The explicit midpoint method in ``rho``: half an Euler step to ``rho_m = (rho_t + rho_s) / 2``
    (time ``t_m`` from the schedule's log-SNR), then the full step with the velocity there."""
    co = flow_coords(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (c_t, r_t), (c_s, r_s) = co[i], co[i + 1]
        y = x / c_t
        pred = call(denoise, x, t, space)
        r_m = 0.5 * (r_t + r_s)
        t_m = t_from_rho(schedule, r_m)
        a_m, s_m = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_m, dtype=_F64)))
        y_m = space.project(y + (r_m - r_t) * _u(pred))
        u_m = _u(call(denoise, (a_m + s_m) * y_m, torch.tensor(t_m, dtype=_F64), space))
        x = space.project(c_s * (y + (r_s - r_t) * u_m))
        report(callback, i, t, s, x, pred.x0)
    return x


@torch.no_grad()
def flow_rk45(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
              generator: GeneratorLike = None, callback: Callback | None = None,
              rtol: float = 1e-5, atol: float = 1e-5, method: str = "RK45", stats: dict | None = None) -> Tensor:
    """``dy / drho = u`` solved adaptively by scipy's ``solve_ivp`` from ``grid[0]`` to ``grid[-1]``;
    when ``grid[-1]`` is clean data (``sigma = 0``) the solve stops at ``schedule.t_min`` and the
    result is denoised once (``x0_hat``). ``stats["nfe"]`` receives the evaluation count."""
    from scipy.integrate import solve_ivp

    t_end = float(grid[-1])
    a_e, s_e = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_end, dtype=_F64)))
    final_denoise = s_e == 0.0
    if final_denoise:
        t_end = max(float(schedule.t_min), t_end)
    (c0, r0), (c_end, r_end) = flow_coords(schedule, torch.tensor([float(grid[0]), t_end], dtype=_F64))
    shape, dtype, device = x.shape, x.dtype, x.device
    nfe = 0

    def fun(rho: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        t = t_from_rho(schedule, float(rho))
        a, s = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=_F64)))
        ys = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        u = _u(call(denoise, (a + s) * ys, torch.tensor(t, dtype=_F64), space))
        return u.to(_F64).reshape(-1).cpu().numpy()

    y0 = (x / c0).to(_F64).reshape(-1).cpu().numpy()
    sol = solve_ivp(fun, (r0, r_end), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"flow ODE solver failed: {sol.message}")
    x = space.project(c_end * torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype))
    return ode_finish(denoise, x, torch.tensor(t_end, dtype=_F64), a_e, space, final_denoise, nfe, stats,
                       callback, grid)


@torch.no_grad()
def flow_sde(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
             generator: GeneratorLike = None, callback: Callback | None = None, noise: float = 1.0) -> Tensor:
    """The reverse-time SDE with the flow's marginals (its score ``-eps_hat / rho`` in ``y``):

        dy = [u - (g^2 / 2) score] drho + g dW,     g(rho)^2 = 2 noise rho

    (reverse time, ``rho`` decreasing; ``noise = 0`` is the ODE; a diffusion proportional to the
    noise level as in SiT, Ma et al. 2024). Euler-Maruyama with ``h = rho_t - rho_s``:
    ``y_s = y_t - h u - noise h eps_hat + sqrt(2 noise rho_t h) z``; the step to ``sigma = 0`` is
    deterministic (an Euler step: ``x0_hat``). First order: it wants more steps than the ODE."""
    co = flow_coords(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (c_t, r_t), (c_s, r_s) = co[i], co[i + 1]
        pred = call(denoise, x, t, space)
        h = r_t - r_s
        y = x / c_t - h * _u(pred)
        if r_s > 0 and noise > 0:
            y = y - (noise * h) * pred.eps + math.sqrt(2.0 * noise * r_t * h) * space.noise(x, generator)
        x = space.project(c_s * y)
        report(callback, i, t, s, x, pred.x0)
    return x
