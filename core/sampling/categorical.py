"""Samplers of categorical paths (``core.process.categorical``): one step rule per method.

A rule maps ``(path, x_t, p0, t, s, u)`` to ``x_s``: ``x_t`` the state indices ``[...]``, ``p0`` the
denoiser's ``p(x_0 | x_t)`` ``[..., K]``, ``t > s`` the step, ``u`` one uniform draw per element.
Elements are stepped independently given ``p0`` (the factorised reverse step of every discrete
diffusion model); the error this makes vanishes as the steps get small.

* ``d3pm``: ancestral sampling from the exact D3PM reverse step
  ``sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` (Austin et al. 2021; Vignac et al. 2023). For one
  categorical variable and the exact ``p(x_0 | x_t)`` this is exact at any number of steps.
* ``dfm_euler``: Euler on the discrete flow-matching CTMC (Gat et al. 2024, algorithm 1; Campbell
  et al. 2024): ``P(x_s = y) = (1 - h lambda_t) delta_{x_t}(y) + h lambda_t p(x_0 = y | x_t)``,
  ``h = t - s``, ``h lambda_t`` clipped to 1.
* ``tau_leaping``: the rates frozen at ``t`` and the CTMC run exactly over the step (Campbell et al.
  2022, "A Continuous Time Framework for Discrete Denoising Models"): every jump of the mixture
  path lands on a fresh draw from ``p(x_0 | x_t)``, so ``P(x_s = y) = e^{-h lambda_t} delta_{x_t}(y)
  + (1 - e^{-h lambda_t}) p(x_0 = y | x_t)``.

Every rule ends exactly on data: a step to ``s`` with ``kappa_s = 1`` draws each element from
``p(x_0 | x_t)``. Draws come from the per-sample generators through the Space
(:func:`uniforms`), so a seed gives the same samples whatever the batch size.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..errors import UnknownNameError
from ..process.categorical import CategoricalPath

__all__ = ["uniforms", "draw", "d3pm_step", "dfm_euler_step", "tau_leaping_step", "CATEGORICAL_RULES",
           "categorical_rule", "categorical_prior", "categorical_sampler"]

_F64 = torch.float64


def uniforms(space: Space, like: Tensor, generator: GeneratorLike = None) -> Tensor:
    """One ``U(0, 1)`` draw per element of ``like`` (float64), from the space's per-sample noise:
    ``u = Phi(z)`` for ``z`` the space's standard Gaussian (no centred channels on a categorical
    component), so sample ``i`` draws only from generator ``i``."""
    z = space.noise(torch.zeros(like.shape, dtype=_F64, device=like.device), generator)
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def draw(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draws from ``probs`` ``[..., S]`` with uniforms ``u`` ``[...]``: the index of the
    first class whose cumulative probability exceeds ``u``."""
    cdf = torch.cumsum(probs.to(_F64), -1)
    cdf = cdf / cdf[..., -1:].clamp_min(1e-300)
    idx = (cdf < u.to(_F64).unsqueeze(-1)).sum(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


def _final(path: CategoricalPath, s: float) -> bool:
    return float(path.kappa(torch.tensor(float(s), dtype=_F64))) >= 1.0


def d3pm_step(path: CategoricalPath, x_t: Tensor, p0: Tensor, t: float, s: float, u: Tensor) -> Tensor:
    """One ancestral D3PM step ``t -> s`` (module docstring)."""
    if _final(path, s):
        return draw(p0, u)
    return draw(path.posterior(x_t, p0, t, s), u)


def _mix(path: CategoricalPath, x_t: Tensor, p0: Tensor, jump: float, u: Tensor) -> Tensor:
    """``x_s ~ (1 - jump) delta_{x_t} + jump p0`` (``p0`` over the classes, padded to the states)."""
    probs = jump * path._pad(p0) + (1.0 - jump) * path.onehot(x_t).to(p0.device)
    return draw(probs, u)


def dfm_euler_step(path: CategoricalPath, x_t: Tensor, p0: Tensor, t: float, s: float, u: Tensor) -> Tensor:
    """One Euler step of the discrete flow-matching CTMC ``t -> s`` (module docstring)."""
    if _final(path, s):
        return draw(p0, u)
    jump = min(1.0, (float(t) - float(s)) * float(path.rate(torch.tensor(float(t), dtype=_F64))))
    return _mix(path, x_t, p0, jump, u)


def tau_leaping_step(path: CategoricalPath, x_t: Tensor, p0: Tensor, t: float, s: float, u: Tensor) -> Tensor:
    """One tau-leaping step ``t -> s``: the rates frozen at ``t`` (module docstring)."""
    if _final(path, s):
        return draw(p0, u)
    rate = float(path.rate(torch.tensor(float(t), dtype=_F64)))
    jump = 1.0 if math.isinf(rate) else -math.expm1(-(float(t) - float(s)) * rate)
    return _mix(path, x_t, p0, jump, u)


#: name -> (step rule, paper)
CATEGORICAL_RULES: dict[str, tuple[Callable[..., Tensor], str]] = {
    "d3pm": (d3pm_step, "Austin et al. 2021 (D3PM), ancestral"),
    "dfm_euler": (dfm_euler_step, "Gat et al. 2024 / Campbell et al. 2024 (discrete flow matching), Euler"),
    "tau_leaping": (tau_leaping_step, "Campbell et al. 2022, tau-leaping on the CTMC"),
}


def categorical_rule(name: Any) -> Callable[..., Tensor]:
    """The step rule called ``name``; an UnknownNameError listing them otherwise."""
    if not isinstance(name, str) or name not in CATEGORICAL_RULES:
        raise UnknownNameError(f"unknown categorical sampler {name!r}; expected one of "
                               f"{', '.join(CATEGORICAL_RULES)}")
    return CATEGORICAL_RULES[name][0]


def categorical_prior(path: CategoricalPath, space: Space, like: Tensor, generator: GeneratorLike = None) -> Tensor:
    """A draw from the path's limit (the prior at ``t = 1``), shaped like ``like``."""
    u = uniforms(space, like, generator)
    return draw(path.prior_probs(like.shape, like.device), u)


@torch.no_grad()
def categorical_sampler(denoise: Callable[[Tensor, Tensor], Tensor], x: Tensor, grid: Tensor, *,
                        path: CategoricalPath, space: Space, rule: str = "d3pm", generator: GeneratorLike = None,
                        callback: Callable[[dict[str, Any]], None] | None = None) -> Tensor:
    """Sample a purely categorical state: ``denoise(x_t, t) -> p(x_0 | x_t)`` ``[..., K]`` (``t`` per
    sample, float64 ``[B]``), ``x`` the start (e.g. :func:`categorical_prior`), ``grid`` descending,
    stepping ``zip(grid[:-1], grid[1:])`` with the rule ``rule``."""
    step = categorical_rule(rule)
    grid = torch.as_tensor(grid, dtype=_F64)
    n = space.batch_size(x)
    for i, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        p0 = denoise(x, torch.full((n,), t, dtype=_F64, device=x.device))
        x = step(path, x, p0, t, s, uniforms(space, x, generator))
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0": p0})
    return x
