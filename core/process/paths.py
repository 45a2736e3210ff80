"""Flow paths: the interpolants of flow matching and rectified flow, as ``(alpha_t, sigma_t)`` schedules.

A flow path is a curve ``x_tau = a(tau) x_0 + b(tau) eps`` from data (``tau = 0``) to noise
(``tau = 1``): the linear path of rectified flow and SD3 (``a = 1 - tau``, ``b = tau``) and the
cosine path (``a = cos(pi tau / 2)``, ``b = sin(pi tau / 2)``). :class:`FlowSchedule` makes one a
:class:`~diffuse.core.process.schedule.Schedule`, with SD3's time shift, so every sampler and
solver runs on it unchanged (solvers never ask which path they run on) and the velocity is one
more parameterization (``core.process.parameterization.FlowParam``).
"""

from __future__ import annotations

import math
import torch
from torch import Tensor

from ..errors import UserInputError
from .schedule import Schedule, _as64

__all__ = ["FlowPath", "LinearPath", "CosinePath", "FLOW_PATHS", "get_flow_path", "FlowSchedule", "shift_time"]

_F64 = torch.float64


def shift_time(t: Tensor | float, shift: float) -> Tensor:
    """SD3's resolution-dependent time shift (Esser et al. 2024, eq. 23):
    ``t' = s t / (1 + (s - 1) t)`` (``s = 1``: identity; ``s > 1`` spends more time at high noise)."""
    t = _as64(t)
    return shift * t / (1.0 + (shift - 1.0) * t)


def _unshift_time(tau: Tensor, shift: float) -> Tensor:
    """Inverse of :func:`shift_time`: ``t = t' / (s - (s - 1) t')``."""
    return tau / (shift - (shift - 1.0) * tau)


