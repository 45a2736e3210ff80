"""Score-based SDEs built from a schedule (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", eqs. 5, 6, 13).

For any schedule ``x_t = alpha_t x_0 + sigma_t eps`` the linear SDE

    dx = f(t) x dt + g(t) dW,      f(t) = d log alpha_t / dt,
                                   g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2

has exactly those marginals (Kingma et al. 2021, appendix A; Song et al. 2021, eqs. 29-33).
So one :class:`SDE` object wraps any :class:`~diffuse.core.process.schedule.Schedule`:

* VP-SDE: :class:`~diffuse.core.process.schedule.LinearBetaSchedule` (``num_steps=None`` is Song's
  continuous VP with ``beta_min=0.1, beta_max=20``; the T=1000 DDPM chain is the same object,
  its ``log alpha_bar`` interpolated);
* VE-SDE: :class:`~diffuse.core.process.schedule.SigmaSchedule` with ``rho=None`` (geometric sigmas);
* sub-VP SDE: :class:`~diffuse.core.process.schedule.SubVPSchedule` (``schedule kind "subvp"``).

Given a score ``s(x, t) = grad log p_t(x)`` the reverse-time SDE is
``dx = [f x - g^2 s] dt + g dW_bar`` and the probability-flow ODE is
``dx/dt = f x - g^2 s / 2`` (eq. 13). All arithmetic goes through the Space, so molecules
use the zero centre-of-mass subspace and its degrees of freedom.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from .schedule import LinearBetaSchedule, Schedule, SigmaSchedule, SubVPSchedule
from ..errors import UserInputError

__all__ = ["SDE", "SubVPSchedule", "make_sde", "sde_coefficients", "SDE_KINDS"]

_F64 = torch.float64
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def sde_coefficients(schedule: Schedule, t: Tensor | float) -> tuple[Tensor, Tensor]:
    """``(f(t), g(t)^2)`` of the SDE whose marginals are ``schedule``'s, in float64.

    A schedule may provide ``sde_coefficients(t)`` in closed form; otherwise the derivatives
    of ``log alpha_t`` and ``sigma_t^2`` are taken by autograd in float64 through
    ``schedule.alpha_sigma`` (exact for the closed-form schedules; the one-sided slope at the
    nodes of an interpolated discrete schedule).
    """
    closed = getattr(schedule, "sde_coefficients", None)
    if closed is not None:
        return closed(t)
    t = torch.as_tensor(t, dtype=_F64).detach().clamp(min=1e-12).clone().requires_grad_(True)
    with torch.enable_grad():
        alpha, sigma = schedule.alpha_sigma(t)
        log_alpha = torch.log(alpha)
        var = sigma * sigma
        f = (torch.autograd.grad(log_alpha.sum(), t, retain_graph=True)[0]
             if log_alpha.requires_grad else torch.zeros_like(t))
        dvar = torch.autograd.grad(var.sum(), t)[0] if var.requires_grad else torch.zeros_like(t)
    g2 = dvar - 2.0 * f * var.detach()
    return f.detach(), g2.detach().clamp(min=0.0)


class SDE:
    """The linear SDE ``dx = f(t) x dt + g(t) dW`` whose marginals are ``schedule``'s.

    Song et al.'s ``sde_lib.SDE`` interface (``sde``, ``marginal_prob``, ``prior_sampling``,
    ``prior_logp``, ``reverse``), written against a Space instead of image axes.
    """

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    # --------------------------------------------------------------- forward process
    def coefficients(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(f(t), g(t)^2)`` as float64 tensors shaped like ``t``."""
        return sde_coefficients(self.schedule, t)

    def sde(self, x: Tensor, t: Tensor | float, space: Space) -> tuple[Tensor, Tensor]:
        """Drift ``f(t) x`` (a tensor like ``x``) and diffusion ``g(t)`` (float64, like ``t``)."""
        f, g2 = self.coefficients(t)
        return space.coef(f, x) * x, torch.sqrt(g2)

    def marginal(self, x0: Tensor, t: Tensor | float, space: Space) -> tuple[Tensor, Tensor]:
        """Mean ``alpha_t x_0`` of ``p_t(x | x_0)`` and its standard deviation ``sigma_t`` (float64)."""
        alpha, sigma = self.schedule.alpha_sigma(t)
        return space.coef(alpha, x0) * x0, sigma

    def prior_std(self) -> float:
        """Standard deviation of the prior at ``t = 1``: ``sqrt(alpha_1^2 + sigma_1^2)``
        (1 for VP and sub-VP up to ``alpha_1^2``, ``~sigma_max`` for VE), assuming unit-scale data."""
        alpha, sigma = self.schedule.alpha_sigma(torch.tensor(self.schedule.t_max, dtype=_F64))
        return float(torch.sqrt(alpha ** 2 + sigma ** 2))

    def prior_sample(self, like: Tensor, space: Space, generator: GeneratorLike = None) -> Tensor:
        return self.prior_std() * space.noise(like, generator)

    def prior_logp(self, x: Tensor, space: Space) -> Tensor:
        """``log N(x; 0, s^2 I)`` on the Space's subspace: ``-|x|^2 / 2s^2 - dof/2 log(2 pi s^2)``."""
        s2 = self.prior_std() ** 2
        sq = space.inner(x, x).to(_F64)
        dof = space.dof(x).to(_F64)
        return -0.5 * sq / s2 - 0.5 * dof * math.log(2 * math.pi * s2)

    # --------------------------------------------------------------- reverse processes
    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False):
        """The reverse-time SDE (eq. 6) or the probability-flow ODE (eq. 13) for a score.

        Returns ``rsde(x, t, space) -> (drift, diffusion)``, with ``t`` a float or 0-d tensor:
        drift ``f x - g^2 s`` (SDE) or ``f x - g^2 s / 2`` (ODE, diffusion 0).
        """
        factor = 0.5 if probability_flow else 1.0

        def rsde(x: Tensor, t: Tensor | float, space: Space) -> tuple[Tensor, Tensor]:
            f, g2 = self.coefficients(t)
            tv = torch.full((space.batch_size(x),), float(t), dtype=_F64, device=x.device)
            score = score_fn(x, tv)
            drift = space.coef(f, x) * x - space.coef(factor * g2, x) * score
            g = torch.zeros_like(g2) if probability_flow else torch.sqrt(g2)
            return space.project(drift), g
        return rsde

    def score_from_denoiser(self, denoise, space: Space) -> ScoreFn:
        """``s(x, t) = -eps_hat / sigma_t`` from a ``denoise(x, t) -> Prediction`` callable."""
        def score(x: Tensor, t: Tensor) -> Tensor:
            _, sigma = self.schedule.alpha_sigma(t)
            return -denoise(x, t).eps / space.coef(sigma, x)
        return score

    def __repr__(self) -> str:
        return f"SDE({self.schedule!r})"


SDE_KINDS = ("vp", "subvp", "ve")


def make_sde(kind: str = "vp", **kwargs: Any) -> SDE:
    """Song et al.'s three SDEs with their paper defaults.

    * ``vp``:    ``LinearBetaSchedule(num_steps=None)``, ``beta in [0.1, 20]`` (or pass ``num_steps=1000``
      for the DDPM chain: the same object);
    * ``subvp``: :class:`SubVPSchedule` ``(beta_min=0.1, beta_max=20)``;
    * ``ve``:    ``SigmaSchedule(sigma_min=0.01, sigma_max=50, rho=None)`` (geometric).
    """
    if kind == "vp":
        kwargs.setdefault("num_steps", None)
        return SDE(LinearBetaSchedule(**kwargs))
    if kind == "subvp":
        return SDE(SubVPSchedule(**kwargs))
    if kind == "ve":
        kwargs.setdefault("sigma_min", 0.01)
        kwargs.setdefault("sigma_max", 50.0)
        kwargs.setdefault("rho", None)
        return SDE(SigmaSchedule(**kwargs))
    raise UserInputError(f"unknown SDE {kind!r}; expected one of {SDE_KINDS}")
