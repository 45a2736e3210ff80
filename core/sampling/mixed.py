"""Sampling a mixed state: every component steps with its own rule on one shared time grid.

:func:`sample_mixed` walks a descending grid ``zip(grid[:-1], grid[1:])``; at each step the
network is evaluated once for the whole state (``denoise(x, t, prev) -> MixedPrediction``,
``prev`` the previous step's prediction for a self-conditioned network), then each component
takes its step with that prediction (``core.process.components``): a Gaussian component with the
one-evaluation sampler ``sampler`` of ``core.sampling.registry`` (``ddpm``, ``ddim``,
``flow_euler``, ``euler_maruyama``..., called on the step's two-point grid; a multistep solver
thus takes its first-order step), a categorical one with its rule (``d3pm``, ``dfm_euler``,
``tau_leaping``; ``categorical=`` overrides every categorical component's). No state survives
between calls but the explicit ``prev``.

Guidance (:class:`MixedGuidance`, what :class:`~diffuse.core.sampling.guidance.Guidance` becomes on
a mixed state): classifier-free guidance with both passes as one batched call, per component:
Gaussian ``x0_u + s (x0_c - x0_u)`` (and eps alike), categorical on log-probabilities
``log p_u + s (log p_c - log p_u)`` renormalised (an element both passes know exactly stays as
it is); ``interval`` as for one tensor (the clock's noise level); ``rescale`` is refused.

Completion (:func:`complete_mixed`): known values and a mask per component (a State of boolean
masks broadcastable to each component: fixed atoms and the bonds among them); after each step
the known part is re-imposed from ``q(x_s | x_0 = known)`` (Gaussian: RePaint with the frame
shift of translation-free spaces; categorical: a fresh draw from the path's marginal), and the
result holds the known values exactly.

:func:`generate_mixed` and :func:`generate_completion_mixed` are the trained-model entries (the
mixed process's ``generate`` / ``generate_completion``), sharing ``generate.sampling_chunks``, so
the same seed gives the same samples whatever the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..data.condition import Condition
from ..data.domain import Batch
from ..data.product import ProductSpace, State
from ..data.space import GeneratorLike, per_sample_generators
from ..errors import NotSupportedError, UserInputError
from ..process.components import MixedPrediction
from .categorical import CATEGORICAL_RULES
from .generate import check_condition, check_generate_args, concat_batches, sampling_chunks, sampling_grid
from .grids import check_grid
from .registry import sampler_record

__all__ = ["sample_mixed", "MixedGuidance", "mixed_guidance", "complete_mixed", "generate_mixed",
           "generate_completion_mixed", "check_mixed_sampler", "mixed_prior"]

_F64 = torch.float64
MixedDenoise = Callable[..., Any]


def check_mixed_sampler(sampler: str, categorical: str | None = None, options: dict[str, Any] | None = None):
    """The sampler function for the Gaussian components (it must take one network evaluation per
    step) after checking its options and the categorical rule; a UserInputError otherwise."""
    record = sampler_record(sampler)
    if record.evals_per_step != 1:
        raise UserInputError(f"sampler {sampler!r} takes {record.evals_per_step or 'an adaptive number of'} network "
                             "evaluations per step; a mixed-state model steps every component on one evaluation "
                             "(use ddpm, ddim, euler_maruyama, ode_euler, flow_euler or flow_sde)")
    if categorical is not None and categorical not in CATEGORICAL_RULES:
        raise UserInputError(f"unknown categorical sampler {categorical!r}; expected one of "
                             f"{', '.join(CATEGORICAL_RULES)}")
    check_generate_args(1, sampler=sampler, options=options or {})
    return record.fn


def mixed_prior(components: dict[str, Any], space: ProductSpace, like: State, t: float,
                generator: GeneratorLike) -> State:
    """The start of sampling at time ``t``: each component's prior draw (in the components' order)."""
    return State({k: c.prior(like[k], space[k], t, generator) for k, c in components.items()})


def _step(denoise: MixedDenoise, x: State, t: float, s: float, prev: Any, *, components: dict[str, Any],
          space: ProductSpace, generator: GeneratorLike, fn: Callable[..., Tensor], categorical: str | None,
          options: dict[str, Any]) -> tuple[State, Any]:
    """One network evaluation at ``t``, then every component's step to ``s``: ``(x_s, prediction)``."""
    n = space.batch_size(x)
    device = next(iter(x.values())).device
    pred = denoise(x, torch.full((n,), t, dtype=_F64, device=device), prev)
    x = State({k: c.step(x[k], pred[k], t, s, space[k], generator, sampler=fn, rule=categorical, options=options)
               for k, c in components.items()})
    return x, pred


