"""What the network predicts: the preconditioning scalings and exact conversions between views.

One law covers every parameterization (Karras et al. 2022, eq. 7; k-diffusion's
``get_scalings``): with ``x_t = alpha x_0 + sigma eps`` (any alpha, sigma > 0) the denoiser is

    x0_hat = c_skip x_t + c_out F(c_in x_t, c_noise),

and each parameterization is just its four coefficients of the noise level (plus its time
scaling ``c_noise``). The network's training target is ``F* = (x_0 - c_skip x_t) / c_out`` and
``|x0_hat - x_0|^2 = c_out^2 |F - F*|^2``.

=========== ===================== ================= ========== ============================
prediction  c_skip                c_out             c_in       c_noise / target F*
=========== ===================== ================= ========== ============================
eps         ``1 / alpha``         ``-sigma/alpha``  1          ``t * time_scale`` / ``eps``
x0          0                     1                 1          ``t * time_scale`` / ``x_0``
v           ``alpha / n``         ``-sigma / n``    1          ``t * time_scale`` /
                                                                ``alpha eps - sigma x_0``
edm         ``sd^2 / (s^2+sd^2)   ``s sd /          ``1 / (alpha ``ln(s) / 4`` / Karras eq. 8
            / alpha``             sqrt(s^2+sd^2)``  sqrt(s^2+sd^2))``
flow        ``sigma' / d``        ``-sigma / d``    1          ``tau * time_scale`` /
                                                                ``alpha' x_0 + sigma' eps``
=========== ===================== ================= ========== ============================

flow (the flow-matching velocity, not Salimans & Ho's v): ``F* = d x_tau / d tau`` along a
:class:`~diffuse.core.process.paths.FlowPath` with ``alpha' = da/dtau``, ``sigma' = db/dtau`` and
``d = alpha sigma' - sigma alpha'``; its eps view is ``e_skip = -alpha' / d``, ``e_out = alpha / d``.
For the linear path ``d = alpha + sigma = 1``: ``x0_hat = x_t - t v``, ``eps_hat = x_t + (1 - t) v``,
finite at both ends (``alpha = 0`` and ``sigma = 0``). ``tau`` is the path's own time of
``(alpha, sigma)`` (after any shift), so the network never sees the schedule's clock.

with ``n = alpha^2 + sigma^2`` (1 for VP schedules; v: Salimans & Ho 2022), and for EDM
(Karras table 1 on ``x~ = x_t / alpha``) ``s = sigma / alpha`` the noise level and
``sd = sigma_data``. The eps view is ``eps_hat = (x_t - alpha x0_hat) / sigma
= e_skip x_t + e_out F`` with ``e_skip = (1 - alpha c_skip) / sigma``, ``e_out = -alpha c_out / sigma``
(exactly ``0, 1`` for eps-prediction). The score of the noisy marginal is ``-eps / sigma``.

Each class also keeps its closed forms (``target``, ``to_prediction``) as reference conversions;
tests check they equal what the scalings give. ``x0_mse_factor = 1 / c_out^2`` relates the squared
error on ``F`` to the x0 error (loss weightings such as min-SNR-gamma use it):
``snr`` for eps, 1 for x0, ``(alpha^2 + sigma^2)(snr + 1)`` for v, EDM's ``lambda(sigma)`` for edm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from ..errors import UserInputError
from .paths import get_flow_path

__all__ = ["Prediction", "Scalings", "Parameterization", "EpsParam", "X0Param", "VParam", "EDMParam", "FlowParam",
           "edm_scalings", "edm_weight", "make_parameterization", "PARAMETERIZATIONS"]

_F64 = torch.float64


class Prediction(NamedTuple):
    """A denoiser's output in both views: the clean-data estimate and the noise estimate."""

    x0: Tensor
    eps: Tensor


class Scalings(NamedTuple):
    """Preconditioning coefficients of one noise level (per sample, or broadcast per element).

    ``x0_hat = c_skip x_t + c_out F(c_in x_t, c_noise)``, ``eps_hat = e_skip x_t + e_out F``."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor
    e_skip: Tensor
    e_out: Tensor


def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of Karras et al. 2022, table 1, on ``x~`` (float64)."""
    sigma = torch.as_tensor(sigma, dtype=_F64)
    sd2 = sigma_data ** 2
    norm = sigma ** 2 + sd2
    return sd2 / norm, sigma * sigma_data / torch.sqrt(norm), 1.0 / torch.sqrt(norm), torch.log(sigma) / 4.0


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM's loss weighting ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
    sigma = torch.as_tensor(sigma, dtype=_F64)
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


