"""Rectified flow's second stage (reflow): (noise, sample) pairs of a flow model's ODE and the
training set they make (Liu et al. 2023, "Flow Straight and Fast", algorithm 1).

Retraining on this coupling (the noise paired with its sample instead of an independent draw: a
batch's ``extras["noise"]``, read by :class:`~diffuse.core.process.diffusion.Diffusion`)
straightens the paths: the reflowed model samples well in 1-4 steps.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..data.condition import Condition
from ..data.domain import Batch, DomainDataset
from ..data.space import GeneratorLike, Space
from ..errors import UserInputError
from ..process.schedule import Schedule
from ..sampling.common import prior_sample
from ..sampling.generate import concat_batches, sampling_chunks
from ..sampling.guidance import wrap_denoiser
from ..sampling.grids import time_grid
from ..sampling.registry import SAMPLERS, sampler_record

__all__ = ["ode_pairs", "PairDataset", "draw_pairs", "check_pair_sampler"]


def check_pair_sampler(sampler: str) -> str:
    """``sampler`` when it is a deterministic ODE sampler (a map noise -> sample); else one line."""
    record = sampler_record(sampler)
    if not (record.ode and record.deterministic):
        odes = ", ".join(name for name, rec in SAMPLERS.items() if rec.ode and rec.deterministic)
        raise UserInputError(f"reflow needs a deterministic ODE sampler ({odes}), not {sampler!r}")
    return sampler


@torch.no_grad()
def ode_pairs(denoise, schedule: Schedule, space: Space, like: Tensor, *, steps: int = 20,
              sampler: str = "flow_heun", generator: GeneratorLike = None) -> tuple[Tensor, Tensor]:
    """``(noise, sample)``: noise from the prior at ``t = t_max`` (``sqrt(alpha^2 + sigma^2)`` times
    the Space's noise), pushed through ``sampler`` on the uniform grid of ``steps`` steps."""
    noise = space.project(prior_sample(schedule, space, like, t=schedule.t_max, generator=generator))
    grid = time_grid(schedule, steps, "uniform")
    sample = sampler_record(sampler).fn(denoise, noise.clone(), grid, schedule=schedule, space=space,
                                        generator=generator)
    return noise, sample


def draw_pairs(denoiser, domain, pairs: int, *, steps: int, sampler: str, seed: int,
               device: torch.device | str, batch_size: int = 64, cond: Any = None,
               guidance: Sequence[Any] = ()) -> "PairDataset":
    """``pairs`` (noise, sample) pairs of ``denoiser``'s ODE, each sample from its own generators
    (the chunks of ``core.sampling.generate.sampling_chunks`` of the bound ``domain``), as a
    :class:`PairDataset` on CPU with the domain's ``data_info``. A conditional model's pairs are
    drawn given ``cond`` (a :class:`~diffuse.core.data.condition.Condition` of ``pairs`` samples,
    with the denoiser wrappers ``guidance``, e.g. classifier-free guidance) and keep it."""
    chunks = []
    for chunk in sampling_chunks(domain, pairs, seed=seed, batch_size=batch_size, device=device, cond=cond):
        tpl = chunk.template
        noise, sample = ode_pairs(wrap_denoiser(denoiser, tpl, list(guidance), start=chunk.start), denoiser.schedule,
                                  tpl.space, tpl.x, steps=steps, sampler=sampler, generator=chunk.noise_gens)
        kept = tpl.cond.to("cpu") if isinstance(tpl.cond, Condition) else None
        chunks.append(Batch(sample.cpu(), tpl.space.to("cpu"), kept, {**tpl.extras, "noise": noise.cpu()}))
    return PairDataset(chunks, domain.info)


class PairDataset(DomainDataset):
    """A training set of (noise, sample) pairs for reflow: ``batch`` returns the samples (with the
    conditions they were drawn given, if any) and the paired noise in ``extras["noise"]``. ``batches`` are :class:`~diffuse.core.data.domain.Batch` es
    whose ``extras["noise"]`` holds the noise of their samples (dense rows or graphs)."""

    def __init__(self, batches, info: dict) -> None:
        self.items = []
        self._info = info
        for b in batches:            # each: Batch(x=sample, space, cond, extras with "noise")
            noise = b.extras["noise"]
            extras = {k: v for k, v in b.extras.items() if k != "noise"}
            for i in range(len(b)):
                xi, sp = b.space.take(b.x, i, i + 1)
                ni, _ = b.space.take(noise, i, i + 1)
                ci = b.cond.select(slice(i, i + 1)) if isinstance(b.cond, Condition) else None
                self.items.append(Batch(xi, sp, ci, {**extras, "noise": ni}))

    def __len__(self) -> int:
        return len(self.items)

    def info(self) -> dict:
        return self._info

    def batch(self, indices: Tensor, generator: torch.Generator | None = None):
        chosen = [self.items[int(i)] for i in torch.as_tensor(indices).flatten()]
        joined = concat_batches(chosen)
        noise, _ = chosen[0].space.concat([b.extras["noise"] for b in chosen], [b.space for b in chosen])
        return Batch(joined.x, joined.space, joined.cond, {**chosen[0].extras, "noise": noise})
