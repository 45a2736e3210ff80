"""Continuous-time samplers: reverse SDE, predictor-corrector, probability-flow ODE solvers,
EDM's Heun sampler, DPM-Solver++(2M) / (3M) / (2M SDE) and UniPC.

Every sampler keeps the signature of :mod:`diffuse.core.samplers`::

    sampler(denoise, x, grid, *, schedule, space, generator=None, callback=None, **options) -> x_0

and is registered in ``SAMPLERS`` under its CLI name (``diffuse sample --sampler NAME``):

================ ======================================================== ===================
name             algorithm                                                 evaluations / step
================ ======================================================== ===================
euler_maruyama   reverse-time SDE, Euler-Maruyama (Song et al. 2021, eq. 6) 1
pc               predictor-corrector (Song et al. 2021, algorithms 2-3)      1 + corrector_steps
ode_euler        probability-flow ODE in t, Euler (eq. 13)                   1
ode_heun         probability-flow ODE in t, Heun                             2 (1 on a step to sigma=0)
rk45             probability-flow ODE, adaptive RK45 (scipy ``solve_ivp``)   adaptive (+1 final denoise)
edm_heun         Karras et al. 2022, algorithm 2 (Heun, optional churn)      2 (1 on a step to sigma=0)
dpmpp_2m         DPM-Solver++(2M), Lu et al. 2022, algorithm 2               1
dpmpp_3m         DPM-Solver++(3M), Lu et al. 2022 (third-order multistep)    1
dpmpp_2m_sde     DPM-Solver++(2M) SDE (Lu et al. 2022; diffusers' midpoint)  1
unipc            UniPC, Zhao et al. 2023 (UniP-p + UniC, bh2, orders 1-3)    1
================ ======================================================== ===================

The multistep solvers (``dpmpp_*``, ``unipc``) lower their order during warm-up, on the last
steps of short grids (``lower_order_final``) and after a step more than :data:`MAX_STEP_RATIO`
times longer in log-SNR than the previous one; the Heun samplers fall back to Euler per sample
where the correction is unreliable (:data:`HEUN_TRUST`), so every grid works with few steps.

The flow samplers (``flow_euler``, ``flow_heun``, ``flow_midpoint``, ``flow_rk45``, ``flow_sde``)
live in :mod:`diffuse.core.flow` and are registered here too.

Scores come from the denoiser as ``score = -eps / sigma_t``. The SDE coefficients ``f, g^2``
come from the schedule (:func:`diffuse.core.sde.sde_coefficients`), so the same code serves the
discrete DDPM chain, the continuous VP / sub-VP / VE SDEs and EDM's sigmas. EDM's sampler and
RK45 work in the schedule-free variables ``x~ = x / alpha_t``, ``sigma~ = sigma_t / alpha_t``,
in which the probability-flow ODE reads ``dx~ / dsigma~ = eps(x, t)`` for every schedule
(Karras et al. 2022, eq. 4 with ``s(t) = alpha_t``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from .parameterization import Prediction
from .config import NON_NEGATIVE, POSITIVE, OneOf
from .samplers import OPTION_LIMITS, SAMPLERS, Callback, _call, _coefs, _grid_coefs, _limits
from .schedule import Schedule
from .sde import sde_coefficients
from .space import GeneratorLike, Space

logger = logging.getLogger(__name__)

__all__ = ["jump_logsnr_grid", "euler_maruyama", "pc", "ode_euler", "ode_heun", "rk45", "edm_heun", "dpmpp_2m", "dpmpp_3m",
           "dpmpp_2m_sde", "unipc", "HEUN_TRUST",
           "HEUN_TRUST_STATE", "HEUN_NEGLIGIBLE", "MAX_STEP_RATIO"]


def _fg2(schedule: Schedule, t: Tensor) -> tuple[float, float]:
    f, g2 = sde_coefficients(schedule, torch.as_tensor(t, dtype=torch.float64))
    f, g2 = float(f), float(g2)
    if not (math.isfinite(f) and math.isfinite(g2)):
        raise ValueError(f"the SDE coefficients of {schedule!r} are infinite at t={float(t):g} (alpha_t = 0: pure "
                         "noise); start the grid below it or use ddim, dpmpp_2m or a flow_* sampler")
    return f, g2


def _report(callback: Callback | None, i: int, t, s, x: Tensor, x0: Tensor | None, **extra: Any) -> None:
    if callback is not None:
        callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": x0, **extra})


def _ode_finish(denoise, x: Tensor, t_end: Tensor, alpha_end, space: Space, final_denoise: bool, nfe: int,
                stats: dict | None, callback: Callback | None, grid: Tensor) -> Tensor:
    """The end of an adaptive ODE solve (``rk45``, ``flow_rk45``): where the grid ends at zero noise,
    one last denoising step ``x = alpha_end x0_hat``; then ``stats["nfe"]`` and the callback."""
    x0 = None
    if final_denoise:
        x0 = _call(denoise, x, t_end, space).x0
        nfe += 1
        x = space.project(alpha_end * x0)
    if stats is not None:
        stats["nfe"] = nfe
    _report(callback, 0, grid[0], grid[-1], x, x0, nfe=nfe)
    return x


#: steps shorter than this in log-SNR are skipped by the multistep solvers
MIN_STEP = 1e-9


def _multistep_steps(schedule: Schedule, grid: Tensor) -> Iterator[tuple]:
    """The steps of a multistep log-SNR solver: ``(i, t, s, a_t, s_t, a_s, s_s, h)`` with
    ``h = lambda_s - lambda_t`` (``lambda = log(alpha / sigma)``; ``inf`` when ``sigma_s = 0``).
    Coefficients are computed once per call; a repeated time or a step shorter than
    :data:`MIN_STEP` in log-SNR (a zero-length step up to rounding) is skipped."""
    coefs = _grid_coefs(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        if float(s) == float(t):
            continue
        (a_t, s_t), (a_s, s_s) = coefs[i], coefs[i + 1]
        # h = inf on a step from pure noise (alpha_t = 0, a flow path at t = 1) or to clean data
        h = math.inf if s_s == 0.0 or a_t == 0.0 else math.log(a_s / s_s) - math.log(a_t / s_t)
        if abs(h) < MIN_STEP:      # rounding-level step (e.g. a grid ending twice at sigma_min): nothing to do,
            continue               # and the phi functions of higher orders cancel catastrophically there
        yield i, t, s, a_t, s_t, a_s, s_s, h


def jump_logsnr_grid(schedule: Schedule, steps: int, t_jump: float | None = None, t_min: float | None = None,
                     final: float | None = 0.0) -> Tensor:
    """A descending grid with ``steps`` evaluations: one long first step from ``t_max``, then
    uniform in log-SNR down to ``t_min`` (default ``schedule.t_min``), then ``final``.

    With ``t_jump=None`` (default) this is ``time_grid(schedule, steps, "jump_logsnr")``: the first
    step is :data:`~diffuse.core.samplers.JUMP` times the log-SNR step of the others, so it
    shrinks as ``steps`` grows. With ``t_jump`` given the first step always ends at ``t_jump``
    (then ``steps - 1`` times uniform in log-SNR from ``t_jump``); that grid does not refine its
    first step, so it stops improving as ``steps`` grows.
    """
    from .samplers import time_grid
    if t_jump is None:
        return time_grid(schedule, steps, "jump_logsnr", t_min=t_min, final=final)
    if steps < 2:
        return time_grid(schedule, 1, "logsnr", final=final)
    inner = time_grid(schedule, steps - 1, "logsnr", t_max=t_jump, t_min=t_min, final=final)
    return torch.cat([torch.tensor([schedule.t_max], dtype=torch.float64), inner])


# ---------------------------------------------------------------------------- reverse SDE
def _em_step(pred: Prediction, x: Tensor, t: Tensor, s: Tensor, schedule: Schedule, space: Space,
             generator: GeneratorLike) -> Tensor:
    """One Euler-Maruyama step ``t -> s`` of ``dx = [f x - g^2 score] dt + g dW_bar``;
    a step that ends at the data (``sigma_s = 0``) is the denoising step (:func:`_to_data`)."""
    if _at_data(schedule, s):
        return _to_data(pred, schedule, s, space)
    f, g2 = _fg2(schedule, t)
    _, sig = _coefs(schedule, t)
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
        pred = _call(denoise, x, t, space)
        x = _em_step(pred, x, t, s, schedule, space, generator)
        _report(callback, i, t, s, x, pred.x0)
    return x


def _reverse_diffusion_step(pred: Prediction, x: Tensor, t: Tensor, s: Tensor, schedule: Schedule,
                            space: Space, generator: GeneratorLike) -> Tensor:
    """Song et al.'s reverse-diffusion predictor (eq. 46) for the discretised forward step
    ``x_t = alpha_{t|s} x_s + sqrt(v) z``, ``v = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``:
    ``x_s = x_t - (alpha_{t|s} - 1) x_t + v score + sqrt(v) z``."""
    a_t, s_t = _coefs(schedule, t)
    a_s, s_s = _coefs(schedule, s)
    a_ts = a_t / a_s
    v = max(s_t ** 2 - a_ts ** 2 * s_s ** 2, 0.0)
    x = (2.0 - a_ts) * x - (v / s_t) * pred.eps
    if float(s) > 0:
        x = x + math.sqrt(v) * space.noise(x, generator)
    return space.project(x)


_PREDICTORS = {"reverse_diffusion": _reverse_diffusion_step, "euler_maruyama": _em_step}


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
    if predictor not in _PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; expected one of {sorted(_PREDICTORS)}")
    if corrector_steps < 0:
        raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
    step_fn = _PREDICTORS[predictor]
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        _sigma_ratio(schedule, t)                    # refuses alpha_t = 0 (pure noise) with one line
        a_t, s_t = _coefs(schedule, t)
        a_s, _ = _coefs(schedule, s)
        a_lang = (a_t / a_s) ** 2
        for _ in range(corrector_steps):
            score = -_call(denoise, x, t, space).eps / s_t
            z = space.noise(x, generator)
            ratio = float(torch.sqrt(space.inner(z, z)).mean() / torch.sqrt(space.inner(score, score)).mean().clamp_min(1e-30))
            step = 2.0 * a_lang * (snr * ratio) ** 2
            x = space.project(x + step * score + math.sqrt(2.0 * step) * z)
        pred = _call(denoise, x, t, space)
        x = step_fn(pred, x, t, s, schedule, space, generator)
        _report(callback, i, t, s, x, pred.x0)
    return x


# ---------------------------------------------------------------------------- probability-flow ODE in t
def _at_data(schedule: Schedule, s) -> bool:
    return _coefs(schedule, s)[1] == 0.0


def _to_data(pred: Prediction, schedule: Schedule, s, space: Space) -> Tensor:
    """The step onto the clean data (``sigma_s = 0``, where the score is singular): ``x = alpha_s
    x0_hat``, the exact flow step for a constant ``x0_hat`` (DDIM's last step; score_sde's final
    denoising, EDM's last Euler step). A schedule whose noise level jumps to 0 at ``t = 0`` (EDM,
    VE) needs it: an Euler step in ``t`` of length ``t_min`` would leave ``sigma_min`` of noise."""
    return space.project(_coefs(schedule, s)[0] * pred.x0)


def _pf_drift(pred: Prediction, x: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """``dx/dt = f(t) x - g(t)^2 score / 2 = f x + g^2 eps / (2 sigma)`` (eq. 13)."""
    f, g2 = _fg2(schedule, t)
    _, sig = _coefs(schedule, t)
    return f * x + (0.5 * g2 / sig) * pred.eps


@torch.no_grad()
def ode_euler(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
              generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE in ``t`` (Song et al. 2021, eq. 13); the step
    onto the data (``sigma = 0``) is the denoising step ``x = alpha x0_hat``."""
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        pred = _call(denoise, x, t, space)
        x = (_to_data(pred, schedule, s, space) if _at_data(schedule, s)
             else space.project(x + (float(s) - float(t)) * _pf_drift(pred, x, t, schedule)))
        _report(callback, i, t, s, x, pred.x0)
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
        return _per_sample_where(sp, ~bad, x_heun, x_euler)

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
        pred = _call(denoise, x, t, space)
        if _at_data(schedule, s):
            x = _to_data(pred, schedule, s, space)
            _report(callback, i, t, s, x, pred.x0)
            continue
        d1 = _pf_drift(pred, x, t, schedule)
        x_next = space.project(x + dt * d1)
        d2 = _pf_drift(_call(denoise, x_next, s, space), x_next, s, schedule)
        a_s, s_s = _coefs(schedule, s)
        x_ddim = space.project(a_s * pred.x0 + s_s * pred.eps)        # the fallback: stable on any grid
        x = fb.choose(x, x_ddim, space.project(x + 0.5 * dt * (d1 + d2)))
        _report(callback, i, t, s, x, pred.x0)
    fb.report()
    return x


