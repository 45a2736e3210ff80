"""Samplers: pure functions over a denoise callable and an explicit descending time grid.

Every sampler has the signature::

    sampler(denoise, x, grid, *, schedule, space, generator=None, callback=None, **options) -> x_0

* ``denoise(x, t) -> Prediction(x0, eps)`` with ``t`` a per-sample float64 tensor ``[B]``
  (see :meth:`diffuse.core.denoiser.Denoiser.bind`; guidance wrappers have the same shape);
* ``x`` is the starting point (noise at ``grid[0]``, scaled for the schedule: use
  :func:`prior_sample`);
* ``grid`` is a 1-D float64 tensor of times, descending, usually ending at ``0`` (clean data);
  the sampler steps ``zip(grid[:-1], grid[1:])`` and keeps no state between calls;
* ``generator`` is a ``torch.Generator`` or one generator per sample (see ``core.space``);
* ``callback(info)`` is called after each step with a dict ``i, t, t_next, x, x0``.

All time-dependent coefficients are computed once per step as float64 scalars, so a step
costs a handful of fused element-wise operations beside the network.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable

import torch
from torch import Tensor

from .parameterization import Prediction
from .schedule import Schedule
from .space import GeneratorLike, Space

__all__ = [
    "time_grid",
    "prior_sample",
    "ddpm",
    "ddim",
    "ddim_invert",
    "SAMPLERS",
    "get_sampler",
    "check_sampler_options",
    "OPTION_LIMITS",
    "SPACINGS",
    "JUMP",
    "AUTO_MIN_STEPS",
    "JUMP_FEW",
    "AUTO_GRID_SAMPLERS",
    "FEW_STEP_GRID_SAMPLERS",
    "VP_SPACING",
    "default_spacing",
    "external_denoiser",
]

Callback = Callable[[dict[str, Any]], None]
SPACINGS = ("linspace", "leading", "trailing", "karras", "logsnr", "jump_logsnr", "auto", "uniform")
#: ``auto`` on a VP schedule: the few-step grid below this many steps, ``jump_logsnr`` from it on
AUTO_MIN_STEPS = 7
#: the first step of the ``jump_logsnr`` grid is this many times the log-SNR step of the others
JUMP = 3.0
#: the same ratio in ``auto``'s few-step grid (below :data:`AUTO_MIN_STEPS` steps on a VP schedule)
JUMP_FEW = 4.0
#: ``jump_logsnr`` (and so ``auto``) measures its steps from this log-SNR when the schedule starts
#: below it: at log-SNR -10.5 the exact denoiser of unit-scale data returns the data mean to within
#: e^-10.5, so a step from further down is exact whatever its length (the cosine chain starts near
#: -20 and a grid uniform from there spent 4 of 10 evaluations on t > 0.97; the DDPM linear chain
#: starts at -10.1 and EDM's sigma_max = 80 at -8.8, both unchanged)
LOGSNR_TOP = -10.5
#: ``auto`` on a schedule that is not VP (EDM's and VE's sigmas): uniform in log-SNR with a first
#: step this many times the others ...
JUMP_SIGMA = 1.5
#: ... down to this many times the schedule's lowest noise level (then the step to the data)
END_SIGMA = 2.5


def time_grid(schedule: Schedule, steps: int, spacing: str = "trailing", rho: float = 7.0,
              t_max: float | None = None, t_min: float | None = None, final: float | None = 0.0) -> Tensor:
    """A descending float64 time grid with ``steps`` model evaluations, then ``final``.

    For a discrete schedule with ``T`` steps the grid points are ``n / T`` for integer ``n``
    (the timesteps the model was trained on), with the spacings of Lin et al. 2023 ("Common
    Diffusion Noise Schedules and Sample Steps are Flawed", table 2; diffusers' names):

    * ``linspace``: ``n = 1 + round(linspace(0, T - 1, steps))`` (half-to-even ties on the 0-based index)
    * ``leading``:  ``n = 1 + k * (T // steps)``, ``k = 0..steps-1`` (never reaches ``T``)
    * ``trailing``: ``n = round(T - k * T / steps)``, ``k = 0..steps-1`` (always starts at ``T``)
    * ``karras``:   noise levels ``sigma/alpha`` spaced as in Karras et al. 2022 (eq. 5) with ``rho``,
      between the schedule's end points, mapped back to times (then rounded to the model's grid
      for a discrete schedule).
    * ``logsnr``:   uniform in log-SNR between the end points (Lu et al. 2022, DPM-Solver's
      ``logSNR`` skip type); never rounded, so a discrete model is queried between its nodes.

    * ``jump_logsnr``: uniform in log-SNR except the first step from ``t_max``, :data:`JUMP` times
      longer than the others: ``lambda_k = lambda_max + (JUMP + k - 1) d`` for ``k = 1..steps-1``,
      ``d = (lambda_min - lambda_max) / (JUMP + steps - 2)``. At high noise the denoiser's output is
      nearly the data mean, for which a first-order exponential-integrator step is exact whatever its
      length; the long first step frees evaluations for the mid-noise range where the trajectories
      bend, and it shrinks as ``steps`` grows (the grid refines everywhere). On a discrete schedule
      (without ``t_max`` / ``t_min``) the times are rounded to the model's own timesteps ``n / T``
      (kept distinct, as ``karras``): a model trained on the T-step chain is never queried between them.
      Where the schedule starts below log-SNR :data:`LOGSNR_TOP` the steps are measured from there
      (``lambda_max`` replaced by it; the first point stays ``t_max``).

    * ``auto``: the grid chosen on the TUNE problems of ``benchmarks/bench_grids.py`` (random exact
      mixtures) and checked on its HELD-OUT ones. For a VP schedule with ``steps`` from
      :data:`AUTO_MIN_STEPS` on it is ``jump_logsnr``; below that, the few-step grid: uniform in
      log-SNR with a first step :data:`JUMP_FEW` times the others, from ``t_max`` down to the last
      point of the ``trailing`` grid (``round(T / steps) / T``; ``t_min + (t_max - t_min) / steps``
      for a continuous schedule) instead of ``t_min``, and from there the final step to the data. With very few evaluations a grid that
      reaches the lowest noise spends them where the trajectories are already straight and
      leaves too few for the mid-noise range (on the TUNE problems at 5 evaluations: 2-4x the
      sample distance of the few-step grid); ``trailing`` stops at the same point but spaces its
      steps uniformly in ``t``, half of them before the data's structure forms. ``karras`` for
      For a schedule that is not VP (EDM's or VE's sigmas), uniform in log-SNR with a first step
      :data:`JUMP_SIGMA` times the others, from ``t_max`` down to :data:`END_SIGMA` times the lowest
      noise level (EDM: 0.005 instead of 0.002; the last evaluation there, then the step to the
      data), chosen the same way (README, "Default grids"; opt-in: the samplers' default on such
      schedules stays ``karras``). The schedule's own spacing for flow paths.

    * ``uniform``:  ``steps`` equal intervals of ``t`` from ``t_max`` down to ``final`` (default 0):
      ``t_max - k (t_max - final) / steps``, ``k = 0..steps-1`` (rectified flow's and SD3's grid; the
      default of flow schedules, whose time shift then acts through the schedule). With ``final=None``
      it ends at ``t_min`` instead.

    For continuous schedules ``linspace`` / ``trailing`` / ``leading`` are uniform in ``t`` on
    ``[t_min, t_max]``. ``final`` (default 0, the clean data) is appended unless ``None``.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"the number of sampling steps must be a positive integer, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown time spacing {spacing!r}; expected one of {SPACINGS}")
    steps = int(steps)
    T = schedule.num_steps
    jump, rounded = JUMP, False
    if spacing == "auto":
        spacing = getattr(schedule, "default_spacing", None) or "jump_logsnr"
        if spacing == "jump_logsnr" and not schedule.variance_preserving:               # EDM / VE sigmas
            jump = JUMP_SIGMA
            if t_min is None:
                ratio = schedule.alpha_sigma(torch.tensor(schedule.t_min, dtype=torch.float64))
                t_min = float(schedule.t_from_sigma_ratio(END_SIGMA * ratio[1] / ratio[0]))
        elif spacing == "jump_logsnr" and 1 < steps < AUTO_MIN_STEPS and t_min is None:   # the few-step grid
            jump = JUMP_FEW
            t_min = max(round(T / steps), 1) / T if T else schedule.t_min + (schedule.t_max - schedule.t_min) / steps
            if T and t_max is None:
                t_max, rounded = schedule.t_max, True
    if T and steps > T:
        raise ValueError(f"asked for {steps} steps but the model was trained with T={T}")
    hi = schedule.t_max if t_max is None else float(t_max)
    lo = schedule.t_min if t_min is None else float(t_min)
    if spacing == "uniform":
        end = lo if final is None else float(final)
        t = hi - torch.arange(steps, dtype=torch.float64) * ((hi - end) / steps)
        if T:
            t = _distinct_steps((t * T).round().clamp(1, T), T) / T
    elif spacing == "karras":
        a_hi, s_hi = schedule.alpha_sigma(torch.tensor(hi, dtype=torch.float64))
        a_lo, s_lo = schedule.alpha_sigma(torch.tensor(lo, dtype=torch.float64))
        if float(a_hi) == 0.0:
            raise ValueError(f"karras spacing needs alpha_t > 0 at t_max={hi:g} (pure noise there: log-SNR -inf); "
                             "use uniform, trailing or logsnr spacing, or a smaller t_max")
        smax, smin = float(s_hi / a_hi), float(s_lo / a_lo)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        sig = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        t = schedule.t_from_sigma_ratio(sig)
        if steps == 1:
            t = torch.tensor([hi], dtype=torch.float64)
        if T:
            t = _distinct_steps((t * T).round().clamp(1, T), T) / T
        t[0] = hi
    elif spacing in ("logsnr", "jump_logsnr"):
        if float(schedule.alpha_sigma(torch.tensor(hi, dtype=torch.float64))[0]) == 0.0:
            raise ValueError(f"logsnr spacing needs alpha_t > 0 at t_max={hi:g} (log-SNR -inf there); "
                             "use uniform or trailing spacing, or a smaller t_max")
        l_hi = float(schedule.log_snr(torch.tensor(hi, dtype=torch.float64)))
        l_lo = float(schedule.log_snr(torch.tensor(lo, dtype=torch.float64)))
        if spacing == "logsnr":
            lam = torch.linspace(l_hi, l_lo, steps, dtype=torch.float64)
        else:
            l_hi = max(l_hi, min(LOGSNR_TOP, l_lo))        # nothing to resolve above: the first step skips it
            k = torch.cat([torch.zeros(1, dtype=torch.float64), jump + torch.arange(steps - 1, dtype=torch.float64)])
            lam = l_hi + k * ((l_lo - l_hi) / (jump + steps - 2)) if steps > 1 else torch.tensor([l_hi], dtype=torch.float64)
        t = schedule.t_from_log_snr(lam) if steps > 1 else torch.tensor([hi], dtype=torch.float64)
        t[0], t[-1] = hi, (lo if steps > 1 else hi)
        if spacing == "jump_logsnr" and T and (rounded or (t_max is None and t_min is None)):   # the model's own timesteps
            t = _distinct_steps((t * T).round().clamp(1, T), T) / T
    elif T:
        if spacing == "linspace":
            n = (torch.linspace(0, T - 1, steps, dtype=torch.float64).round() + 1).flip(0)  # ties as diffusers
        elif spacing == "leading":
            n = (1 + torch.arange(steps, dtype=torch.float64) * (T // steps)).flip(0)
        else:
            n = (T - torch.arange(steps, dtype=torch.float64) * (T / steps)).round()
        t = n / T
        if t_max is not None or t_min is not None:
            t = lo + (t - t.min()) / max(float(t.max() - t.min()), 1e-12) * (hi - lo) if steps > 1 else torch.tensor([hi], dtype=torch.float64)
    else:
        t = torch.linspace(hi, lo, steps, dtype=torch.float64)
    if final is not None:
        t = torch.cat([t, torch.tensor([float(final)], dtype=torch.float64)])
    return t


#: the default grids below were chosen on the TUNE problems of ``benchmarks/bench_grids.py``
#: (random exact Gaussian mixtures; the rule: among the spacings better than diffusers' best
#: scheduler on average at 5, 10, 20 and 50 evaluations, the one no worse than it on the most
#: problem-budget pairs) and are reported on its HELD-OUT problems only (README, "Default grids").
#:
#: the samplers whose default grid on a VP schedule is ``auto`` at every number of steps
AUTO_GRID_SAMPLERS: frozenset = frozenset({"dpmpp_2m", "dpmpp_3m", "unipc", "ode_heun"})


#: the VP samplers that take ``auto``'s few-step grid below :data:`AUTO_MIN_STEPS` steps and
#: ``trailing`` from it on: DDIM, the default sampler of every domain. TUNE prefers ``auto`` for it
#: at every budget too, but on a small trained image model ``auto`` raised DDIM's FID at 10 steps
#: (142.8 -> 162.6) and the domains' published figures were measured on ``trailing``.
FEW_STEP_GRID_SAMPLERS: frozenset = frozenset({"ddim"})

#: other VP defaults chosen on TUNE (every sampler not named here or above keeps ``trailing``)
VP_SPACING: dict = {"edm_heun": "leading"}

#: on a schedule that is not VP (EDM's and VE's sigmas) every sampler defaults to ``karras``. On
#: the exact problems ``auto`` (and ``logsnr``) beat it for the multistep solvers, but on a small
#: EDM-trained image model ``karras`` gave the lower FID at 5 and 10 evaluations (UniPC 126 vs 141
#: and 109 vs 121; README, "Default grids"), so ``auto`` stays opt-in there (``--spacing auto``).


def default_spacing(schedule: Schedule, sampler: str, steps: int | None = None) -> str:
    """The grid spacing a sampler runs on when none is asked for: the schedule's own (uniform in
    ``t`` for flow paths); ``karras`` for other non-VP schedules (EDM's and VE's sigmas); for VP schedules ``auto`` for :data:`AUTO_GRID_SAMPLERS`, ``auto`` below
    :data:`AUTO_MIN_STEPS` steps and ``trailing`` from it on for :data:`FEW_STEP_GRID_SAMPLERS`,
    :data:`VP_SPACING`'s entry, else ``trailing``."""
    own = getattr(schedule, "default_spacing", None)
    if own:
        return own
    if not schedule.variance_preserving:
        return "karras"
    if sampler in AUTO_GRID_SAMPLERS or (sampler in FEW_STEP_GRID_SAMPLERS and steps is not None
                                         and steps < AUTO_MIN_STEPS):
        return "auto"
    return VP_SPACING.get(sampler, "trailing")


def _distinct_steps(n: Tensor, T: int) -> Tensor:
    """Make rounded integer timesteps strictly decreasing within ``[1, T]`` (rounding a dense
    Karras grid onto the T-step chain repeats the smallest ones; a repeat is a wasted call)."""
    n = n.clone()
    for i in range(len(n) - 2, -1, -1):  # from the low-noise end up: each above its successor
        n[i] = max(n[i], n[i + 1] + 1)
    n[0] = min(n[0], T)
    for i in range(1, len(n)):            # then keep the top within T, pushing down
        n[i] = min(n[i], n[i - 1] - 1)
    return n


def prior_sample(schedule: Schedule, space: Space, like: Tensor, t: float = 1.0,
                 generator: GeneratorLike = None) -> Tensor:
    """A draw from the approximate marginal at time ``t``: ``sqrt(alpha^2 + sigma^2) * noise``
    (``sigma_max * noise`` for VE, plain noise for VP)."""
    alpha, sigma = schedule.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
    scale = float(torch.sqrt(alpha ** 2 + sigma ** 2))
    return scale * space.noise(like, generator)


def _coefs(schedule: Schedule, t: Tensor) -> tuple[float, float]:
    a, s = schedule.alpha_sigma(t)
    return float(a), float(s)


def _grid_coefs(schedule: Schedule, grid: Tensor) -> list[tuple[float, float]]:
    """``(alpha, sigma)`` at every grid time, computed once per call as Python floats."""
    a, s = schedule.alpha_sigma(torch.as_tensor(grid, dtype=torch.float64))
    return list(zip(a.tolist(), s.tolist()))


def _clip(pred: Prediction, x: Tensor, a: float, s: float, clip: float | None) -> Prediction:
    """Clip x0 to ``[-clip, clip]`` and recompute eps consistently (DDPM's ``clip_denoised``)."""
    if clip is None:
        return pred
    x0 = pred.x0.clamp(-clip, clip)
    return Prediction(x0, (x - a * x0) / s if s > 0 else pred.eps)


def _call(denoise, x: Tensor, t: Tensor, space: Space) -> Prediction:
    tv = torch.full((space.batch_size(x),), float(t), dtype=torch.float64, device=x.device)
    return denoise(x, tv)


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
        raise ValueError(f"variance must be 'posterior' or 'large', got {variance!r}")
    coefs = _grid_coefs(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (a_t, s_t), (a_s, s_s) = coefs[i], coefs[i + 1]
        pred = _clip(_call(denoise, x, t, space), x, a_t, s_t, clip_x0)
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
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    coefs = _grid_coefs(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        (a_t, s_t), (a_s, s_s) = coefs[i], coefs[i + 1]
        pred = _clip(_call(denoise, x, t, space), x, a_t, s_t, clip_x0)
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
    coefs = _grid_coefs(schedule, grid_up)
    for i, (s, t) in enumerate(steps):
        (a_s, s_s), (a_t, s_t) = coefs[i], coefs[i + 1]
        k = s_s - a_s * s_t / a_t
        x_s = x
        eps = _call(denoise, x_s, t, space).eps
        x_t = (a_t / a_s) * (x_s - k * eps)
        for _ in range(fixed_point_iters):
            eps = _call(denoise, x_t, t, space).eps
            x_t = (a_t / a_s) * (x_s - k * eps)
        x = space.project(x_t)
        if callback is not None:
            callback({"i": i, "t": float(s), "t_next": float(t), "x": x, "x0": None})
    return x


# ---------------------------------------------------------------------------- external models
PREDICTIONS = ("eps", "x0", "v")
TIMESTEPS = ("index", "time")


def external_denoiser(model: Callable, schedule: Schedule, *, prediction: str = "eps",
                      timesteps: str | Callable[[Tensor], Tensor] = "index") -> Callable[[Tensor, Tensor], Prediction]:
    """A sampler-ready ``denoise(x, t) -> Prediction`` around an external network ``model(x, k)``
    (a diffusers UNet, a plain function...), so every sampler here can drive it.

    ``timesteps`` says what ``model`` is given for schedule time ``t`` (float64 ``[B]``):

    * ``"index"`` (diffusers / the DDPM code): ``k = t T - 1``, the 0-based index into the
      discrete schedule's ``alphas_cumprod`` (our time ``n / T`` is diffusers' timestep ``n - 1``),
      as ``int64`` when every ``k`` is whole (samplers on the model's own grid), else float
      (log-SNR grids query between the nodes, as DPM-Solver's discrete wrapper does);
    * ``"time"``: ``t`` itself, in the model's dtype;
    * a callable ``t -> Tensor``: any other convention (e.g. ``lambda t: 999 * t``).

    ``prediction`` says what it returns (diffusers' ``prediction_type``), with
    ``x_t = alpha x0 + sigma eps``: ``eps``; ``x0`` (``sample``); ``v = alpha eps - sigma x0``
    (Salimans & Ho 2022), turned into ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``,
    ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``. The model's output may be a tensor, a
    tuple (its first item) or an object with ``.sample`` (diffusers' ``UNet2DOutput``).
    Use :class:`~diffuse.core.schedule.TableSchedule` to build ``schedule`` from the model's own
    ``alphas_cumprod``.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    if not callable(timesteps) and timesteps not in TIMESTEPS:
        raise ValueError(f"unknown timestep convention {timesteps!r}; expected one of {TIMESTEPS} or a callable")
    T = schedule.num_steps
    if timesteps == "index" and not T:
        raise ValueError(f"the 'index' timestep convention needs a discrete schedule (num_steps = T); {schedule!r} is continuous")

    def model_time(t: Tensor, like: Tensor) -> Tensor:
        if callable(timesteps):
            return timesteps(t)
        if timesteps == "time":
            return t.to(like.dtype)
        k = t * T - 1.0
        kr = k.round()
        return kr.long() if bool(((k - kr).abs() < 1e-6).all()) else k.to(like.dtype)

    def denoise(x: Tensor, t: Tensor) -> Prediction:
        out = model(x, model_time(t, x))
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        a, s = schedule.alpha_sigma(t.to(torch.float64))
        if prediction == "eps":
            eps = out
            x0 = x * _expand(1.0 / a, x) - out * _expand(s / a, x)
        elif prediction == "x0":
            x0 = out
            eps = (x - out * _expand(a, x)) * _expand(1.0 / s, x)
        else:
            n = a * a + s * s
            x0 = x * _expand(a / n, x) - out * _expand(s / n, x)
            eps = x * _expand(s / n, x) + out * _expand(a / n, x)
        return Prediction(x0, eps)
    return denoise


def _expand(c: Tensor, like: Tensor) -> Tensor:
    """A per-sample float64 coefficient ``[B]`` broadcast against a dense ``like`` ``[B, ...]``."""
    return c.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str) -> Callable[..., Tensor]:
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


#: the arguments every sampler gets from the caller, not from the user
RESERVED_OPTIONS = ("schedule", "space", "generator", "callback", "stats")

#: ranges / choices of user options beyond their types (keyed by option name; the same name means
#: the same thing in every sampler); checked by :func:`check_sampler_options`
OPTION_LIMITS: dict[str, Any] = {}


def _limits():
    from .config import NON_NEGATIVE, POSITIVE, UNIT, OneOf

    if not OPTION_LIMITS:
        OPTION_LIMITS.update({"eta": UNIT, "clip_x0": POSITIVE, "variance": OneOf(("posterior", "large")),
                              "fixed_point_iters": NON_NEGATIVE})
    return OPTION_LIMITS


def sampler_options(name: str) -> list[str]:
    """The options a user may give sampler ``name`` (its keyword-only arguments)."""
    params = inspect.signature(get_sampler(name)).parameters
    return sorted(n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n not in RESERVED_OPTIONS)


def check_sampler_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check user options of sampler ``name``: known names, types from the signature (a number
    where the default is a number, a bool for a bool...), and :data:`OPTION_LIMITS`. Returns
    ``options``; a ``ValueError`` naming the option otherwise."""
    from .config import check_kwargs

    fn = get_sampler(name)
    user = {k: v for k, v in options.items() if k not in RESERVED_OPTIONS}
    allowed = sampler_options(name)
    unknown = sorted(set(user) - set(allowed))
    if unknown:
        raise ValueError(f"sampler {name!r} has no option {unknown[0]!r}; it takes: {', '.join(allowed) or 'none'}")
    check_kwargs(fn, user, f"sampler {name!r} option", limits=_limits(), skip=RESERVED_OPTIONS, sep=" ")
    if "s_tmin" in user or "s_tmax" in user:
        params = inspect.signature(fn).parameters
        lo = user.get("s_tmin", params["s_tmin"].default)
        hi = user.get("s_tmax", params["s_tmax"].default)
        if lo > hi:
            raise ValueError(f"sampler option s_tmin ({lo}) must not exceed s_tmax ({hi})")
    return options
