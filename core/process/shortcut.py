"""Shortcut models: one network for every step size, trained from scratch (Frans, Hafner, Levine &
Abbeel 2024, "One Step Diffusion via Shortcut Models").

The model ``u(x_t, t, d)`` (a :class:`~diffuse.core.process.flowmap.FlowMapDenoiser`) is
conditioned on the step ``d`` it is asked to take; a step lands on ``x_{t-d}`` through the DDIM
update of its prediction (``x_t - d u`` on the linear flow path: ``u`` is the average velocity
over the step, MeanFlow's ``u(z, r, t)`` with ``r = t - d``, Geng et al. 2025). Each batch mixes

* **the process's own loss at d = 0** (flow matching on a flow path: ``|u(x_t, t, 0) - (eps -
  x_0)|^2``), on ``1 - bootstrap_fraction`` of the samples, at the process's training times;
* **self-consistency** on the rest: for ``d = 2^-k`` (``k = 1 .. log2 M``) and ``t`` on the grid of
  multiples of ``d`` with ``t >= 2d``, two stopped-gradient steps of size ``d`` land on ``x_end``;
  the network's one step of ``2d`` is trained to land there too: ``|F(x_t, t, 2d) - F*|^2`` with
  ``F*`` the output whose step lands on ``x_end`` (``(u_1 + u_2) / 2`` on the linear path, the
  paper's target). The smallest steps (``d = 1 / M``) are taken with ``d = 0``, the paper's base case.

Sampling: the ``flowmap`` sampler on the uniform grid of 1-8 steps (``core.sampling.fewstep``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..data.domain import Batch
from ..errors import ConfigError
from ..validation import AT_LEAST_ONE, UNIT, check_fields
from .consistency import drop_condition, select_rows
from .diffusion import Diffusion, SamplesThroughDiffusion
from .flowmap import time_pair

__all__ = ["ShortcutConfig", "ShortcutObjective", "landing_target"]

_F64 = torch.float64


@dataclass
class ShortcutConfig:
    """Options of the shortcut objective."""

    #: ``M``: the finest step is ``1 / M`` of the time axis (a power of two; the paper's 128)
    max_steps: int = 128
    #: share of each batch trained for self-consistency (the paper's 1/4)
    bootstrap_fraction: float = 0.25
    #: steps of the ``flowmap`` sampler when ``diffuse sample`` names none
    sample_steps: int = 4
    teacher: dict[str, Any] | None = None

    def validate(self, what: str = "objective") -> "ShortcutConfig":
        check_fields(self, what, {"max_steps": AT_LEAST_ONE, "bootstrap_fraction": UNIT, "sample_steps": AT_LEAST_ONE})
        if self.max_steps < 2 or self.max_steps & (self.max_steps - 1):
            raise ConfigError(f"{what}.max_steps must be a power of two >= 2, got {self.max_steps}")
        return self


def landing_target(param, schedule, space, x_t: Tensor, t: Tensor, s: Tensor, x_end: Tensor) -> Tensor:
    """The network output ``F*`` whose DDIM step from ``t`` to ``s`` lands on ``x_end``: with the
    scalings at ``t``, ``x_s = A x_t + B F``, ``A = alpha_s c_skip + sigma_s e_skip``,
    ``B = alpha_s c_out + sigma_s e_out``, so ``F* = (x_end - A x_t) / B``."""
    a_t, s_t = schedule.alpha_sigma(t)
    a_s, s_s = schedule.alpha_sigma(s)
    sc = param.scalings(a_t, s_t)
    A = a_s * sc.c_skip + s_s * sc.e_skip
    B = a_s * sc.c_out + s_s * sc.e_out
    return (x_end - space.coef(A, x_t) * x_t) / space.coef(B, x_t)


class ShortcutObjective(SamplesThroughDiffusion):
    """The trainer's objective for a shortcut model (see the module docstring)."""

    def __init__(self, diffusion: Diffusion, config: ShortcutConfig, teacher: nn.Module | None = None,
                 total_steps: int = 1) -> None:
        self.diffusion, self.config = diffusion, config
        self.schedule, self.param = diffusion.schedule, diffusion.param
        self.levels = int(round(math.log2(config.max_steps)))      # big steps 2d = 2^-j, j = 0 .. levels - 1

    def follow(self, clock: Callable[[], int]) -> None:
        """Nothing in this objective depends on the step."""

    def training_losses(self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        dev = x0.device
        k = min(n, int(round(n * self.config.bootstrap_fraction)))
        t_fm = self.diffusion.sample_t(n, generator, dev)
        # self-consistency rows: big step D = 2^-j, small d = D / 2, t in {D, D + d, ..., t_max}
        j = torch.randint(0, self.levels, (n,), generator=generator, device=dev)
        big = torch.pow(2.0, -j.to(_F64))
        small = big / 2
        slots = torch.floor((1.0 - big) / small + 1e-9) + 1                 # choices of t per row
        pos = torch.floor(torch.rand(n, generator=generator, device=dev, dtype=_F64) * slots)
        t_sc = (big + pos * small).clamp(max=self.schedule.t_max)
        boot = torch.arange(n, device=dev) < k
        t = torch.where(boot, t_sc, t_fm)
        end = torch.where(boot, t - big, t).clamp_min(0.0)
        eps = space.noise(x0, generator)
        cond = drop_condition(batch.cond, self.diffusion.config.cond_drop, n, generator, dev)
        (x0, eps), space, (t, end, small, boot), cond = select_rows(shard, space, [x0, eps], [t, end, small, boot],
                                                                  cond)
        alpha, sigma = self.schedule.alpha_sigma(t)
        a, s = space.coef(alpha, x0), space.coef(sigma, x0)
        x_t = a * x0 + s * eps
        target = self.param.target(x0, eps, a, s)
        if bool(boot.any()):
            target = self._bootstrap(model, space, x_t, t, small, boot, cond, target)
        out = model.raw(x_t, time_pair(t, end), cond=cond, space=space)
        dtype = torch.promote_types(out.dtype, torch.float32)
        return space.reduce((out.to(dtype) - target.to(dtype)) ** 2)

    @torch.no_grad()
    def _bootstrap(self, model, space, x_t, t, small, boot, cond, target):
        """``target`` with the self-consistency rows replaced by ``F*`` of their two small steps."""
        finest = small <= 1.0 / self.config.max_steps + 1e-12
        mid = (t - small).clamp_min(0.0)
        first = torch.where(finest[:, None], torch.stack([t, t], 1), time_pair(t, mid))
        p1 = model(x_t, first, cond=cond, space=space)
        a_m, s_m = self.schedule.alpha_sigma(mid)
        x_mid = space.project(space.coef(a_m, x_t) * p1.x0 + space.coef(s_m, x_t) * p1.eps)
        stop = (mid - small).clamp_min(0.0)
        second = torch.where(finest[:, None], torch.stack([mid, mid], 1), time_pair(mid, stop))
        p2 = model(x_mid, second, cond=cond, space=space)
        a_e, s_e = self.schedule.alpha_sigma(stop)
        x_end = space.project(space.coef(a_e, x_t) * p2.x0 + space.coef(s_e, x_t) * p2.eps)
        boot_target = landing_target(self.param, self.schedule, space, x_t.to(x_end.dtype), t, stop, x_end)
        return torch.where(space.coef(boot.to(target.dtype), target) > 0, boot_target.to(target.dtype), target)
