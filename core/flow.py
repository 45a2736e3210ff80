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

from .config import NON_NEGATIVE
from .domain import DomainDataset
from .parameterization import Prediction
from .samplers import OPTION_LIMITS, SAMPLERS, Callback, _call, _grid_coefs, _limits
from .schedule import Schedule
from .solvers import _ode_finish, _report
from .space import GeneratorLike, Space

__all__ = ["flow_coords", "t_from_rho", "flow_euler", "flow_heun", "flow_midpoint", "flow_rk45", "flow_sde",
           "ode_pairs", "PairDataset"]

_F64 = torch.float64


def flow_coords(schedule: Schedule, grid: Tensor) -> list[tuple[float, float]]:
    """``(c, rho) = (alpha + sigma, sigma / (alpha + sigma))`` at every grid time (Python floats)."""
    return [(a + s, s / (a + s)) for a, s in _grid_coefs(schedule, grid)]


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
        pred = _call(denoise, x, t, space)
        x = space.project((c_s / c_t) * x + (c_s * (r_s - r_t)) * _u(pred))
        _report(callback, i, t, s, x, pred.x0)
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
        pred = _call(denoise, x, t, space)
        u1 = _u(pred)
        y_next = space.project(y + (r_s - r_t) * u1)
        if r_s > 0:
            u2 = _u(_call(denoise, c_s * y_next, s, space))
            y_next = space.project(y + (r_s - r_t) * 0.5 * (u1 + u2))
        x = c_s * y_next
        _report(callback, i, t, s, x, pred.x0)
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
        pred = _call(denoise, x, t, space)
        r_m = 0.5 * (r_t + r_s)
        t_m = t_from_rho(schedule, r_m)
        a_m, s_m = (float(v) for v in schedule.alpha_sigma(torch.tensor(t_m, dtype=_F64)))
        y_m = space.project(y + (r_m - r_t) * _u(pred))
        u_m = _u(_call(denoise, (a_m + s_m) * y_m, torch.tensor(t_m, dtype=_F64), space))
        x = space.project(c_s * (y + (r_s - r_t) * u_m))
        _report(callback, i, t, s, x, pred.x0)
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
        u = _u(_call(denoise, (a + s) * ys, torch.tensor(t, dtype=_F64), space))
        return u.to(_F64).reshape(-1).cpu().numpy()

    y0 = (x / c0).to(_F64).reshape(-1).cpu().numpy()
    sol = solve_ivp(fun, (r0, r_end), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"flow ODE solver failed: {sol.message}")
    x = space.project(c_end * torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype))
    return _ode_finish(denoise, x, torch.tensor(t_end, dtype=_F64), a_e, space, final_denoise, nfe, stats,
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
        pred = _call(denoise, x, t, space)
        h = r_t - r_s
        y = x / c_t - h * _u(pred)
        if r_s > 0 and noise > 0:
            y = y - (noise * h) * pred.eps + math.sqrt(2.0 * noise * r_t * h) * space.noise(x, generator)
        x = space.project(c_s * y)
        _report(callback, i, t, s, x, pred.x0)
    return x


# ---------------------------------------------------------------------------- reflow (rectified flow, stage 2)
@torch.no_grad()
def ode_pairs(denoise, schedule: Schedule, space: Space, like: Tensor, *, steps: int = 20,
              sampler: str = "flow_heun", generator: GeneratorLike = None) -> tuple[Tensor, Tensor]:
    """``(noise, sample)`` pairs of the deterministic flow ODE (Liu et al. 2023, "Flow Straight
    and Fast", algorithm 1): noise from the prior at ``t = 1`` (``sqrt(alpha^2 + sigma^2)`` times
    the Space's noise), pushed through ``sampler`` on the uniform grid. Retraining on this
    coupling (the noise paired with its sample instead of an independent draw: a batch's
    ``extras["noise"]``, see ``core.diffusion``) straightens the paths: the reflowed model
    samples well in 1-4 steps."""
    from .samplers import get_sampler, prior_sample, time_grid

    noise = space.project(prior_sample(schedule, space, like, t=schedule.t_max, generator=generator))
    grid = time_grid(schedule, steps, "uniform")
    sample = get_sampler(sampler)(denoise, noise.clone(), grid, schedule=schedule, space=space, generator=generator)
    return noise, sample


def _split_items(x: Tensor, space: Space) -> list[tuple[Tensor, Space, slice | Tensor]]:
    """One ``(x_i, space_i, selector)`` per sample: rows of a dense batch, nodes of a graph batch."""
    from .graph import GraphSpace
    from .space import DenseSpace

    if isinstance(space, GraphSpace):
        out = []
        for i in range(space.batch_size(x)):
            sel = (space.batch == i).nonzero().flatten()
            out.append((x[sel], GraphSpace(torch.zeros(len(sel), dtype=torch.long), 1, space.centred), sel))
        return out
    return [(x[i:i + 1], DenseSpace() if type(space) is DenseSpace else space, slice(i, i + 1))
            for i in range(space.batch_size(x))]


class PairDataset(DomainDataset):
    """A training set of (noise, sample) pairs for reflow: ``batch`` returns the samples with the
    paired noise in ``extras["noise"]``. ``batches`` are :class:`~diffuse.core.domain.Batch` es
    whose ``extras["noise"]`` holds the noise of their samples (dense rows or graphs)."""

    def __init__(self, batches, info: dict) -> None:
        from .domain import Batch

        self.items = []
        self._info = info
        for b in batches:            # each: Batch(x=sample, space, cond, extras with "noise")
            noise = b.extras["noise"]
            for (xi, sp, sel) in _split_items(b.x, b.space):
                extras = {k: v for k, v in b.extras.items() if k != "noise"}
                extras["noise"] = noise[sel]
                self.items.append(Batch(xi, sp, None, extras))

    def __len__(self) -> int:
        return len(self.items)

    def info(self) -> dict:
        return self._info

    def batch(self, indices: Tensor, generator: torch.Generator | None = None):
        from .domain import Batch
        from .generate import concat_batches

        chosen = [self.items[int(i)] for i in torch.as_tensor(indices).flatten()]
        joined = concat_batches(chosen)
        noise, _ = chosen[0].space.concat([b.extras["noise"] for b in chosen], [b.space for b in chosen])
        return Batch(joined.x, joined.space, None, {**chosen[0].extras, "noise": noise})


_limits()
OPTION_LIMITS.update({"noise": NON_NEGATIVE})
SAMPLERS.update({"flow_euler": flow_euler, "flow_heun": flow_heun, "flow_midpoint": flow_midpoint,
                 "flow_rk45": flow_rk45, "flow_sde": flow_sde})