class Parameterization:
    """Base class: a parameterization is its :meth:`scalings`; everything else follows from them.

    ``alpha``, ``sigma`` (and ``t``) may be per-sample ``[B]`` or already broadcast to ``x_t``."""

    name: str = ""

    def coefficients(self, alpha: Tensor, sigma: Tensor, t: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(c_skip, c_out, c_in, c_noise)``; ``c_noise`` needs ``t`` only for time-conditioned nets."""
        raise NotImplementedError

    def scalings(self, alpha: Tensor, sigma: Tensor, t: Tensor | None = None) -> Scalings:
        c_skip, c_out, c_in, c_noise = self.coefficients(alpha, sigma, t)
        e_skip, e_out = self.eps_coefficients(alpha, sigma, c_skip, c_out)
        return Scalings(c_skip, c_out, c_in, c_noise, e_skip, e_out)

    def eps_coefficients(self, alpha, sigma, c_skip, c_out) -> tuple[Tensor, Tensor]:
        """``(e_skip, e_out)`` with ``eps_hat = (x_t - alpha x0_hat) / sigma = e_skip x_t + e_out F``."""
        return (1.0 - alpha * c_skip) / sigma, -alpha * c_out / sigma

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The network's target ``F* = (x_0 - c_skip x_t) / c_out`` with ``x_t = alpha x_0 + sigma eps``,
        written as ``((1 - c_skip alpha) / c_out) x_0 - (c_skip sigma / c_out) eps`` (no cancellation)."""
        c_skip, c_out, _, _ = self.coefficients(alpha, sigma)
        return ((1.0 - c_skip * alpha) / c_out) * x0 - (c_skip * sigma / c_out) * eps

    def to_prediction(self, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
        """``(x0_hat, eps_hat)`` from the network output ``F`` (coefficients broadcast like ``x_t``)."""
        sc = self.scalings(alpha, sigma)
        return Prediction(sc.c_skip * x_t + sc.c_out * out, sc.e_skip * x_t + sc.e_out * out)

    def from_prediction(self, pred: Prediction, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`to_prediction`: the network output that gives ``pred``."""
        c_skip, c_out, _, _ = self.coefficients(alpha, sigma)
        return (pred.x0 - c_skip * x_t) / c_out

    def x0_mse_factor(self, snr: Tensor, norm: Tensor | float = 1.0) -> Tensor:
        """``|F - F*|^2 / |x0 - x0_hat|^2 = 1 / c_out^2`` from the SNR and ``norm = alpha^2 + sigma^2``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _TimeConditioned(Parameterization):
    """eps / x0 / v: the network sees ``x_t`` itself and ``c_noise = t * time_scale`` (the DDPM
    convention of feeding the step index 0..T to a sinusoidal embedding)."""

    def __init__(self, time_scale: float = 1000.0) -> None:
        self.time_scale = float(time_scale)

    def _noise(self, alpha: Tensor, t: Tensor | None) -> Tensor:
        return alpha * 0 if t is None else t * self.time_scale

    def __repr__(self) -> str:
        return f"{type(self).__name__}(time_scale={self.time_scale:g})"


class EpsParam(_TimeConditioned):
    name = "eps"

    def coefficients(self, alpha, sigma, t=None):
        return 1.0 / alpha, -sigma / alpha, torch.ones_like(alpha), self._noise(alpha, t)

    def eps_coefficients(self, alpha, sigma, c_skip, c_out):
        return torch.zeros_like(alpha), torch.ones_like(alpha)      # eps_hat = F exactly

    def target(self, x0, eps, alpha, sigma):
        return eps

    def to_prediction(self, out, x_t, alpha, sigma):
        return Prediction((x_t - sigma * out) / alpha, out)

    def x0_mse_factor(self, snr, norm=1.0):
        return snr


class X0Param(_TimeConditioned):
    name = "x0"

    def coefficients(self, alpha, sigma, t=None):
        return torch.zeros_like(alpha), torch.ones_like(alpha), torch.ones_like(alpha), self._noise(alpha, t)

    def target(self, x0, eps, alpha, sigma):
        return x0

    def to_prediction(self, out, x_t, alpha, sigma):
        return Prediction(out, (x_t - alpha * out) / sigma)

    def x0_mse_factor(self, snr, norm=1.0):
        return snr.new_ones(snr.shape)


class VParam(_TimeConditioned):
    name = "v"

    def coefficients(self, alpha, sigma, t=None):
        norm = alpha * alpha + sigma * sigma
        return alpha / norm, -sigma / norm, torch.ones_like(alpha), self._noise(alpha, t)

    def eps_coefficients(self, alpha, sigma, c_skip, c_out):
        norm = alpha * alpha + sigma * sigma
        return sigma / norm, alpha / norm                              # = the generic form, no cancellation

    def target(self, x0, eps, alpha, sigma):
        return alpha * eps - sigma * x0

    def to_prediction(self, out, x_t, alpha, sigma):
        norm = alpha * alpha + sigma * sigma
        return Prediction((alpha * x_t - sigma * out) / norm, (sigma * x_t + alpha * out) / norm)

    def x0_mse_factor(self, snr, norm=1.0):
        # v - v_hat = -((alpha^2 + sigma^2) / sigma) (x0 - x0_hat)
        return norm * (snr + 1.0)


class EDMParam(Parameterization):
    """EDM preconditioning (Karras et al. 2022, table 1) on ``x~ = x_t / alpha`` (so VP schedules
    work too: ``x~ = x_0 + s eps`` with ``s = sigma / alpha``). With the uniform weighting the loss
    is EDM's ``lambda(s) |D - x_0|^2 = |F - F*|^2`` (eq. 8)."""

    name = "edm"

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = float(sigma_data)

    def coefficients(self, alpha, sigma, t=None):
        c_skip, c_out, c_in, c_noise = edm_scalings_like(sigma / alpha, self.sigma_data)
        return c_skip / alpha, c_out, c_in / alpha, c_noise

    def x0_mse_factor(self, snr, norm=1.0):
        s2, sd2 = 1.0 / snr, self.sigma_data ** 2                    # 1 / c_out^2 = lambda(sigma)
        return (s2 + sd2) / (s2 * sd2)

    def __repr__(self) -> str:
        return f"EDMParam(sigma_data={self.sigma_data:g})"


class FlowParam(_TimeConditioned):
    """Flow-matching velocity ``v = d x_tau / d tau = alpha' x_0 + sigma' eps`` on a flow path
    (``eps - x_0`` on the linear path; Lipman et al. 2023, Liu et al. 2023, Esser et al. 2024).

    The network is conditioned on the path time ``tau(alpha, sigma) * time_scale``, whatever
    the schedule's clock (so a time shift is a sampling choice). With the uniform weighting the
    loss is the conditional flow-matching loss ``|v_hat - (eps - x_0)|^2``."""

    name = "flow"

    def __init__(self, time_scale: float = 1000.0, path: str = "linear") -> None:

        super().__init__(time_scale)
        self.path = get_flow_path(path)

    def _d(self, alpha, sigma):
        da, ds = self.path.derivatives(alpha, sigma)
        return da, ds, alpha * ds - sigma * da

    def coefficients(self, alpha, sigma, t=None):
        _, ds, det = self._d(alpha, sigma)
        noise = alpha * 0 if t is None else self.path.tau(alpha, sigma) * self.time_scale
        return ds / det, -sigma / det, torch.ones_like(alpha), noise

    def eps_coefficients(self, alpha, sigma, c_skip, c_out):
        da, _, det = self._d(alpha, sigma)
        return -da / det, alpha / det

    def target(self, x0, eps, alpha, sigma):
        da, ds = self.path.derivatives(alpha, sigma)
        return da * x0 + ds * eps

    def to_prediction(self, out, x_t, alpha, sigma):
        da, ds, det = self._d(alpha, sigma)
        return Prediction((ds * x_t - sigma * out) / det, (alpha * out - da * x_t) / det)

    def from_prediction(self, pred, x_t, alpha, sigma):
        return self.velocity(pred, alpha, sigma)           # finite at sigma = 0 too

    def velocity(self, pred: Prediction, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The velocity ``alpha' x0_hat + sigma' eps_hat`` of a prediction (any parameterization's)."""
        da, ds = self.path.derivatives(alpha, sigma)
        return da * pred.x0 + ds * pred.eps

    def x0_mse_factor(self, snr, norm=1.0):
        # 1 / c_out^2 = d^2 / sigma^2; linear: (alpha + sigma)^2 / sigma^2, cosine: (pi/2)^2 n^2 / sigma^2
        if self.path.name == "linear":
            return (1.0 + torch.sqrt(snr)) ** 2
        return (0.5 * torch.pi) ** 2 * norm * (snr + 1.0)

    def __repr__(self) -> str:
        return f"FlowParam(time_scale={self.time_scale:g}, path={self.path.name!r})"


def edm_scalings_like(sig: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`edm_scalings` in ``sig``'s own dtype (float32 loss tensors stay float32)."""
    sd2 = sigma_data ** 2
    norm = sig * sig + sd2
    root = torch.sqrt(norm)
    return sd2 / norm, sig * sigma_data / root, 1.0 / root, torch.log(sig) / 4.0


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {"eps": EpsParam, "x0": X0Param, "v": VParam, "edm": EDMParam,
                                                        "flow": FlowParam}


def make_parameterization(name: str, *, time_scale: float = 1000.0, sigma_data: float = 0.5,
                          path: str = "linear") -> Parameterization:
    """``eps | x0 | v`` (network conditioned on ``t * time_scale``), ``edm`` (on ``ln(sigma) / 4``)
    or ``flow`` (the velocity on flow path ``path``, conditioned on the path time)."""
    if name not in PARAMETERIZATIONS:
        raise UserInputError(f"unknown parameterization {name!r}; expected one of {sorted(PARAMETERIZATIONS)}")
    if name == "edm":
        return EDMParam(sigma_data)
    if name == "flow":
        return FlowParam(time_scale, path)
    return PARAMETERIZATIONS[name](time_scale)
