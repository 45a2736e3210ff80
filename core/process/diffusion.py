"""The diffusion process used for training: the diffusion objective.

:class:`Diffusion` turns a :class:`~diffuse.core.config.DiffusionConfig` into the objects the
trainer and the samplers use, and computes the per-sample training loss of a batch:

    t ~ sample_t,  eps ~ space.noise,  x_t = alpha_t x_0 + sigma_t eps,
    loss = space.reduce(weight * |F(c_in x_t, c_noise, cond) - F*|^2),  F* = (x_0 - c_skip x_t) / c_out

(Ho et al. 2020, algorithm 1, generalised by the parameterization's scalings; see
``core.process.parameterization``). The process is four independent axes, each built from its
own registry: the schedule (``core.process.schedule``), the parameterization, the training times
(``core.process.timesteps``) and the loss weighting (``core.process.loss``); the config's
``training`` preset fills the axes left open (``core.process.presets``): DDPM, continuous time
(Song et al. 2021), EDM (Karras et al. 2022) and flow matching / rectified flow (Lipman et al.
2023; Liu et al. 2023; Esser et al. 2024).

A ``coupling`` (rectified-flow reflow, :func:`diffuse.api.reflow`) is a batch whose
``extras["noise"]`` holds the noise paired with each sample: training then uses that noise
instead of an independent draw.

Condition dropout: when a batch carries a :class:`~diffuse.core.data.condition.Condition`, all of
a sample's conditions are replaced by their null values with probability ``cond_drop`` (one
Bernoulli draw per sample from the training generator, after ``t`` and ``eps``), so the model also
learns the unconditional denoiser that classifier-free guidance needs. Each condition ``k`` is
also dropped on its own with probability ``p_k`` (``cond_drop_each``; by default ``cond_drop``
for every condition of a model with two or more, none for a model with one), one more draw per
condition in name order, independent of the others (InstructPix2Pix, Brooks et al. 2023, drops
its image and text conditions apart so either can be given alone). So condition ``k`` is null
with probability ``1 - (1 - cond_drop)(1 - p_k)`` and all are null with probability
``cond_drop + (1 - cond_drop) prod_k p_k``; a model with one condition draws exactly as before.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from ..config import DiffusionConfig
from ..data.condition import Condition
from ..data.domain import Batch
from ..errors import ConfigError, UnknownNameError
from .denoiser import Denoiser
from .loss import WEIGHTINGS, DiffusionLoss
from .parameterization import PARAMETERIZATIONS, make_parameterization
from .presets import PRESETS, resolve
from .schedules import build_schedule
from .timesteps import TIME_SAMPLERS, make_time_sampler

__all__ = ["Diffusion", "TRAINING_MODES", "SamplesThroughDiffusion"]

#: the training presets (``DiffusionConfig.training``)
TRAINING_MODES = tuple(PRESETS)


class Diffusion:
    """Schedule, parameterization, training times and loss built from a :class:`DiffusionConfig`
    (its preset applied first); the objective the trainer runs for a diffusion model."""

    #: the trainer's periodic and final evaluations draw samples from models of this objective
    samples = True

    def __init__(self, config: DiffusionConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = DiffusionConfig()
        elif isinstance(config, dict):
            config = DiffusionConfig(**config)
        config = resolve(config.validate())
        self.config = config
        self.mode = config.training
        self.schedule = build_schedule(config.schedule)
        for name, value, known in (("parameterization", config.parameterization, PARAMETERIZATIONS),
                                   ("time_sampler", config.time_sampler, TIME_SAMPLERS),
                                   ("weighting", config.weighting, WEIGHTINGS)):
            if value not in known:
                raise UnknownNameError(f"diffusion.{name} must be one of {', '.join(sorted(known))}, got {value!r}")
        path = self.schedule.path
        if (config.parameterization == "flow") != (path is not None):
            raise ConfigError("the flow parameterization and a flow schedule go together (training \"flow\"); "
                              f"got parameterization {config.parameterization!r} with schedule {config.schedule!r}")
        self.param = make_parameterization(config.parameterization, time_scale=config.time_scale,
                                           sigma_data=config.sigma_data, path=path.name if path else "linear")
        self._sample_t = make_time_sampler(config.time_sampler, self.schedule, config)
        kwargs = {"gamma": config.min_snr_gamma} if config.weighting == "min_snr" else {}
        self.loss = DiffusionLoss(self.param, config.weighting, **kwargs)

    def denoiser(self, backbone: nn.Module) -> Denoiser:
        """Wrap a backbone into the :class:`Denoiser` of this process."""
        return Denoiser(backbone, self.schedule, self.param)

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        """Training times (float64, ``[n]``)."""
        return self._sample_t(n, generator=generator, device=device)

    def training_losses(self, denoiser: Denoiser, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        """Per-sample loss ``[B]`` of one batch (not yet averaged).

        ``shard = (start, stop)``: the loss of samples ``start .. stop - 1`` only (one rank's part of
        a global batch). The random draws (times, noise, condition dropout) are made for the whole
        batch first, so every sample gets the same draws whichever shard it falls in."""
        x0, space = batch.x, batch.space
        n = space.batch_size(x0)
        t = self.sample_t(n, generator, x0.device)
        eps = space.noise(x0, generator)
        coupled = (batch.extras or {}).get("noise") if isinstance(batch.extras, dict) else None
        if coupled is not None:                      # reflow: the noise paired with each sample
            eps = space.project(coupled.to(x0))
        cond = batch.cond
        if isinstance(cond, Condition):
            cond = self.drop_conditions(cond, n, generator, x0.device)
        if shard is not None:
            start, stop = shard
            eps, _ = space.take(eps, start, stop)
            x0, space = space.take(x0, start, stop)
            t = t[start:stop]
            if isinstance(cond, Condition):
                cond = cond.select(slice(start, stop))
            elif isinstance(cond, Tensor):
                cond = cond[start:stop]
        alpha, sigma = self.schedule.alpha_sigma(t)
        a, s = space.coef(alpha, x0), space.coef(sigma, x0)
        x_t = a * x0 + s * eps
        out = denoiser.raw(x_t, t, cond=cond, space=space)
        per_element = self.loss(out, x0, eps, a, s, (alpha / sigma) ** 2, space)
        return space.reduce(per_element)

    def drop_rates(self, names: Any) -> dict[str, float]:
        """``{name: p}`` of the independent per-condition drops for a model with conditions
        ``names`` (see the module docstring); a ConfigError for a rate of a condition it lacks."""
        names = sorted(names)
        each = self.config.cond_drop_each
        if each is None:
            return {k: self.config.cond_drop for k in names} if len(names) > 1 else {}
        unknown = sorted(set(each) - set(names))
        if unknown:
            raise ConfigError(f"diffusion.cond_drop_each names {', '.join(unknown)}, which this model does not take "
                              f"(its conditions: {', '.join(names) or 'none'})")
        return {k: float(each[k]) for k in names if k in each}

    def drop_conditions(self, cond: Condition, n: int, generator: torch.Generator | None,
                        device: torch.device) -> Condition:
        """Condition dropout of one batch (see the module docstring): the joint draw, then one
        draw per condition with an independent rate, in name order."""
        joint = torch.rand(n, generator=generator, device=device) < self.config.cond_drop \
            if self.config.cond_drop > 0 else None
        rates = {k: p for k, p in self.drop_rates(cond.values).items() if p > 0}
        if not rates:
            return cond.drop(joint) if joint is not None else cond
        masks = {}
        for k in sorted(cond.values):
            own = torch.rand(n, generator=generator, device=device) < rates[k] if k in rates else None
            both = [m for m in (joint, own) if m is not None]
            masks[k] = both[0] | both[1] if len(both) == 2 else (both[0] if both else None)
        return cond.drop(masks)

    # ------------------------------------------------------------------ sampling entries
    def generate(self, denoiser: Denoiser, domain: Any, num: int, **kwargs: Any) -> Batch:
        """``num`` samples (``core.sampling.generate.generate``); a mixed process has its own."""
        from ..sampling.generate import generate
        return generate(denoiser, domain, num, **kwargs)

    def generate_completion(self, denoiser: Denoiser, known: Batch, mask: Any, **kwargs: Any) -> Batch:
        """Completions of ``known`` where ``mask`` is false (``core.sampling.completion``)."""
        from ..sampling.completion import generate_completion
        return generate_completion(denoiser, known, mask, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.config)


class SamplesThroughDiffusion:
    """Base of the objectives that train a denoiser of a :class:`Diffusion` (``self.diffusion``)
    with another loss (the few-step objectives): the trainer's evaluations sample through that
    process."""

    samples = True
    diffusion: Diffusion

    def generate(self, denoiser: Denoiser, domain: Any, num: int, **kwargs: Any) -> Batch:
        """``num`` samples through the trained process (:meth:`Diffusion.generate`)."""
        return self.diffusion.generate(denoiser, domain, num, **kwargs)
