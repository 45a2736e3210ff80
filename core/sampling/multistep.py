"""Multistep log-SNR solvers: DPM-Solver++(2M) / (3M) / (2M SDE) (Lu et al. 2022) and UniPC
(Zhao et al. 2023), in data prediction.

They lower their order during warm-up, on the last steps of short grids (``lower_order_final``)
and after a step more than :data:`MAX_STEP_RATIO` times longer in log-SNR than the previous one,
so every grid works with few steps.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..errors import UserInputError
from ..process.schedule import Schedule
from .common import Callback, call, grid_coefs, per_sample_where, report

__all__ = ["dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "MAX_STEP_RATIO", "LOWER_ORDER_FINAL_BELOW", "MIN_STEP"]


#: steps shorter than this in log-SNR are skipped by the multistep solvers
MIN_STEP = 1e-9


def _multistep_steps(schedule: Schedule, grid: Tensor) -> Iterator[tuple]:
    """The steps of a multistep log-SNR solver: ``(i, t, s, a_t, s_t, a_s, s_s, h)`` with
    ``h = lambda_s - lambda_t`` (``lambda = log(alpha / sigma)``; ``inf`` when ``sigma_s = 0``).
    Coefficients are computed once per call; a repeated time or a step shorter than
    :data:`MIN_STEP` in log-SNR (a zero-length step up to rounding) is skipped."""
    coefs = grid_coefs(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        if float(s) == float(t):
            continue
        (a_t, s_t), (a_s, s_s) = coefs[i], coefs[i + 1]
        # h = inf on a step from pure noise (alpha_t = 0, a flow path at t = 1) or to clean data
        h = math.inf if s_s == 0.0 or a_t == 0.0 else math.log(a_s / s_s) - math.log(a_t / s_t)
        if abs(h) < MIN_STEP:      # rounding-level step (e.g. a grid ending twice at sigma_min): nothing to do,
            continue               # and the phi functions of higher orders cancel catastrophically there
        yield i, t, s, a_t, s_t, a_s, s_s, h



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
        pred = call(denoise, x, t, space)
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
        report(callback, i, t, s, x, pred.x0)
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
    return per_sample_where(space, ok, x_low + correction, x_low)



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
        pred = call(denoise, x, t, space)
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
        report(callback, i, t, s, x, pred.x0)
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
        raise UserInputError(f"the UniPC order must be 1, 2 or 3, got {order!r}")
    steps = list(_multistep_steps(schedule, grid))
    hist: list[tuple[float, Tensor]] = []      # (lambda, x0) newest last
    last: tuple | None = None                  # (x_p, lambda_p, sigma_p, order used) of the previous predictor
    for j, (i, t, s, a_t, s_t, a_s, s_s, h) in enumerate(steps):
        pred = call(denoise, x, t, space)
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
        report(callback, i, t, s, x, pred.x0)
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