@torch.no_grad()
def sample_mixed(denoise: MixedDenoise, x: State, grid: Tensor, *, components: dict[str, Any], space: ProductSpace,
                 generator: GeneratorLike = None, callback: Callable[[dict[str, Any]], None] | None = None,
                 sampler: str = "ddpm", categorical: str | None = None, self_condition: bool = True,
                 **options: Any) -> State:
    """Sample a mixed state from ``x`` at ``grid[0]`` (see the module docstring). ``options`` go to
    the Gaussian components' sampler; ``self_condition``: pass each step's prediction to the next."""
    fn = check_mixed_sampler(sampler, categorical, options)
    grid = torch.as_tensor(grid, dtype=_F64)
    prev = None
    for i, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        x, pred = _step(denoise, x, t, s, prev, components=components, space=space, generator=generator, fn=fn,
                        categorical=categorical, options=options)
        prev = pred if self_condition else None
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0": pred})
    return x


# ---------------------------------------------------------------------------- guidance
def _take(components: dict[str, Any], pred: dict[str, Any], space: ProductSpace, start: int, stop: int) -> dict:
    return {k: c.take(pred[k], space[k], start, stop) for k, c in components.items()}


def mixed_guidance(denoiser: Any, space: ProductSpace, cond: Condition, scale: float, *,
                   interval: tuple[float, float] | None = None, rescale: float = 0.0) -> MixedDenoise:
    """A classifier-free guided ``denoise(x, t, prev)`` of a mixed denoiser (module docstring)."""
    if not isinstance(cond, Condition):
        raise UserInputError("classifier-free guidance needs a condition (e.g. a property value)")
    if rescale:
        raise NotSupportedError("guidance rescale is not supported for mixed-state models")
    components, schedule = denoiser.components, denoiser.schedule
    null = cond.null()
    both = Condition.concat([cond, null])
    scale = float(scale)

    def denoise(x: State, t: Tensor, prev: Any = None) -> Any:
        if scale == 0.0:
            return denoiser(x, t, cond=null, space=space, prev=prev)
        if scale == 1.0:
            return denoiser(x, t, cond=cond, space=space, prev=prev)
        if interval is not None:
            alpha, sigma = schedule.alpha_sigma(t[:1].to(_F64))
            level = float(sigma / alpha) if float(alpha) > 0 else float("inf")
            if not interval[0] <= level <= interval[1]:
                return denoiser(x, t, cond=cond, space=space, prev=prev)
        n = space.batch_size(x)
        x2, sp2 = space.concat([x, x], [space, space])
        prev2 = None
        if prev is not None:
            prev2 = MixedPrediction({k: _cat_pred(c, prev[k], space[k]) for k, c in components.items()})
        out = denoiser(x2, torch.cat([t, t]), cond=both, space=sp2, prev=prev2)
        p_c, p_u = _take(components, out, sp2, 0, n), _take(components, out, sp2, n, 2 * n)
        return MixedPrediction({k: c.guide(p_u[k], p_c[k], scale) for k, c in components.items()})

    return denoise


def _cat_pred(component: Any, pred: Any, space: Any) -> Any:
    if isinstance(pred, Tensor):
        return space.concat([pred, pred], [space, space])[0]
    return type(pred)(*(space.concat([v, v], [space, space])[0] for v in pred))


