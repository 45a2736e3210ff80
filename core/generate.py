"""Drawing samples from a trained denoiser for any domain.

:func:`generate` splits ``num`` samples into chunks of ``batch_size``, gives every sample its
own generators (seeded from ``(seed, index)``), asks the domain for a template of each chunk,
and runs a sampler from core's registry on an explicit time grid. Because each sample's
structure and noise come only from its own generators, the same seed gives the same samples
whatever the batch size.

``cond`` is the network condition of all ``num`` samples (a
:class:`~diffuse.core.condition.Condition`, sliced per chunk), ``structure`` the sampling
structure the domain's template takes (atom counts...), and ``guidance`` a
:class:`~diffuse.core.guidance.Guidance` (classifier-free guidance around the denoiser).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .condition import Condition
from .domain import Batch, Domain
from .guidance import Guidance, classifier_free_guidance
from .samplers import SPACINGS, check_sampler_options, default_spacing, get_sampler, prior_sample, time_grid
from .space import per_sample_generators

__all__ = ["generate", "check_generate_args", "check_condition", "concat_batches", "default_steps", "sampling_grid"]


def default_steps(sampler: str, schedule) -> int:
    """DDPM runs every training step by default; the others 50."""
    if sampler == "ddpm" and schedule.num_steps:
        return schedule.num_steps
    return 50


def concat_batches(batches: list[Batch]) -> Batch:
    """Concatenate chunks of samples through their Space's ``concat``."""
    if len(batches) == 1:
        return batches[0]
    x, space = batches[0].space.concat([b.x for b in batches], [b.space for b in batches])
    cond = None
    if isinstance(batches[0].cond, Condition):
        cond = Condition.concat([b.cond for b in batches])
    elif isinstance(batches[0].cond, torch.Tensor):
        cond = torch.cat([b.cond for b in batches])
    return Batch(x, space, cond, batches[0].extras)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_generate_args(num: int, *, sampler: str = "ddim", steps: int | None = None, spacing: str | None = None,
                        seed: int = 0, batch_size: int = 64, options: dict[str, Any] | None = None) -> None:
    """Check what :func:`generate` is asked for (types, ranges, the sampler and its options)
    before anything runs; a ``ValueError`` naming the argument otherwise."""
    _positive_int("the number of samples", num)
    _positive_int("the batch size", batch_size)
    if steps is not None:
        _positive_int("the number of sampling steps", steps)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"the seed must be an integer in [0, 2^63), got {seed!r}")
    if spacing is not None and spacing not in SPACINGS:
        raise ValueError(f"unknown time spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    check_sampler_options(sampler, options or {})


def sampling_grid(schedule, sampler: str, steps: int | None, spacing: str | None):
    """The descending time grid a sampler runs on: ``steps`` (default :func:`default_steps`) with
    ``spacing`` (default :func:`~diffuse.core.samplers.default_spacing`: the schedule's own, e.g.
    uniform in t for flow paths; else Karras for non-VP schedules, and for VP ones ``auto`` for the
    samplers in :data:`~diffuse.core.samplers.AUTO_GRID_SAMPLERS` (UniPC, DPM-Solver++(2M)) and
    for DDIM / DPM-Solver++(3M) below 7 steps (``auto``'s few-step grid), trailing otherwise)."""
    steps = default_steps(sampler, schedule) if steps is None else steps
    return time_grid(schedule, steps, default_spacing(schedule, sampler, steps) if spacing is None else spacing)


def check_condition(cond: Any, guidance: Any, num: int) -> None:
    """A ``ValueError`` for guidance without a condition, or a condition of another size."""
    if guidance is not None and not isinstance(cond, Condition):
        raise ValueError("guidance needs a condition (e.g. a label) to guide towards")
    if isinstance(cond, (Condition, torch.Tensor)) and len(cond) != num:
        raise ValueError(f"the condition holds {len(cond)} samples, expected {num}")


@torch.no_grad()
def generate(denoiser, domain: Domain, data_info: dict[str, Any], num: int, *, sampler: str = "ddim",
             steps: int | None = None, spacing: str | None = None, seed: int = 0, batch_size: int = 64,
             device: torch.device | str = "cpu", cond: Any = None, progress: Callable[[int], None] | None = None,
             denoise_wrapper: Callable | None = None, structure: Any = None, guidance: Guidance | None = None,
             grid: torch.Tensor | None = None, **sampler_options) -> Batch:
    """Draw ``num`` samples. ``progress(n)`` is called after each sampler step with the chunk's size.

    ``cond``: a :class:`Condition` of ``num`` samples (or ``None``; a raw tensor is passed to
    the backbone as is). ``structure``: given to ``domain.template`` (a per-sample tensor or
    list is sliced per chunk). ``guidance``: classifier-free guidance (needs ``cond``).
    ``denoise_wrapper(denoise_fn, batch) -> denoise_fn`` lets callers add other guidance.
    ``grid``: an explicit descending time grid (e.g. an optimised one, ``core.gridopt``) instead
    of ``steps`` / ``spacing``.
    Arguments, sampler options and the domain's structure (``Domain.check_structure``)
    are checked first. Returns one :class:`Batch` on CPU with all samples (``cond`` carried along),
    in data space (``domain.to_data``: a latent model's samples are decoded chunk by chunk).
    """
    check_generate_args(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
                        options=sampler_options)
    domain.check_structure(structure, data_info, batch_size=min(batch_size, num))
    fn = get_sampler(sampler)
    schedule = denoiser.schedule
    check_condition(cond, guidance, num)
    if grid is None:
        if spacing is None:
            spacing = domain.default_spacing(schedule, sampler, steps)
        grid = sampling_grid(schedule, sampler, steps, spacing)
    else:
        from .gridopt import check_grid
        grid = check_grid(grid, steps)
    device = torch.device(device)
    out: list[Batch] = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        struct_gens = per_sample_generators(seed + 7919, n, start)
        noise_gens = per_sample_generators(seed, n, start, device=device)
        chunk_cond = (cond.select(slice(start, start + n)) if isinstance(cond, Condition)
                      else cond[start:start + n] if isinstance(cond, torch.Tensor) else cond)
        chunk_struct = (structure[start:start + n]
                        if isinstance(structure, (torch.Tensor, list, tuple)) and len(structure) == num else structure)
        if chunk_struct is None and isinstance(chunk_cond, Condition):   # e.g. atom counts given a property
            chunk_struct = domain.conditional_structure(n, data_info, chunk_cond, struct_gens)
        template = domain.template(n, data_info, struct_gens, chunk_struct)  # positional: older plug-ins named it `cond`
        template = Batch(template.x, template.space, chunk_cond, template.extras).to(device)
        x = prior_sample(schedule, template.space, template.x, t=float(grid[0]), generator=noise_gens)
        x = template.space.project(x)
        if guidance is not None:
            denoise = classifier_free_guidance(denoiser, template.space, template.cond, guidance.scale, schedule,
                                               rescale=guidance.rescale, interval=guidance.interval)
        else:
            denoise = denoiser.bind(template.space, template.cond)
        if denoise_wrapper is not None:
            denoise = denoise_wrapper(denoise, template)
        cb = (lambda info, n=n: progress(n)) if progress is not None else None
        x = fn(denoise, x, grid, schedule=schedule, space=template.space, generator=noise_gens,
               callback=cb, **sampler_options)
        out.append(domain.to_data(Batch(x, template.space, template.cond, template.extras), data_info).to("cpu"))
    return concat_batches(out)
