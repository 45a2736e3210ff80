"""Exact log-likelihood under the probability-flow ODE (Song et al. 2021, section 4.3 and
appendix D.2; Chen et al. 2018 / Grathwohl et al. 2019 for the instantaneous change of variables).

Along the probability-flow ODE ``dx/dt = v(x, t) = f(t) x + g(t)^2 eps(x, t) / (2 sigma_t)``
the density obeys ``d log p_t(x(t)) / dt = -div v(x(t), t)``, so

    log p_{t_min}(x) = log p_T(x(T)) + int_{t_min}^{T} div v(x(t), t) dt.

It is integrated in Karras et al.'s variables ``x~ = x / alpha_t``, ``sigma = sigma_t / alpha_t``
(the same ODE, reparameterised: ``dx~ / dsigma = eps``, ``d log p~ / dsigma = -div_x~ eps``,
``log p_t(x) = log p~_sigma(x~) - dof log alpha_t``), where it is smooth for every schedule,
including the piecewise-linear interpolation of a discrete DDPM chain. ``x`` and the running integral are
solved together with scipy's ``solve_ivp`` (RK45). The divergence is exact (one
vector-Jacobian product per coordinate of a sample, for small dimension) or Hutchinson's
unbiased estimate ``E[v^T J v]`` with Rademacher or Gaussian probes drawn through the Space
(held fixed along the trajectory). ``log p_T`` is the prior through the Space
(:meth:`diffuse.core.process.sde.SDE.prior_logp`), so molecules use the zero centre-of-mass subspace
and its ``dof``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .schedule import Schedule
from .sde import SDE
from ..data.space import GeneratorLike, Space
from ..errors import UserInputError

__all__ = ["log_likelihood", "batch_log_likelihood", "divergence", "bits_per_dim"]

_F64 = torch.float64
EXACT_TRACE_MAX_DOF = 16
PURE_NOISE_RATIO = 1e4


def bits_per_dim(nll_nats: Tensor, dof: Tensor, bins: int | None = None, data_range: float = 2.0) -> Tensor:
    """``nll / (dof ln 2)``; with ``bins`` (e.g. 256 for 8-bit images scaled to a range of width
    ``data_range``) add the discretisation offset ``log2(bins / data_range)`` (7 bits for 256
    levels on ``[-1, 1]``, as in Song et al.'s code), which turns a density on dequantised
    data into bits per discrete value."""
    bpd = nll_nats.to(_F64) / (dof.to(_F64) * math.log(2.0))
    if bins is not None:
        bpd = bpd + math.log2(bins / data_range)
    return bpd


def _slots(x: Tensor, space: Space):
    """One-hot probes whose per-sample sum over ``j`` is the identity: one per coordinate of a
    sample when the first axis holds the samples (dense data), else one per element."""
    if space.batch_size(x) == x.shape[0]:
        n = x[0].numel()
        for j in range(n):
            e = torch.zeros(x.shape[0], n, dtype=x.dtype, device=x.device)
            e[:, j] = 1
            yield e.reshape(x.shape)
    else:
        for j in range(x.numel()):
            e = torch.zeros(x.numel(), dtype=x.dtype, device=x.device)
            e[j] = 1
            yield e.reshape(x.shape)


def divergence(fn, x: Tensor, space: Space, probes: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``(fn(x), div fn(x))`` per sample on the Space's subspace: ``tr(J P)``.

    ``probes=None``: exact, ``sum_j e_j^T J P e_j`` over one-hot ``e_j``; otherwise
    Hutchinson's estimate, the mean of ``v^T J v`` over the given probes (already in the subspace).
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        div = torch.zeros(space.batch_size(x), dtype=_F64, device=x.device)
        vecs = list(_slots(x, space)) if probes is None else probes
        for k, e in enumerate(vecs):
            pe = space.project(e) if probes is None else e
            (row,) = torch.autograd.grad(out, xg, grad_outputs=e if probes is None else pe,
                                         retain_graph=k + 1 < len(vecs))
            div = div + space.sum(row * pe).to(_F64)
        if probes is not None:
            div = div / len(probes)
    return out.detach(), div


def log_likelihood(denoise, x0: Tensor, schedule: Schedule, space: Space, *,
                   exact_trace: bool | None = None, hutchinson_samples: int = 1, probe: str = "rademacher",
                   rtol: float = 1e-5, atol: float = 1e-5, t_min: float | None = None, t_max: float | None = None,
                   generator: GeneratorLike = None, bins: int | None = None, data_range: float = 2.0,
                   method: str = "RK45") -> dict[str, Any]:
    """Negative log-likelihood of ``x0`` under the probability-flow ODE of ``denoise``.

    ``denoise(x, t) -> Prediction`` must be differentiable in ``x``. The ODE runs from
    ``t_min`` (default ``schedule.t_min``, or 1e-5 for a continuous schedule starting at 0; on a
    schedule whose noise level jumps to 0 at ``t = 0``, as EDM's and VE's, at least its ``t_min``)
    to ``t_max`` (default 1); the result is ``-log p_{t_min}(x0)``, which tends to
    ``-log p_0(x0)`` as ``t_min -> 0``; on a schedule with ``alpha = 0`` at ``t_max`` (a flow path)
    the ODE stops where ``sigma / alpha = 1e4``. ``exact_trace=None`` picks the exact trace when a
    sample has at most 16 degrees of freedom, else Hutchinson with ``hutchinson_samples``
    probes (``"rademacher"`` or ``"gaussian"``).

    Returns a dict: ``nll_nats`` (per sample; nats per molecule for graphs), ``bits_per_dim``
    (per sample, see :func:`bits_per_dim`), ``nfe`` (ODE right-hand-side evaluations),
    ``prior_logp``, ``delta_logp`` (the divergence integral) and ``x_T`` (the ODE endpoint).
    """
    if probe not in ("rademacher", "gaussian"):
        raise UserInputError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
    sde = SDE(schedule)
    lo = float(t_min) if t_min is not None else (schedule.t_min or 1e-5)
    if float(schedule.alpha_sigma(torch.tensor(lo, dtype=_F64))[1]) == 0.0 and schedule.t_min > lo:
        lo = schedule.t_min        # a schedule whose noise level jumps to 0 at t = 0 (EDM, VE): its lowest level
    hi = float(t_max) if t_max is not None else schedule.t_max
    if float(schedule.alpha_sigma(torch.tensor(hi, dtype=_F64))[0]) == 0.0:
        # a flow path ends in pure noise (alpha_1 = 0, sigma / alpha infinite): stop where
        # sigma / alpha = 1e4, whose marginal differs from the prior by O(1e-4) per dimension
        hi = min(hi, float(schedule.t_from_sigma_ratio(torch.tensor(PURE_NOISE_RATIO, dtype=_F64))))
    x0 = space.project(x0.detach())
    dof = space.dof(x0).to(_F64)
    if exact_trace is None:
        exact_trace = bool(dof.max() <= EXACT_TRACE_MAX_DOF)
    probes = None
    if not exact_trace:
        probes = []
        for _ in range(hutchinson_samples):
            z = space.noise(x0, generator)
            probes.append(z if probe == "gaussian" else space.project(torch.sign(z)))
    shape, dtype, device = x0.shape, x0.dtype, x0.device
    B = space.batch_size(x0)
    n = x0.numel()
    nfe = 0

    a_lo, s_lo = (float(c) for c in schedule.alpha_sigma(torch.tensor(lo, dtype=_F64)))
    a_hi, s_hi = (float(c) for c in schedule.alpha_sigma(torch.tensor(hi, dtype=_F64)))

    def rhs(sig: float, y: np.ndarray) -> np.ndarray:
        # the ODE in x~ = x / alpha_t, sigma = sigma_t / alpha_t: dx~/dsigma = eps(alpha x~, t)
        nonlocal nfe
        nfe += 1
        t = schedule.t_from_sigma_ratio(torch.tensor(sig, dtype=_F64))
        a = float(schedule.alpha_sigma(t)[0])
        tv = torch.full((B,), float(t), dtype=_F64, device=device)
        xs = torch.from_numpy(y[:n]).reshape(shape).to(device=device, dtype=dtype)
        eps, div = divergence(lambda z: denoise(a * z, tv).eps, xs, space, probes)
        return np.concatenate([eps.to(_F64).reshape(-1).cpu().numpy(), div.cpu().numpy()])

    y0 = np.concatenate([(x0 / a_lo).to(_F64).reshape(-1).cpu().numpy(), np.zeros(B)])
    sol = solve_ivp_checked(rhs, s_lo / a_lo, s_hi / a_hi, y0, method, rtol, atol)
    x_T = a_hi * torch.from_numpy(sol[:n]).reshape(shape).to(device=device, dtype=dtype)
    # log p_t(x) = log p~_sigma(x / alpha_t) - dof log alpha_t
    delta = torch.from_numpy(sol[n:]).to(device) + dof * (math.log(a_hi) - math.log(a_lo))
    prior = sde.prior_logp(x_T, space)
    nll = -(prior + delta)
    return {"nll_nats": nll, "bits_per_dim": bits_per_dim(nll, dof, bins, data_range), "nfe": nfe,
            "prior_logp": prior, "delta_logp": delta, "x_T": x_T, "t_min": lo, "exact_trace": exact_trace}


def batch_log_likelihood(denoiser, batch, **options: Any) -> dict[str, Any]:
    """:func:`log_likelihood` of a :class:`~diffuse.core.data.domain.Batch` under a trained
    ``Denoiser`` (its schedule, the batch's Space and condition)."""
    return log_likelihood(denoiser.bind(batch.space, batch.cond), batch.x, denoiser.schedule, batch.space, **options)


def solve_ivp_checked(rhs, t0: float, t1: float, y0: np.ndarray, method: str, rtol: float, atol: float) -> np.ndarray:
    from scipy.integrate import solve_ivp
    sol = solve_ivp(rhs, (t0, t1), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solver failed: {sol.message}")
    return sol.y[:, -1]