@dataclass
class MixedGuidance:
    """Classifier-free guidance of a mixed-state model (the settings of
    :class:`~diffuse.core.sampling.guidance.Guidance`)."""

    scale: float = 1.0
    rescale: float = 0.0
    interval: tuple[float, float] | None = None
    needs_condition = True

    @classmethod
    def of(cls, wrapper: Any) -> "MixedGuidance":
        """The mixed form of a guidance wrapper; classifier guidance has none (a NotSupportedError)."""
        if isinstance(wrapper, MixedGuidance):
            return wrapper
        if hasattr(wrapper, "scale") and hasattr(wrapper, "interval") and hasattr(wrapper, "rescale"):
            return cls(float(wrapper.scale), float(wrapper.rescale), wrapper.interval)
        raise NotSupportedError(f"{type(wrapper).__name__} is not supported for mixed-state models (only "
                                "classifier-free guidance is)")

    def wrap(self, denoise: MixedDenoise, *, batch: Batch, denoiser: Any, start: int = 0) -> MixedDenoise:
        return mixed_guidance(denoiser, batch.space, batch.cond, self.scale, interval=self.interval,
                              rescale=self.rescale)


# ---------------------------------------------------------------------------- completion
def _masks(mask: Any, x: State) -> dict[str, Tensor]:
    if not isinstance(mask, dict):
        raise UserInputError("completion of a mixed state needs a mask per component ({name: mask})")
    out = {}
    for k, v in x.items():
        m = torch.as_tensor(mask.get(k, False), device=v.device)
        m = m > 0.5 if m.dtype != torch.bool else m
        try:
            out[k] = m.expand_as(v) if m.ndim == v.ndim else m.reshape(m.shape + (1,) * (v.ndim - m.ndim)).expand_as(v)
        except RuntimeError:
            raise UserInputError(f"the {k} mask's shape {tuple(m.shape)} does not match the component's "
                                 f"{tuple(v.shape)}") from None
    return out


@torch.no_grad()
def complete_mixed(denoise: MixedDenoise, x: State, grid: Tensor, *, known: State, mask: Any,
                   components: dict[str, Any], space: ProductSpace, generator: GeneratorLike = None,
                   callback: Callable[[dict[str, Any]], None] | None = None, sampler: str = "ddpm",
                   categorical: str | None = None, self_condition: bool = True, **options: Any) -> State:
    """Complete ``known`` where ``mask`` (per component) is false, from ``x`` at ``grid[0]``; the
    known part is re-imposed after every step and exact in the result (module docstring)."""
    grid = torch.as_tensor(grid, dtype=_F64)
    if len(grid) < 2:
        raise UserInputError("completion needs a grid of at least one step")
    masks = _masks(mask, x)
    known = State({k: v.to(x[k].device) for k, v in known.items()})

    def impose(state: State, s: float) -> State:
        return State({k: c.impose(state[k], known[k], masks[k], s, space[k], generator)
                      for k, c in components.items()})

    fn = check_mixed_sampler(sampler, categorical, options)
    x = impose(x, float(grid[0]))
    prev = None
    for i, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        x, pred = _step(denoise, x, t, s, prev, components=components, space=space, generator=generator, fn=fn,
                        categorical=categorical, options=options)
        x = impose(x, s)
        prev = pred if self_condition else None
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0": pred})
    return State({k: c.finish(x[k], known[k], masks[k], space[k]) for k, c in components.items()})


# ---------------------------------------------------------------------------- from a trained model
def _wrappers(guidance: Sequence[Any]) -> list[MixedGuidance]:
    return [MixedGuidance.of(w) for w in guidance]