class FlowPath:
    """An affine interpolation path ``x_tau = a(tau) x_0 + b(tau) eps`` on ``tau in [0, 1]``
    with ``a(0) = 1, b(0) = 0`` (data) and ``a(1) = 0, b(1) = 1`` (pure noise).

    Besides ``alpha_sigma(tau)`` a path gives its velocity coefficients as functions of the
    point ``(alpha, sigma)`` on it (``derivatives``: ``(da/dtau, db/dtau)``), its own time of a
    point (``tau``, scale-invariant: ``(c alpha, c sigma)`` has the same time) and of a log-SNR
    (``tau_from_log_snr``). The velocity parameterization and the flow schedule share these."""

    name = ""

    def alpha_sigma(self, tau: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def derivatives(self, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def tau(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def tau_from_log_snr(self, log_snr: Tensor) -> Tensor:
        raise NotImplementedError


class LinearPath(FlowPath):
    """Rectified flow / conditional flow matching (Liu et al. 2023; Lipman et al. 2023):
    ``a = 1 - tau``, ``b = tau``; velocity ``eps - x_0``."""

    name = "linear"

    def alpha_sigma(self, tau):
        return 1.0 - tau, tau.clone()

    def derivatives(self, alpha, sigma):
        return -torch.ones_like(alpha), torch.ones_like(sigma)

    def tau(self, alpha, sigma):
        return sigma / (alpha + sigma)

    def tau_from_log_snr(self, log_snr):
        return torch.sigmoid(-0.5 * _as64(log_snr))      # alpha / sigma = exp(lambda / 2)


class CosinePath(FlowPath):
    """The VP cosine path ``a = cos(pi tau / 2)``, ``b = sin(pi tau / 2)`` (a trigonometric
    interpolant; its velocity is ``pi / 2`` times Salimans & Ho's ``v = alpha eps - sigma x_0``)."""

    name = "cosine"

    def alpha_sigma(self, tau):
        ang = 0.5 * math.pi * tau
        alpha = torch.where(tau >= 1.0, torch.zeros_like(tau), torch.cos(ang))   # exactly 0 at tau = 1
        return alpha, torch.sin(ang)

    def derivatives(self, alpha, sigma):
        return -0.5 * math.pi * sigma, 0.5 * math.pi * alpha

    def tau(self, alpha, sigma):
        return torch.atan2(sigma, alpha) * (2.0 / math.pi)

    def tau_from_log_snr(self, log_snr):
        return torch.atan(torch.exp(-0.5 * _as64(log_snr))) * (2.0 / math.pi)


FLOW_PATHS: dict[str, FlowPath] = {"linear": LinearPath(), "cosine": CosinePath()}


def get_flow_path(name: str) -> FlowPath:
    if not isinstance(name, str) or name not in FLOW_PATHS:
        raise UserInputError(f"unknown flow path {name!r}; expected one of {sorted(FLOW_PATHS)}")
    return FLOW_PATHS[name]


class FlowSchedule(Schedule):
    """A flow-matching path as a schedule: ``(alpha_t, sigma_t) = path(shift(t))``.

    ``path="linear"`` is the rectified-flow / flow-matching interpolant ``x_t = (1 - t) x_0 + t eps``
    (alpha = 1 - t, sigma = t); ``path="cosine"`` the trigonometric one. ``shift`` is SD3's time
    shift ``t' = s t / (1 + (s - 1) t)`` (Esser et al. 2024, section 5.3.2), and this is the ONE
    place it is applied: training times, sampling grids (uniform in ``t`` by default) and every
    sampler see the schedule's clock ``t``, the path runs on ``t'``. The network's noise input is
    the path time ``t'`` (``FlowParam``), so a model may be sampled with another shift.

    The ends are exact: ``sigma_0 = 0`` and ``alpha_1 = 0`` (pure noise, log-SNR ``-inf``; the
    prior at ``t = 1`` is ``N(0, I)``). Samplers that divide by ``alpha`` (the SDE / PF-ODE
    samplers in ``t``, EDM's variables) cannot start there; DDIM, DPM-Solver++ and the ``flow_*``
    samplers can.
    """

    variance_preserving = False
    default_spacing = "uniform"

    def __init__(self, path: str = "linear", shift: float = 1.0) -> None:
        self.path = get_flow_path(path)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < math.inf:
            raise UserInputError(f"the time shift must be a positive number, got {shift!r}")
        self.shift = float(shift)
        self.num_steps = None

    def path_time(self, t: Tensor | float) -> Tensor:
        """The path's time ``t' = shift(t)`` in float64."""
        t = _as64(t).clamp(0.0, 1.0)
        return t if self.shift == 1.0 else shift_time(t, self.shift)

    def alpha_sigma(self, t):
        return self.path.alpha_sigma(self.path_time(t))

    def t_from_log_snr(self, log_snr, iters: int = 0):
        tau = self.path.tau_from_log_snr(_as64(log_snr)).clamp(0.0, 1.0)
        return tau if self.shift == 1.0 else _unshift_time(tau, self.shift)

    def sde_coefficients(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Closed-form ``f = d log alpha / dt`` and ``g^2 = d sigma^2 / dt - 2 f sigma^2`` (chain rule
        through the shift); ``f = -inf``, ``g^2 = inf`` at ``alpha = 0`` (no SDE starts from there)."""
        t = _as64(t).clamp(0.0, 1.0)
        dtau = self.shift / (1.0 + (self.shift - 1.0) * t) ** 2
        alpha, sigma = self.alpha_sigma(t)
        da, ds = self.path.derivatives(alpha, sigma)
        f = torch.where(alpha > 0, da * dtau / alpha.clamp_min(1e-300), torch.full_like(alpha, -math.inf))
        g2 = torch.where(alpha > 0, 2.0 * sigma * ds * dtau - 2.0 * f * sigma * sigma, torch.full_like(alpha, math.inf))
        return f, g2

    def sample_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training times ``t ~ U[0, 1]`` (flow training picks its own sampler: ``core.process.diffusion``)."""
        return torch.rand(n, generator=generator, device=device, dtype=_F64)

    def config(self):
        return {"kind": "flow", "path": self.path.name, "shift": self.shift}
