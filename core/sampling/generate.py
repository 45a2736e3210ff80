"""Drawing samples from a trained denoiser for any domain.

:func:`sampling_chunks` is the one chunked sampling loop: it splits ``num`` samples into chunks of
``batch_size``, gives every sample its own generators (noise from ``(seed, index)``, the domain's
sampling structure from ``(seed + STRUCTURE_SEED_OFFSET, index)``) and asks the domain (bound to
the model's ``data_info``, ``Domain.bind``) for a template of each chunk. Because each sample's structure and noise come only from its own
generators, the same seed gives the same samples whatever the batch size. :func:`generate`,
grid optimisation (``core.sampling.gridopt``), reflow's pairs and the evaluation cost estimate
all draw their chunks from it.

``cond`` is the network condition of all ``num`` samples (a
:class:`~diffuse.core.data.condition.Condition`, sliced per chunk), ``structure`` the sampling
structure the domain's template takes (atom counts...), and ``guidance`` the list of denoiser
wrappers (``core.sampling.guidance``: classifier-free guidance, classifier guidance, or your own),
applied in order to each chunk's denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from ..data.condition import Condition
from ..data.domain import Batch, Domain
from ..data.space import per_sample_generators
from ..errors import UserInputError
from ..validation import check_positive_int, check_seed
from .common import prior_sample
from .grids import SPACINGS, check_grid, time_grid
from .guidance import DenoiserWrapper, wrap_denoiser
from .registry import check_sampler_options, default_spacing, default_steps, sampler_record

__all__ = ["generate", "sampling_chunks", "Chunk", "check_generate_args", "check_condition", "concat_batches",
           "sampling_grid", "STRUCTURE_SEED_OFFSET"]

#: the per-sample generators of a chunk's sampling structure (atom counts ...) are seeded from
#: ``(seed + STRUCTURE_SEED_OFFSET, index)``: a stream apart from the noise's ``(seed, index)``
STRUCTURE_SEED_OFFSET = 7919


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


def check_generate_args(num: int, *, sampler: str = "ddim", steps: int | None = None, spacing: str | None = None,
                        seed: int = 0, batch_size: int = 64, options: dict[str, Any] | None = None) -> None:
    """Check what :func:`generate` is asked for (types, ranges, the sampler and its options)
    before anything runs; a UserInputError naming the argument otherwise."""
    check_positive_int("the number of samples", num)
    check_positive_int("the batch size", batch_size)
    if steps is not None:
        check_positive_int("the number of sampling steps", steps)
    check_seed(seed)
    if spacing is not None and spacing not in SPACINGS:
        raise UserInputError(f"unknown time spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    check_sampler_options(sampler, options or {})


def sampling_grid(schedule, sampler: str, steps: int | None, spacing: str | None):
    """The descending time grid a sampler runs on: ``steps`` (default: the sampler record's) with
    ``spacing`` (default :func:`~diffuse.core.sampling.registry.default_spacing`: the schedule's own,
    e.g. uniform in t for flow paths; else Karras for non-VP schedules, and for VP ones the
    record's ``vp_grid``)."""
    steps = default_steps(sampler, schedule) if steps is None else steps
    return time_grid(schedule, steps, default_spacing(schedule, sampler, steps) if spacing is None else spacing)


def check_condition(cond: Any, guidance: Any, num: int) -> None:
    """A UserInputError for classifier-free guidance without a condition, or a condition of another size."""
    if guidance is not None and not isinstance(cond, Condition):
        raise UserInputError("guidance needs a condition (e.g. a label) to guide towards")
    if isinstance(cond, (Condition, torch.Tensor)) and len(cond) != num:
        raise UserInputError(f"the condition holds {len(cond)} samples, expected {num}")


@dataclass
class Chunk:
    """One chunk of a sampling run: samples ``start .. start + n - 1``, their template (zeros with
    the right shapes, bound Space and condition, on the device) and their per-sample generators."""

    start: int
    n: int
    template: Batch
    noise_gens: list[torch.Generator]
    struct_gens: list[torch.Generator]


def sampling_chunks(domain: Domain, num: int, *, seed: int = 0, batch_size: int = 64,
                    device: torch.device | str = "cpu", cond: Any = None, structure: Any = None) -> Iterator[Chunk]:
    """The chunks of a run of ``num`` samples (see the module docstring). ``structure`` (a
    per-sample tensor or list of ``num``, or one value for all) goes to ``domain.template``; where
    none is given and the chunk has a :class:`Condition`, the domain may draw it given the
    condition (``Domain.conditional_structure``, e.g. atom counts given a property)."""
    device = torch.device(device)
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        struct_gens = per_sample_generators(seed + STRUCTURE_SEED_OFFSET, n, start)
        noise_gens = per_sample_generators(seed, n, start, device=device)
        chunk_cond = (cond.select(slice(start, start + n)) if isinstance(cond, Condition)
                      else cond[start:start + n] if isinstance(cond, torch.Tensor) else cond)
        chunk_struct = (structure[start:start + n]
                        if isinstance(structure, (torch.Tensor, list, tuple)) and len(structure) == num else structure)
        if chunk_struct is None and isinstance(chunk_cond, Condition):
            chunk_struct = domain.conditional_structure(n, chunk_cond, struct_gens)
        template = domain.template(n, struct_gens, chunk_struct)
        template = Batch(template.x, template.space, chunk_cond, template.extras).to(device)
        yield Chunk(start, n, template, noise_gens, struct_gens)


@torch.no_grad()
def generate(denoiser, domain: Domain, num: int, *, sampler: str = "ddim",
             steps: int | None = None, spacing: str | None = None, seed: int = 0, batch_size: int = 64,
             device: torch.device | str = "cpu", cond: Any = None, progress: Callable[[int], None] | None = None,
             structure: Any = None, guidance: Sequence[DenoiserWrapper] = (), grid: torch.Tensor | None = None,
             **sampler_options) -> Batch:
    """Draw ``num`` samples of a bound ``domain``. ``progress(n)`` is called after each sampler step
    with the chunk's size.

    ``cond``: a :class:`Condition` of ``num`` samples (or ``None``; a raw tensor is passed to
    the backbone as is). ``structure``: given to ``domain.template`` (a per-sample tensor or
    list is sliced per chunk). ``guidance``: denoiser wrappers applied in order to each chunk
    (``core.sampling.guidance``; classifier-free guidance needs ``cond``). ``grid``: an explicit
    descending time grid (e.g. an optimised one, ``core.sampling.gridopt``) instead of ``steps``
    / ``spacing``. Arguments, sampler options and the domain's structure
    (``Domain.check_structure``) are checked first. Returns one :class:`Batch` on CPU with all
    samples (``cond`` carried along), in data space (``domain.to_data``: a latent model's samples
    are decoded chunk by chunk).
    """
    check_generate_args(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size,
                        options=sampler_options)
    domain.check_structure(structure, batch_size=min(batch_size, num))
    fn = sampler_record(sampler).fn
    schedule = denoiser.schedule
    wrappers = list(guidance)
    check_condition(cond, next((w for w in wrappers if getattr(w, "needs_condition", False)), None), num)
    if grid is None:
        if spacing is None:
            spacing = domain.default_spacing(schedule, sampler, steps)
        grid = sampling_grid(schedule, sampler, steps, spacing)
    else:
        grid = check_grid(grid, steps)
    out: list[Batch] = []
    for chunk in sampling_chunks(domain, num, seed=seed, batch_size=batch_size, device=device, cond=cond,
                                 structure=structure):
        tpl = chunk.template
        x = tpl.space.project(prior_sample(schedule, tpl.space, tpl.x, t=float(grid[0]), generator=chunk.noise_gens))
        denoise = wrap_denoiser(denoiser, tpl, wrappers, start=chunk.start)
        cb = (lambda info, n=chunk.n: progress(n)) if progress is not None else None
        x = fn(denoise, x, grid, schedule=schedule, space=tpl.space, generator=chunk.noise_gens, callback=cb,
               **sampler_options)
        out.append(domain.to_data(Batch(x, tpl.space, tpl.cond, tpl.extras)).to("cpu"))
    return concat_batches(out)