# ---------------------------------------------------------------------------- EDM variables
def _sigma_ratio(schedule: Schedule, t) -> tuple[float, float]:
    """``(alpha_t, sigma_t / alpha_t)``: the EDM scale ``s(t)`` and noise level."""
    a, s = _coefs(schedule, t)
    if a == 0.0:
        raise ValueError(f"{schedule!r} has alpha_t = 0 at t={float(t):g} (infinite noise level sigma/alpha); "
                         "start the grid below it or use ddim, dpmpp_2m or a flow_* sampler")
    return a, s / a


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
    a0, _ = _sigma_ratio(schedule, grid[0])
    xs = x / a0
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        _, sig = _sigma_ratio(schedule, t)
        a_n, sig_n = _sigma_ratio(schedule, s)
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_tmin <= sig <= s_tmax else 0.0
        t_hat, sig_hat = t, sig
        if gamma > 0:
            t_hat = schedule.t_from_sigma_ratio(torch.tensor(sig * (1.0 + gamma), dtype=torch.float64))
            sig_hat = _sigma_ratio(schedule, t_hat)[1]           # the schedule may cap sigma
            xs = space.project(xs + math.sqrt(max(sig_hat ** 2 - sig ** 2, 0.0)) * s_noise * space.noise(xs, generator))
        a_hat = _coefs(schedule, t_hat)[0]
        pred = _call(denoise, a_hat * xs, t_hat, space)
        d = pred.eps
        x_next = space.project(xs + (sig_n - sig_hat) * d)
        if sig_n > 0:
            d2 = _call(denoise, a_n * x_next, s, space).eps
            x_next = fb.choose(xs, x_next, space.project(xs + (sig_n - sig_hat) * 0.5 * (d + d2)))
        xs = x_next
        _report(callback, i, t, s, a_n * xs, pred.x0)
    fb.report()
    return _coefs(schedule, grid[-1])[0] * xs


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
    final_denoise = _coefs(schedule, t_end)[1] == 0.0
    if final_denoise:
        positive = [t for t in grid.tolist() if _coefs(schedule, t)[1] > 0]
        t_end = torch.tensor(positive[-1], dtype=torch.float64)
    a0, sig0 = _sigma_ratio(schedule, t0)
    a_end, sig_end = _sigma_ratio(schedule, t_end)
    shape, dtype, device = x.shape, x.dtype, x.device
    nfe = 0

    def fun(sig: float, y: np.ndarray) -> np.ndarray:
        nonlocal nfe
        nfe += 1
        t = schedule.t_from_sigma_ratio(torch.tensor(sig, dtype=torch.float64))
        a = _coefs(schedule, t)[0]
        xs = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        eps = _call(denoise, a * xs, t, space).eps
        return eps.to(torch.float64).reshape(-1).cpu().numpy()

    y0 = (x / a0).to(torch.float64).reshape(-1).cpu().numpy()
    sol = solve_ivp(fun, (sig0, sig_end), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
    xs = space.project(torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype))
    return _ode_finish(denoise, a_end * xs, t_end, _coefs(schedule, grid[-1])[0], space, final_denoise, nfe,
                       stats, callback, grid)


