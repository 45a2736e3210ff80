"""Completion (inpainting) and editing (SDEdit): wrappers around the sampling loop.

**Completion.** Given known values ``known`` and a boolean ``mask`` (true where the value is
known; broadcastable to ``x``, in the Space's layout: pixels ``[B, 1|C, H, W]``, audio samples
``[B, 1|C, L]``, atoms ``[N, 1|D]``), :func:`complete` runs any sampler of ``core.sampling.registry`` one
grid step at a time and, after each step ``t -> s``, re-imposes the known part from the forward
process (Lugmayr et al. 2022, "RePaint", eq. 8):

    x_s <- mask * (alpha_s known + sigma_s z) + (1 - mask) * x_s,      z ~ space.noise

so the unknown part comes from the model and the known part from ``q(x_s | x_0 = known)``. The
noise ``z`` is drawn from the same (per-sample) generators as the sampler's, so a seed gives the
same completion whatever the batch size. The output's known part equals ``known`` exactly.

*RePaint resampling* (``jump_length = j``, ``resample = r``): the grid is walked in blocks of
``j`` steps; each block is run ``r`` times, and between runs the state jumps back up from the
block's end ``t_b`` to its start ``t_a`` by the forward transition
``x_a = (alpha_a / alpha_b) x_b + sqrt(sigma_a^2 - (alpha_a / alpha_b)^2 sigma_b^2) z``, which lets
the unknown part harmonise with the known one. ``r = 1`` is plain replacement. A run costs
``r`` times the steps (:func:`completion_steps`).

*Every sampler*: a sampler is called on two-point grids ``[t, s]``, so single-step samplers
(ddpm, ddim, euler_maruyama, pc, ode_euler, ode_heun, edm_heun) take exactly their usual steps;
multistep ones (dpmpp_2m / 3m) restart their history at each re-imposition (their first-order
step: the state was changed from outside, so the history no longer describes it), and ``rk45``
integrates each step adaptively. ``s_churn`` (edm_heun), a per-grid amount, is divided by the
grid's step count so that it means what it means on the whole grid.

*Translation-free spaces* (molecules: positions with zero centre of mass, ``GraphSpace``): what
is known is the fixed atoms' geometry, not where they sit in the zero-CoM frame. Write a state as
``u`` (the known atoms relative to their centroid) and ``v`` (the free atoms relative to that
centroid): both are translation-free, so the forward process acts on them as
``u_t = alpha u_0 + sigma u(z)``, ``v_t = alpha v_0 + sigma v(z)`` with ``u(z)`` and ``v(z)``
independent (for zero-CoM noise ``z``, ``Cov(z_i - zbar_K, z_j - zbar_K) = 0`` for a known atom
``i`` and a free ``j``). RePaint in these coordinates re-imposes ``u_t`` from the fragment and
keeps the model's ``v_t``: the known atoms are placed at ``alpha known + sigma z`` shifted into
the sample's current frame (``Space.frame_shift``, as DiffSBDD's inpainting does, Schneuing et
al. 2022) with the noise's own mean over the known atoms removed, so the known centroid, and with
it ``v``, is left exactly where the sampler put it. (Adding the noise with its mean, as a plain
replacement would, kicks ``v`` by ``sigma zbar_K`` at every step: on an exact Gaussian problem
that made one-pass completion farther from the true conditional than ignoring the fragment.)
The known atoms keep their geometry exactly; the result is returned in the frame of ``known``
(the fragment's frame), not centred. Dense spaces have no such shift.

**Editing** (SDEdit, Meng et al. 2022): :func:`sdedit` noises an input to ``t0`` (the first
``round(strength * steps)`` steps of the grid are skipped, as diffusers' img2img does) and
denoises on the grid's tail. ``strength = 0`` returns the input; ``strength = 1`` starts from the
prior draw exactly like unconditional sampling (the input's residual weight ``alpha_T`` is
dropped), so it equals unconditional sampling from the same noise. ``invert=True`` is the
deterministic variant: the input is encoded to ``t0`` by DDIM inversion and decoded by DDIM.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
from torch import Tensor

from ..data.domain import Batch
from ..data.space import GeneratorLike, Space, per_sample_generators
from ..errors import UserInputError
from ..process.schedule import Schedule
from .ancestral import ddim, ddim_invert
from .common import grid_coefs as _grid_coefs, prior_sample
from .generate import check_condition, check_generate_args, sampling_grid
from .guidance import Guidance, wrap_denoiser
from .registry import get_sampler

__all__ = ["complete", "completion_steps", "sdedit", "sdedit_grid", "generate_completion", "generate_edit",
           "check_completion_args", "check_strength"]

Callback = Callable[[dict[str, Any]], None]


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise UserInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def completion_steps(steps: int, jump_length: int = 1, resample: int = 1) -> int:
    """Sampler steps a completion over ``steps`` grid steps takes (each block of ``jump_length``
    steps runs ``resample`` times)."""
    return int(steps) * int(resample)


def check_completion_args(jump_length: Any = 1, resample: Any = 1) -> None:
    """``ValueError`` naming the argument unless both are positive integers."""
    _count("the RePaint jump length", jump_length)
    _count("the number of RePaint resamplings", resample)


def _mask_like(mask: Tensor | bool, x: Tensor) -> Tensor:
    m = torch.as_tensor(mask, device=x.device)
    if m.dtype != torch.bool:
        m = m > 0.5
    try:
        return m.expand_as(x) if m.ndim == x.ndim else m.reshape(m.shape + (1,) * (x.ndim - m.ndim)).expand_as(x)
    except RuntimeError:
        raise UserInputError(f"the mask's shape {tuple(m.shape)} does not match the samples' {tuple(x.shape)}") from None


@torch.no_grad()
def complete(sampler: str | Callable[..., Tensor], denoise, x: Tensor, grid: Tensor, *, known: Tensor,
             mask: Tensor, schedule: Schedule, space: Space, generator: GeneratorLike = None,
             callback: Callback | None = None, jump_length: int = 1, resample: int = 1,
             **options: Any) -> Tensor:
    """Complete ``known`` where ``mask`` is false with ``sampler`` (a name or a sampler function)
    started from ``x`` at ``grid[0]`` (see the module docstring). ``options`` go to the sampler.
    The callback sees every sampler step, numbered across resamplings (``i``)."""
    check_completion_args(jump_length, resample)
    fn = get_sampler(sampler) if isinstance(sampler, str) else sampler
    grid = torch.as_tensor(grid, dtype=torch.float64)
    n = len(grid) - 1
    if n < 1:
        raise UserInputError("completion needs a grid of at least one step")
    known = known.to(device=x.device, dtype=x.dtype)
    if known.shape != x.shape:
        raise UserInputError(f"the known values' shape {tuple(known.shape)} does not match the samples' {tuple(x.shape)}")
    mask = _mask_like(mask, x)
    coefs = _grid_coefs(schedule, grid)
    if "s_churn" in options:   # a per-grid amount (gamma = s_churn / N): keep its meaning on 1-step calls
        options = {**options, "s_churn": float(options["s_churn"]) / n}
    counter = [0]

    def impose(x: Tensor, k: int) -> Tensor:
        a, s = coefs[k]
        target = a * known
        value = target + space.frame_shift(x, target, mask)
        if s > 0:
            z = space.noise(x, generator)
            # translation-free spaces: the fresh noise must not move the known atoms' centroid
            # (that would add noise to where the free atoms sit relative to them at every step)
            value = value + s * (z - space.frame_shift(z, torch.zeros_like(z), mask))
        return space.project(torch.where(mask, value, x))

    def step_callback(info: dict[str, Any]) -> None:
        if callback is not None:
            callback({**info, "i": counter[0]})
        counter[0] += 1

    x = impose(x, 0)
    for a in range(0, n, jump_length):
        b = min(a + jump_length, n)
        for rep in range(resample):
            for i in range(a, b):
                x = fn(denoise, x, grid[i:i + 2], schedule=schedule, space=space, generator=generator,
                       callback=step_callback, **options)
                x = impose(x, i + 1)
            if rep < resample - 1:    # RePaint: jump back up from grid[b] to grid[a]
                (a_a, s_a), (a_b, s_b) = coefs[a], coefs[b]
                r = a_a / a_b
                std = math.sqrt(max(s_a ** 2 - r ** 2 * s_b ** 2, 0.0))
                x = space.project(r * x + std * space.noise(x, generator))
    a_end = coefs[-1][0]
    shift = space.frame_shift(x, a_end * known, mask)
    return torch.where(mask, known, x - shift)


def sdedit_grid(grid: Tensor, strength: float) -> Tensor:
    """The tail of ``grid`` (``steps + 1`` times) that SDEdit runs at ``strength`` in [0, 1]:
    its last ``round(strength * steps)`` steps (one point, the end, at strength 0)."""
    s = _strength(strength)
    steps = len(grid) - 1
    k = int(round(s * steps))
    return grid[steps - k:]


def check_strength(strength: Any) -> float:
    """The edit strength as a float in [0, 1]; ``ValueError`` otherwise."""
    return _strength(strength)


def _strength(strength: Any) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise UserInputError(f"the edit strength must be a number in [0, 1], got {strength!r}") from None
    if isinstance(strength, bool) or not 0.0 <= s <= 1.0:   # NaN fails too
        raise UserInputError(f"the edit strength must be a number in [0, 1], got {strength!r}")
    return s


@torch.no_grad()
def sdedit(sampler: str | Callable[..., Tensor], denoise, x0: Tensor, grid: Tensor, *, strength: float,
           schedule: Schedule, space: Space, generator: GeneratorLike = None, callback: Callback | None = None,
           invert: bool = False, fixed_point_iters: int = 0, **options: Any) -> Tensor:
    """SDEdit of ``x0`` on ``grid`` (the full sampling grid) at ``strength`` (module docstring).

    ``invert=False``: ``x_t0 = alpha x0 + sigma z`` (``z`` from ``generator``; at strength 1 the
    prior draw ``prior_sample`` would make from the same generator), then ``sampler``.
    ``invert=True``: ``x_t0 = ddim_invert(x0)`` (``fixed_point_iters`` as there), then DDIM with
    ``eta = 0``; deterministic, and ``sampler`` must be ``"ddim"``."""
    tail = sdedit_grid(torch.as_tensor(grid, dtype=torch.float64), strength)
    if len(tail) < 2:
        return x0.clone()
    if invert:
        if sampler not in ("ddim", ddim):
            raise UserInputError("the DDIM-inversion edit decodes with the ddim sampler; choose --sampler ddim")
        if options.get("eta", 0.0) != 0.0:
            raise UserInputError("the DDIM-inversion edit is deterministic: eta must be 0")
        xt = ddim_invert(denoise, x0, tail, schedule=schedule, space=space, fixed_point_iters=fixed_point_iters)
        return ddim(denoise, xt, tail, schedule=schedule, space=space, generator=generator, callback=callback, eta=0.0)
    fn = get_sampler(sampler) if isinstance(sampler, str) else sampler
    if len(tail) == len(grid):
        xt = space.project(prior_sample(schedule, space, x0, t=float(tail[0]), generator=generator))
    else:
        a, s = (float(v) for v in schedule.alpha_sigma(tail[0]))
        xt = space.project(a * x0 + s * space.noise(x0, generator))
    return fn(denoise, xt, tail, schedule=schedule, space=space, generator=generator, callback=callback, **options)


# ---------------------------------------------------------------------------- from a trained model
def _setup(denoiser, batch: Batch, *, sampler: str, steps: int | None, spacing: str | None, seed: int,
           device: Any, cond: Any, guidance: Guidance | None, options: dict[str, Any]):
    n = len(batch)
    check_generate_args(n, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=max(n, 1),
                        options=options)
    check_condition(cond, guidance, n)
    grid = sampling_grid(denoiser.schedule, sampler, steps, spacing)
    device = torch.device(device)
    b = Batch(batch.x, batch.space, cond, batch.extras).to(device)
    denoise = wrap_denoiser(denoiser, b, [guidance] if guidance is not None else [])
    gens = per_sample_generators(seed, n, 0, device=device)
    return b, grid, denoise, gens


@torch.no_grad()
def generate_completion(denoiser, known: Batch, mask: Tensor, *, sampler: str = "ddpm", steps: int | None = None,
                        spacing: str | None = None, seed: int = 0, device: torch.device | str = "cpu",
                        cond: Any = None, guidance: Guidance | None = None, jump_length: int = 1,
                        resample: int = 1, progress: Callable[[int], None] | None = None,
                        **sampler_options: Any) -> Batch:
    """Complete the samples of ``known`` (a :class:`Batch` in model space; one completion per
    sample: repeat it for variations) where ``mask`` is false, with a trained denoiser.
    ``progress(n)`` after each sampler step. Sample ``i`` draws only from generator ``(seed, i)``.
    Returns a Batch on CPU."""
    check_completion_args(jump_length, resample)
    b, grid, denoise, gens = _setup(denoiser, known, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                    device=device, cond=cond, guidance=guidance, options=sampler_options)
    x = b.space.project(prior_sample(denoiser.schedule, b.space, b.x, t=float(grid[0]), generator=gens))
    cb = (lambda info: progress(len(b))) if progress is not None else None
    x = complete(sampler, denoise, x, grid, known=b.x, mask=torch.as_tensor(mask).to(b.x.device),
                 schedule=denoiser.schedule, space=b.space, generator=gens, callback=cb,
                 jump_length=jump_length, resample=resample, **sampler_options)
    return Batch(x, b.space, b.cond, b.extras).to("cpu")


@torch.no_grad()
def generate_edit(denoiser, batch: Batch, *, strength: float, sampler: str = "ddim", steps: int | None = None,
                  spacing: str | None = None, seed: int = 0, device: torch.device | str = "cpu", cond: Any = None,
                  guidance: Guidance | None = None, invert: bool = False, fixed_point_iters: int = 0,
                  progress: Callable[[int], None] | None = None, **sampler_options: Any) -> Batch:
    """SDEdit every sample of ``batch`` (model space) at ``strength`` with a trained denoiser
    (see :func:`sdedit`). Returns a Batch on CPU."""
    _strength(strength)
    b, grid, denoise, gens = _setup(denoiser, batch, sampler=sampler, steps=steps, spacing=spacing, seed=seed,
                                    device=device, cond=cond, guidance=guidance, options=sampler_options)
    cb = (lambda info: progress(len(b))) if progress is not None else None
    x = sdedit(sampler, denoise, b.x, grid, strength=strength, schedule=denoiser.schedule, space=b.space,
               generator=gens, callback=cb, invert=invert, fixed_point_iters=fixed_point_iters, **sampler_options)
    return Batch(x, b.space, b.cond, b.extras).to("cpu")