@torch.no_grad()
def generate_mixed(denoiser, domain, num: int, *, sampler: str = "ddpm", steps: int | None = None,
                   spacing: str | None = None, seed: int = 0, batch_size: int = 64,
                   device: torch.device | str = "cpu", cond: Any = None, progress: Callable[[int], None] | None = None,
                   structure: Any = None, guidance: Sequence[Any] = (), grid: Tensor | None = None,
                   categorical: str | None = None, **sampler_options: Any) -> Batch:
    """Draw ``num`` mixed samples of a bound ``domain`` (the arguments of
    :func:`~diffuse.core.sampling.generate.generate`, plus ``categorical``: the rule of every
    categorical component instead of each one's own). Returns one Batch on CPU in data space."""
    check_generate_args(num, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=batch_size)
    check_mixed_sampler(sampler, categorical, sampler_options)
    domain.check_structure(structure, batch_size=min(batch_size, num))
    wrappers = _wrappers(guidance)
    check_condition(cond, wrappers[0] if wrappers else None, num)
    schedule = denoiser.schedule
    if grid is None:
        grid = sampling_grid(schedule, sampler, steps, spacing)
    else:
        grid = check_grid(grid, steps)
    out: list[Batch] = []
    for chunk in sampling_chunks(domain, num, seed=seed, batch_size=batch_size, device=device, cond=cond,
                                 structure=structure):
        tpl = chunk.template
        denoise = denoiser.bind(tpl.space, tpl.cond)
        for w in wrappers:
            denoise = w.wrap(denoise, batch=tpl, denoiser=denoiser, start=chunk.start)
        x = mixed_prior(denoiser.components, tpl.space, tpl.x, float(grid[0]), chunk.noise_gens)
        cb = (lambda info, n=chunk.n: progress(n)) if progress is not None else None
        x = sample_mixed(denoise, x, grid, components=denoiser.components, space=tpl.space, generator=chunk.noise_gens,
                         callback=cb, sampler=sampler, categorical=categorical,
                         self_condition=denoiser.self_conditioning, **sampler_options)
        out.append(domain.to_data(Batch(x, tpl.space, tpl.cond, tpl.extras)).to("cpu"))
    return concat_batches(out)


@torch.no_grad()
def generate_completion_mixed(denoiser, known: Batch, mask: Any, *, sampler: str = "ddpm", steps: int | None = None,
                              spacing: str | None = None, seed: int = 0, device: torch.device | str = "cpu",
                              cond: Any = None, guidance: Any = None, jump_length: int = 1, resample: int = 1,
                              progress: Callable[[int], None] | None = None, categorical: str | None = None,
                              **sampler_options: Any) -> Batch:
    """Complete every sample of ``known`` (a Batch of mixed states in model space) where ``mask``
    (``{component: mask}``) is false; sample ``i`` draws only from generator ``(seed, i)``."""
    if resample != 1:     # (the jump length only matters with resampling)
        raise NotSupportedError("RePaint resampling (resample > 1) is not supported for mixed-state models")
    n = len(known)
    check_generate_args(n, sampler=sampler, steps=steps, spacing=spacing, seed=seed, batch_size=max(n, 1))
    check_mixed_sampler(sampler, categorical, sampler_options)
    wrappers = _wrappers([guidance] if guidance is not None else [])
    check_condition(cond, wrappers[0] if wrappers else None, n)
    grid = sampling_grid(denoiser.schedule, sampler, steps, spacing)
    device = torch.device(device)
    b = Batch(known.x, known.space, cond, known.extras).to(device)
    denoise = denoiser.bind(b.space, b.cond)
    for w in wrappers:
        denoise = w.wrap(denoise, batch=b, denoiser=denoiser, start=0)
    gens = per_sample_generators(seed, n, 0, device=device)
    x = mixed_prior(denoiser.components, b.space, b.x, float(grid[0]), gens)
    cb = (lambda info: progress(n)) if progress is not None else None
    x = complete_mixed(denoise, x, grid, known=b.x, mask=mask, components=denoiser.components, space=b.space,
                       generator=gens, callback=cb, sampler=sampler, categorical=categorical,
                       self_condition=denoiser.self_conditioning, **sampler_options)
    return Batch(x, b.space, b.cond, b.extras).to("cpu")