# ---------------------------------------------------------------------------- multistep log-SNR solvers
#: below this many steps the last steps of a multistep solver lower their order (diffusers'
#: ``lower_order_final``: a long last step extrapolates the x0 history far beyond where it was seen)
LOWER_ORDER_FINAL_BELOW = 15
#: a step more than this many times longer (in log-SNR) than the one before it is first order:
#: the history's slope is not extrapolated that far
MAX_STEP_RATIO = 3.0


def _step_order(order: int, i: int, n_hist: int, n_steps: int, lower_order_final: bool, h_ratio: float = 1.0,
                below: float = LOWER_ORDER_FINAL_BELOW) -> int:
    """The order of multistep step ``i`` (0-based) of ``n_steps``: at most ``order``, at most one
    more than the history holds (warm-up), first order when the step is more than
    :data:`MAX_STEP_RATIO` times the previous one (``h_ratio``), and with ``lower_order_final`` on a
    grid of fewer than ``below`` steps, at most ``n_steps - i`` (the last step first order, the
    one before it at most second order)."""
    k = min(order, n_hist)
    if h_ratio > MAX_STEP_RATIO:
        k = 1
    if lower_order_final and n_steps < below:
        k = min(k, n_steps - i)
    return max(k, 1)


@torch.no_grad()
def dpmpp_2m(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
             generator: GeneratorLike = None, callback: Callback | None = None,
             lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", algorithm 2), multistep, data prediction.

    With ``lambda_t = log(alpha_t / sigma_t)``, ``h_i = lambda_{t_i} - lambda_{t_{i-1}}`` and
    ``r_i = h_{i-1} / h_i``:

        D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}     (D_1 = x0_0: first order)
        x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i

    A step that ends where ``sigma = 0`` (``h = inf``) is first order: ``x = alpha x0_hat``; with
    ``lower_order_final`` (default) so is the last step of a grid of fewer than 15 steps
    (diffusers' rule), which keeps the long last step of a linspace / leading / Karras grid from
    extrapolating the history. One evaluation per step.
    """
    return _dpmpp_multistep(denoise, x, grid, schedule, space, callback, 2, lower_order_final)


@torch.no_grad()
def dpmpp_3m(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
             generator: GeneratorLike = None, callback: Callback | None = None,
             lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(3M): the third-order multistep data-prediction solver (Lu et al. 2022,
    "DPM-Solver++", section 4 / appendix; the Taylor expansion of eq. 9 to second order).

    With ``phi_1 = expm1(-h)``, ``phi_2 = phi_1 / h + 1``, ``phi_3 = phi_2 / h - 1/2`` and the
    backward differences ``D1_0 = (x0_{i-1} - x0_{i-2}) / r_0``, ``D1_1 = (x0_{i-2} - x0_{i-3}) / r_1``
    (``r_k = h_{i-1-k} / h_i``):

        D1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1)    (~ h x0',   the slope at t_{i-1})
        D2 = 2 (D1_0 - D1_1) / (r_0 + r_1)              (~ h^2 x0'')
        x_{t_i} = (sigma_i / sigma_{i-1}) x - alpha_i phi_1 x0_{i-1} + alpha_i phi_2 D1 - alpha_i phi_3 D2

    The first steps are DPM-Solver++(1) and (2M) (warm-up); with ``lower_order_final`` (default)
    on a grid of fewer than 15 steps the last step is first order and the one before it at most
    second order (diffusers' rule); a step to ``sigma = 0`` returns ``alpha x0_hat``.
    One evaluation per step.
    """
    return _dpmpp_multistep(denoise, x, grid, schedule, space, callback, 3, lower_order_final)


def _dpmpp_multistep(denoise, x, grid, schedule, space, callback, order, lower_order_final):
    steps = list(_multistep_steps(schedule, grid))
    hist: list[Tensor] = []     # x0 at the last grid times, newest last
    hs: list[float] = []        # the steps h that separate them
    for j, (i, t, s, a_t, s_t, a_s, s_s, h) in enumerate(steps):
        pred = _call(denoise, x, t, space)
        hist = (hist + [pred.x0])[-3:]
        usable = 1 + sum(1 for _ in _finite_tail(hs, len(hist) - 1))
        k = _step_order(order, j, usable, len(steps), lower_order_final, h / hs[-1] if hs else 1.0)
        if s_s == 0.0:
            x = space.project(a_s * pred.x0)
        else:
            phi1 = math.expm1(-h)
            x_new = (s_s / s_t) * x - a_s * phi1 * pred.x0
            if k >= 2:
                r0 = hs[-1] / h
                d1_0 = (hist[-1] - hist[-2]) / r0
                if k >= 3:
                    r1 = hs[-2] / h
                    d1_1 = (hist[-2] - hist[-3]) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (2.0 / (r0 + r1)) * (d1_0 - d1_1)
                    phi2 = phi1 / h + 1.0
                    phi3 = phi2 / h - 0.5
                    low = a_s * phi1 * 0.5 * d1_0                 # the second-order (2M) term
                    x_new = _trusted(space, x_new - low, a_s * phi2 * d1 - a_s * phi3 * d2 + low, low)
                else:                                  # DPM-Solver++(2M) step
                    x_new = x_new - a_s * phi1 * 0.5 * d1_0
            x = space.project(x_new)
        hs.append(h)
        _report(callback, i, t, s, x, pred.x0)
    return x


def _trusted(space: Space, x_low: Tensor, correction: Tensor, low_term: Tensor) -> Tensor:
    """``x_low + correction`` for the samples whose higher-order correction is smaller than the
    lower-order term it refines (an embedded error test, as the Heun samplers' fallback); else the
    lower-order ``x_low``. On a smooth trajectory and a fine grid the correction is a factor
    ``O(h)`` smaller and the full order is kept; on a few-step grid where the x0 history bends
    sharply (high noise to low) the quadratic extrapolation of DPM-Solver++(3M) is not trusted."""
    d_c = space.inner(correction, correction)
    d_l = space.inner(low_term, low_term)
    ok = torch.isfinite(d_c) & (d_c <= d_l)
    if bool(ok.all()):
        return x_low + correction
    return _per_sample_where(space, ok, x_low + correction, x_low)


def _per_sample_where(space: Space, keep: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` for the samples where the per-sample boolean ``keep`` holds, ``b`` elsewhere."""
    return torch.where(space.coef(keep.to(torch.float64), a) > 0, a, b)


def _finite_tail(hs: list[float], n: int) -> Iterator[float]:
    """The last ``n`` step sizes, newest first, stopping at the first infinite one (a step from
    pure noise carries no slope information)."""
    for h in reversed(hs[-n:] if n > 0 else []):
        if not math.isfinite(h):
            return
        yield h


@torch.no_grad()
def dpmpp_2m_sde(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
                 generator: GeneratorLike = None, callback: Callback | None = None,
                 lower_order_final: bool = True) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", appendix; diffusers' ``sde-dpmsolver++``
    with the midpoint form), data prediction: with ``h = lambda_s - lambda_t``, ``r = h_prev / h``,

        x_s = (sigma_s / sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) (x0_i + (x0_i - x0_{i-1}) / (2 r))
              + sigma_s sqrt(1 - e^{-2h}) z

    (first order on the first step, on the step to ``sigma = 0``, and with ``lower_order_final``
    on the last step of a grid of fewer than 15 steps). One evaluation per step.
    """
    steps = list(_multistep_steps(schedule, grid))
    x0_prev, h_prev = None, math.inf
    for j, (i, t, s, a_t, s_t, a_s, s_s, h) in enumerate(steps):
        pred = _call(denoise, x, t, space)
        hist = 2 if x0_prev is not None and math.isfinite(h_prev) else 1
        k = _step_order(2, j, hist, len(steps), lower_order_final, h / h_prev)
        if s_s == 0.0:
            x = space.project(a_s * pred.x0)
        else:
            em2h = -math.expm1(-2.0 * h)                       # 1 - e^{-2h}
            d = pred.x0
            if k >= 2:
                d = d + (0.5 * h / h_prev) * (pred.x0 - x0_prev)
            x = (s_s / s_t) * math.exp(-h) * x + (a_s * em2h) * d
            x = space.project(x + (s_s * math.sqrt(em2h)) * space.noise(x, generator))
        x0_prev, h_prev = pred.x0, h
        _report(callback, i, t, s, x, pred.x0)
    return x


# ---------------------------------------------------------------------------- UniPC
def _unipc_coefs(rks: list[float], h: float, order: int) -> tuple[float, float, list[float], list[float]]:
    """UniPC's B(h) variant bh2 (Zhao et al. 2023, section 3.3 and appendix; diffusers' ``bh2``) in
    data prediction: returns ``(h_phi_1, B_h, rhos_p, rhos_c)`` for the ratios ``rks`` of the
    history (``r_m = (lambda_{s_m} - lambda_{s_0}) / h``, newest first, without the final 1).

    ``R[i, m] = r_m^i``, ``b_i = h_phi_{i+1} i! / B_h`` with ``phi`` the exponential-integrator
    functions in ``hh = -h``; the predictor solves the leading ``(order-1)`` system (with the
    paper's ``rho = 1/2`` for order 2), the corrector the full ``order`` system including ``r = 1``."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = h_phi_1                                   # bh2: B(h) = e^h - 1 (of hh)
    rs = list(rks) + [1.0]
    R, b, fact = [], [], 1
    for i in range(1, order + 1):
        R.append([r ** (i - 1) for r in rs])
        b.append(h_phi_k * fact / b_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    rhos_p: list[float] = []
    if rks:
        if order == 2:
            rhos_p = [0.5]
        else:
            rhos_p = torch.linalg.solve(torch.tensor([row[:-1] for row in R[:-1]], dtype=torch.float64),
                                        torch.tensor(b[:-1], dtype=torch.float64)).tolist()
    if order == 1:
        rhos_c = [0.5]
    else:
        rhos_c = torch.linalg.solve(torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).tolist()
    return h_phi_1, b_h, rhos_p, rhos_c


@torch.no_grad()
def unipc(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
          generator: GeneratorLike = None, callback: Callback | None = None,
          order: int = 2, corrector: bool = True, lower_order_final: bool = True) -> Tensor:
    """UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
    Diffusion Models"): the multistep UniP-``order`` predictor with the UniC corrector, variant
    ``B(h) = e^h - 1`` (bh2), in data prediction (the paper's algorithms 2-3 in x0 form; the same
    coefficients as diffusers' ``UniPCMultistepScheduler``).

    Each step ``t -> s`` evaluates ``x0(x_t, t)`` once, first *corrects* ``x_t`` (the value the
    previous predictor gave) with it at no extra cost,

        x_t <- (sigma_t / sigma_p) x_p - alpha_t phi_1 x0_p - alpha_t B(h) (sum_m rho_m D_m + rho_c (x0_t - x0_p)),

    then predicts ``x_s = (sigma_s / sigma_t) x_t - alpha_t phi_1 x0_t - alpha_s B(h) sum_m rho_m D_m``
    with the divided differences ``D_m = (x0_{s_m} - x0_t) / r_m`` of the history. UniP-p with UniC
    converges with order ``p + 1``. The order is lowered during warm-up, after a step more than
    :data:`MAX_STEP_RATIO` times longer than the one before, and with ``lower_order_final``
    (default; on every grid, as diffusers' UniPC) on the last ``order - 1`` steps; the step
    to ``sigma = 0`` returns ``alpha x0_hat`` (as the corrector never runs after the last
    evaluation, the final output is the corrected point's denoised value). ``corrector=False`` is
    the plain UniP predictor. One evaluation per step.
    """
    if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
        raise ValueError(f"the UniPC order must be 1, 2 or 3, got {order!r}")
    steps = list(_multistep_steps(schedule, grid))
    hist: list[tuple[float, Tensor]] = []      # (lambda, x0) newest last
    last: tuple | None = None                  # (x_p, lambda_p, sigma_p, order used) of the previous predictor
    for j, (i, t, s, a_t, s_t, a_s, s_s, h) in enumerate(steps):
        pred = _call(denoise, x, t, space)
        lam_t = math.log(a_t / s_t) if a_t > 0 and s_t > 0 else (-math.inf if a_t == 0 else math.inf)
        if corrector and last is not None and math.isfinite(last[1]) and math.isfinite(lam_t):
            x_p, lam_p, s_p, a_p, k_p = last
            hc = lam_t - lam_p
            rks, ds = _history(hist[:-1], lam_p, hist[-1][1], hc, k_p - 1)
            phi1, b_h, _, rhos_c = _unipc_coefs(rks, hc, len(rks) + 1)
            corr = rhos_c[-1] * (pred.x0 - hist[-1][1])
            for rho, d in zip(rhos_c[:-1], ds):
                corr = corr + rho * d
            x = space.project((s_t / s_p) * x_p - a_t * phi1 * hist[-1][1] - (a_t * b_h) * corr)
        hist = (hist + [(lam_t, pred.x0)])[-order:]
        if s_s == 0.0:
            last = None
            x_next = space.project(a_s * pred.x0)
        else:
            finite = sum(1 for lam, _ in hist if math.isfinite(lam))
            k = _step_order(order, j, finite, len(steps), lower_order_final,
                            h / (lam_t - hist[-2][0]) if len(hist) > 1 else 1.0, below=math.inf)
            rks, ds = _history(hist[:-1], lam_t, pred.x0, h, k - 1)
            phi1, b_h, rhos_p, _ = _unipc_coefs(rks, h, len(rks) + 1)
            x_next = (s_s / s_t) * x - a_s * phi1 * pred.x0
            if ds:
                res = rhos_p[0] * ds[0]
                for rho, d in zip(rhos_p[1:], ds[1:]):
                    res = res + rho * d
                x_next = x_next - (a_s * b_h) * res
            x_next = space.project(x_next)
            last = (x, lam_t, s_t, a_t, k)
        x = x_next
        _report(callback, i, t, s, x, pred.x0)
    return x


def _history(older: list[tuple[float, Tensor]], lam0: float, x00: Tensor, h: float, n: int) -> tuple[list[float], list[Tensor]]:
    """Up to ``n`` ratios ``r_m = (lambda_m - lambda_0) / h`` and divided differences
    ``(x0_m - x0_0) / r_m`` of the ``older`` history (newest first; an infinite log-SNR ends it)."""
    rks, ds = [], []
    for lam, x0 in reversed(older):
        if len(rks) >= n or not math.isfinite(lam):
            break
        r = (lam - lam0) / h
        rks.append(r)
        ds.append((x0 - x00) / r)
    return rks, ds


_limits()
OPTION_LIMITS.update({
    "s_churn": NON_NEGATIVE, "s_tmin": NON_NEGATIVE, "s_tmax": NON_NEGATIVE, "s_noise": NON_NEGATIVE,
    "rtol": POSITIVE, "atol": POSITIVE, "method": OneOf(("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")),
    "snr": POSITIVE, "corrector_steps": NON_NEGATIVE, "predictor": OneOf(tuple(sorted(_PREDICTORS))),
    "order": OneOf((1, 2, 3)),
})

SAMPLERS.update({
    "dpmpp_3m": dpmpp_3m,
    "euler_maruyama": euler_maruyama,
    "pc": pc,
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "rk45": rk45,
    "edm_heun": edm_heun,
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "unipc": unipc,
})

from . import flow as _flow  # noqa: E402,F401 - registers the flow samplers (flow_euler, flow_heun, ...)
