"""What the network predicts, and exact conversions between the views.

With ``x_t = alpha x_0 + sigma eps`` (any alpha, sigma > 0):

=========== ===================================== =============================================
prediction  target                                 back to (x0, eps)
=========== ===================================== =============================================
eps         ``eps``                                ``x0 = (x_t - sigma eps) / alpha``
x0          ``x_0``                                ``eps = (x_t - alpha x0) / sigma``
v           ``v = alpha eps - sigma x_0``          ``x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)``
            (Salimans & Ho 2022)                   ``eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)``
=========== ===================================== =============================================

The score of the noisy marginal is ``grad log p_t(x_t) = -eps / sigma``. The ``eps`` view is
used to recover ``x0`` only where ``alpha`` is not tiny; ``x0`` and ``v`` are stable at both ends.
Each parameterization also says how its squared error relates to the x0 error
(``x0_mse_factor``): ``|eps - eps_hat|^2 = snr |x0 - x0_hat|^2``, ``|v - v_hat|^2 = (alpha^2 +
sigma^2)(snr + 1) |x0 - x0_hat|^2`` (``snr + 1`` for VP schedules); loss weightings (min-SNR-gamma)
use it.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["Prediction", "Parameterization", "EpsParam", "X0Param", "VParam", "make_parameterization",
           "PARAMETERIZATIONS"]


class Prediction(NamedTuple):
    """A denoiser's output in both views: the clean-data estimate and the noise estimate."""

    x0: Tensor
    eps: Tensor


class Parameterization:
    """Base class. ``alpha`` and ``sigma`` are already broadcast to ``x_t``'s shape."""

    name: str = ""

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def to_prediction(self, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Prediction:
        raise NotImplementedError

    def from_prediction(self, pred: Prediction, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Inverse of :meth:`to_prediction`: the network output that gives ``pred``."""
        return self.target(pred.x0, pred.eps, alpha, sigma)

    def x0_mse_factor(self, snr: Tensor, norm: Tensor | float = 1.0) -> Tensor:
        """``|target - target_hat|^2 / |x0 - x0_hat|^2`` from the SNR and ``norm = alpha^2 + sigma^2``
        (1 for VP schedules)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsParam(Parameterization):
    name = "eps"

    def target(self, x0, eps, alpha, sigma):
        return eps

    def to_prediction(self, out, x_t, alpha, sigma):
        return Prediction((x_t - sigma * out) / alpha, out)

    def x0_mse_factor(self, snr, norm=1.0):
        return snr


class X0Param(Parameterization):
    name = "x0"

    def target(self, x0, eps, alpha, sigma):
        return x0

    def to_prediction(self, out, x_t, alpha, sigma):
        return Prediction(out, (x_t - alpha * out) / sigma)

    def x0_mse_factor(self, snr, norm=1.0):
        return snr.new_ones(snr.shape)


class VParam(Parameterization):
    name = "v"

    def target(self, x0, eps, alpha, sigma):
        return alpha * eps - sigma * x0

    def to_prediction(self, out, x_t, alpha, sigma):
        norm = alpha * alpha + sigma * sigma
        return Prediction((alpha * x_t - sigma * out) / norm, (sigma * x_t + alpha * out) / norm)

    def x0_mse_factor(self, snr, norm=1.0):
        # v - v_hat = -((alpha^2 + sigma^2) / sigma) (x0 - x0_hat)
        return norm * (snr + 1.0)


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {"eps": EpsParam, "x0": X0Param, "v": VParam}


def make_parameterization(name: str) -> Parameterization:
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; expected one of {sorted(PARAMETERIZATIONS)}")
    return PARAMETERIZATIONS[name]()
