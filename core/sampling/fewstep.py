"""The few-step samplers: multistep consistency sampling and flow-map stepping.

* :func:`consistency`: Song et al. 2023, algorithm 1 ("multistep consistency sampling"). The first
  evaluation maps the prior draw at ``grid[0]`` to a sample, ``x_0 = f(x_T, T)``; every further
  grid time ``t_i`` re-noises it with fresh noise, ``x = alpha_i x_0 + sigma_i z``, and maps it
  again. One step is deterministic; more trade evaluations for quality. ``f`` is the denoiser's
  clean-data view, so on an ordinary diffusion model this is a (poor) stochastic sampler too.
* :func:`flowmap`: a flow-map model's steps (``core.process.flowmap``): the denoiser is asked for
  the step ``(t, s)`` itself (a ``[B, 2]`` time pair) and its prediction's DDIM update lands on
  the model's ``x_s``; deterministic. Shortcut models (Frans et al. 2024) sample this way on the
  uniform grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..process.schedule import Schedule
from .common import Callback, call, grid_coefs, report

__all__ = ["consistency", "flowmap"]


@torch.no_grad()
def consistency(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
                generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, algorithm 1) on a descending grid:
    ``x0 = f(x, t_0)``; for each later grid time ``t_i > 0``: ``x = alpha_i x0 + sigma_i z``,
    ``x0 = f(x, t_i)``; the grid's final time (0) returns ``alpha_end x0``."""
    coefs = grid_coefs(schedule, grid)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        x0 = call(denoise, x, t, space).x0
        a_s, s_s = coefs[i + 1]
        x = a_s * x0
        if s_s > 0:
            x = x + s_s * space.noise(x0, generator)
        x = space.project(x)
        report(callback, i, t, s, x, x0)
    return x


@torch.no_grad()
def flowmap(denoise, x: Tensor, grid: Tensor, *, schedule: Schedule, space: Space,
            generator: GeneratorLike = None, callback: Callback | None = None) -> Tensor:
    """Flow-map steps along a descending grid: for each ``(t, s)`` the denoiser is called with the
    pair ``[B, 2]`` and ``x = alpha_s x0 + sigma_s eps`` (see the module docstring)."""
    coefs = grid_coefs(schedule, grid)
    n = space.batch_size(x)
    for i, (t, s) in enumerate(zip(grid[:-1], grid[1:])):
        pair = torch.tensor([[float(t), float(s)]], dtype=torch.float64, device=x.device).expand(n, 2)
        pred = denoise(x, pair)
        a_s, s_s = coefs[i + 1]
        x = space.project(a_s * pred.x0 + s_s * pred.eps if s_s > 0 else a_s * pred.x0)
        report(callback, i, t, s, x, pred.x0)
    return x
