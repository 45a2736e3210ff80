"""Progressive distillation: a student that takes one DDIM step where its teacher takes two
(Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models", algorithm 2).

One round halves the steps: on the teacher's grid of ``2N`` DDIM steps (``time_grid(schedule, 2N,
spacing)``, whose even points are the student's ``N``-step grid: the spacings used here nest), a
step ``t -> s`` of the student is drawn (``t = g[2k]``, ``m = g[2k + 1]``, ``s = g[2k + 2]``), the
teacher takes its two DDIM steps ``x_t -> x_m -> x_s``, and the student is trained to reach the same
``x_s`` in one DDIM step: its clean-data target is

    x~_0 = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),

and the loss is the parameterization's own squared error on ``F* = (x~_0 - c_skip x_t) / c_out``
(for v-prediction this is the paper's "SNR + 1" weighting of the x0 error). ``diffuse.api.distill``
runs rounds ``2N0 -> N0 -> ... -> steps``, each student starting from its teacher's weights.
A conditional teacher is guided as in consistency distillation (``guidance_scale``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..data.domain import Batch
from ..errors import ConfigError
from ..validation import AT_LEAST_ONE, NON_NEGATIVE, check_fields
from .consistency import drop_condition, guided_teacher, select_rows
from .diffusion import Diffusion, SamplesThroughDiffusion
from .parameterization import Prediction

__all__ = ["ProgressiveConfig", "ProgressiveObjective", "student_grid"]


@dataclass
class ProgressiveConfig:
    """Options of one round of progressive distillation."""

    #: ``N``: the student's DDIM steps (the teacher takes ``2N``); 0: ``sample_steps``
    student_steps: int = 0
    #: the grid spacing of teacher and student (``None``: ``uniform`` on flow paths, else ``trailing``)
    spacing: str | None = None
    guidance_scale: float | None = None
    #: the student's steps when ``diffuse sample`` names none
    sample_steps: int = 4
    teacher: dict[str, Any] | None = None

    def validate(self, what: str = "objective") -> "ProgressiveConfig":
        check_fields(self, what, {"student_steps": NON_NEGATIVE, "guidance_scale": NON_NEGATIVE,
                                  "sample_steps": AT_LEAST_ONE})
        if self.spacing not in (None, "trailing", "uniform", "linspace"):
            raise ConfigError(f"{what}.spacing must be trailing, uniform or linspace (grids that nest when the "
                              f"steps halve), got {self.spacing!r}")
        return self


def student_grid(schedule, steps: int, spacing: str | None) -> tuple[Tensor, str]:
    """``(the teacher's 2N-step grid, the spacing)``; its even points are the student's N-step grid."""
    from ..sampling.grids import time_grid

    spacing = spacing or ("uniform" if getattr(schedule, "default_spacing", None) == "uniform" else "trailing")
    fine = time_grid(schedule, 2 * steps, spacing)
    coarse = time_grid(schedule, steps, spacing)
    if not torch.allclose(fine[::2], coarse, atol=1e-12):
        raise ConfigError(f"the {spacing} grids of {2 * steps} and {steps} steps do not nest on this schedule; "
                          "progressive distillation needs nested grids (use another number of steps or spacing)")
    return fine, spacing


class ProgressiveObjective(SamplesThroughDiffusion):
    """The trainer's objective of one progressive-distillation round (see the module docstring)."""

    def __init__(self, diffusion: Diffusion, config: ProgressiveConfig, teacher: nn.Module | None = None,
                 total_steps: int = 1) -> None:
        if teacher is None:
            raise ConfigError("progressive distillation needs a teacher")
        if isinstance(teacher, nn.Module):
            teacher.eval().requires_grad_(False)
        self.diffusion, self.config, self.teacher = diffusion, config, teacher
        self.schedule, self.param = diffusion.schedule, diffusion.param
        self.steps = config.student_steps or config.sample_steps
        self.grid, self.spacing = student_grid(self.schedule, self.steps, config.spacing)

    def follow(self, clock: Callable[[], int]) -> None:
        """Nothing in one round depends on the step."""

    def training_losses(self, model: nn.Module, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        k = torch.randint(0, self.steps, (n,), generator=generator if x0.device.type == "cpu" else None)
        eps = space.noise(x0, generator)
        cond = drop_condition(batch.cond, self.diffusion.config.cond_drop, n, generator, x0.device)
        (x0, eps), space, (k,), cond = select_rows(shard, space, [x0, eps], [k], cond)
        g = self.grid
        t, m, s = (g[2 * k].to(x0.device), g[2 * k + 1].to(x0.device), g[2 * k + 2].to(x0.device))
        a_t, s_t = self.schedule.alpha_sigma(t)
        x_t = space.coef(a_t, x0) * x0 + space.coef(s_t, x0) * eps
        with torch.no_grad():
            teacher = guided_teacher(self.teacher, self.schedule, cond, space, self.config.guidance_scale)
            x_m = self._ddim(teacher, space, x_t, t, m)
            x_s = self._ddim(teacher, space, x_m, m, s)
            a_s, s_s = self.schedule.alpha_sigma(s)
            ratio = s_s / s_t
            x0_tilde = (x_s - space.coef(ratio, x_s) * x_t) / space.coef(a_s - ratio * a_t, x_s)
            eps_tilde = (x_t - space.coef(a_t, x_t) * x0_tilde) / space.coef(s_t, x_t)
            target = self.param.from_prediction(Prediction(x0_tilde, eps_tilde), x_t, space.coef(a_t, x_t),
                                                space.coef(s_t, x_t))
        out = model.raw(x_t, t, cond=cond, space=space)
        dtype = torch.promote_types(out.dtype, torch.float32)
        return space.reduce((out.to(dtype) - target.to(dtype)) ** 2)

    def _ddim(self, teacher, space, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        pred = teacher(x, t)
        a_s, s_s = self.schedule.alpha_sigma(s)
        return space.project(space.coef(a_s, x) * pred.x0 + space.coef(s_s, x) * pred.eps)

