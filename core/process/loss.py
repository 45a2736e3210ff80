"""Training losses: small callables returning the *unreduced* per-element loss.

``loss(out, x0, eps, alpha, sigma, snr, space) -> per-element tensor``; the trainer reduces it
with ``space.reduce`` (so a domain's masks and padding never leak into core).

Weightings are functions of the per-sample SNR applied to the parameterization's native MSE:

* ``uniform``: the "simple" loss of Ho et al. 2020 (unweighted MSE on the network's target;
  with eps-prediction it is exactly L_simple).
* ``min_snr``: Min-SNR-gamma (Hang et al. 2023): the x0-space weight ``min(snr, gamma)``,
  i.e. ``min(snr, gamma) / factor(snr)`` on the native target, where ``factor`` is ``snr`` for
  eps, 1 for x0 and ``snr + 1`` for v.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .parameterization import Parameterization
from ..data.space import Space
from ..errors import UserInputError

__all__ = ["DiffusionLoss", "make_weighting", "WEIGHTINGS"]

#: ``weight(snr, param, norm)``: ``snr`` and ``norm = alpha^2 + sigma^2`` broadcast like the loss
Weighting = Callable[..., Tensor]


def _uniform(snr: Tensor, param: Parameterization, norm: Tensor | float = 1.0) -> Tensor:
    return torch.ones_like(snr)


def _min_snr(gamma: float = 5.0) -> Weighting:
    def weight(snr: Tensor, param: Parameterization, norm: Tensor | float = 1.0) -> Tensor:
        return snr.clamp(max=gamma) / param.x0_mse_factor(snr, norm)
    return weight


WEIGHTINGS = {"uniform": lambda **kw: _uniform, "min_snr": lambda gamma=5.0: _min_snr(gamma)}


def make_weighting(name: str, **kwargs) -> Weighting:
    if name not in WEIGHTINGS:
        raise UserInputError(f"unknown loss weighting {name!r}; expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[name](**kwargs)


class DiffusionLoss:
    """Weighted squared error on the parameterization's target, unreduced."""

    def __init__(self, param: Parameterization, weighting: str = "uniform", **weighting_kwargs) -> None:
        self.param = param
        self.weighting_name = weighting
        self.weighting = make_weighting(weighting, **weighting_kwargs)

    def __call__(self, out: Tensor, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor,
                 snr: Tensor, space: Space) -> Tensor:
        """``out`` is the raw network output; ``alpha``/``sigma`` broadcast; ``snr`` per sample."""
        target = self.param.target(x0, eps, alpha, sigma)
        dtype = torch.promote_types(out.dtype, torch.float32)  # at least float32; float64 stays float64
        err = (out.to(dtype) - target.to(dtype)) ** 2
        snr_el = space.coef(snr, err)
        norm = (alpha.to(dtype) ** 2 + sigma.to(dtype) ** 2)
        return self.weighting(snr_el, self.param, norm) * err
