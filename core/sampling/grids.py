"""Time grids: the descending grids every sampler steps along, and their spacings."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from ..errors import UserInputError
from ..process.schedule import Schedule

__all__ = ["time_grid", "jump_logsnr_grid", "check_grid", "SPACINGS", "AUTO_MIN_STEPS", "JUMP", "JUMP_FEW", "LOGSNR_TOP",
           "JUMP_SIGMA", "END_SIGMA"]


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
        raise UserInputError(f"the number of sampling steps must be a positive integer, got {steps!r}")
    if spacing not in SPACINGS:
        raise UserInputError(f"unknown time spacing {spacing!r}; expected one of {SPACINGS}")
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
        raise UserInputError(f"asked for {steps} steps but the model was trained with T={T}")
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
            raise UserInputError(f"karras spacing needs alpha_t > 0 at t_max={hi:g} (pure noise there: log-SNR -inf); "
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
            raise UserInputError(f"logsnr spacing needs alpha_t > 0 at t_max={hi:g} (log-SNR -inf there); "
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


def jump_logsnr_grid(schedule: Schedule, steps: int, t_jump: float | None = None, t_min: float | None = None,
                     final: float | None = 0.0) -> Tensor:
    """A descending grid with ``steps`` evaluations: one long first step from ``t_max``, then
    uniform in log-SNR down to ``t_min`` (default ``schedule.t_min``), then ``final``.

    With ``t_jump=None`` (default) this is ``time_grid(schedule, steps, "jump_logsnr")``: the first
    step is :data:`JUMP` times the log-SNR step of the others, so it
    shrinks as ``steps`` grows. With ``t_jump`` given the first step always ends at ``t_jump``
    (then ``steps - 1`` times uniform in log-SNR from ``t_jump``); that grid does not refine its
    first step, so it stops improving as ``steps`` grows.
    """
    if t_jump is None:
        return time_grid(schedule, steps, "jump_logsnr", t_min=t_min, final=final)
    if steps < 2:
        return time_grid(schedule, 1, "logsnr", final=final)
    inner = time_grid(schedule, steps - 1, "logsnr", t_max=t_jump, t_min=t_min, final=final)
    return torch.cat([torch.tensor([schedule.t_max], dtype=torch.float64), inner])


def check_grid(grid: Any, nfe: int | None = None) -> Tensor:
    """``grid`` as a float64 1-D tensor if it is a valid sampling grid: finite, in ``[0, 1]``,
    strictly decreasing, with ``nfe + 1`` entries when ``nfe`` is given; a ``ValueError`` otherwise."""
    try:
        g = torch.as_tensor(grid, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise UserInputError(f"a time grid must be a list of numbers, got {grid!r}") from None
    if g.ndim != 1 or g.numel() < 2:
        raise UserInputError(f"a time grid needs at least two times in a flat list, got shape {list(g.shape)}")
    if nfe is not None and g.numel() != nfe + 1:
        raise UserInputError(f"the time grid has {g.numel() - 1} steps, expected {nfe}")
    if not bool(torch.isfinite(g).all()) or float(g.min()) < 0 or float(g.max()) > 1:
        raise UserInputError("the time grid must hold finite times in [0, 1]")
    if not bool((g[1:] < g[:-1]).all()):
        raise UserInputError("the time grid must be strictly decreasing")
    return g
