"""The mixed process: a sample as a product of components, one denoiser, one loss.

A mixed state (``core.data.product.State`` on a ``ProductSpace``) has several components, each
with its own process (``core.process.components``: Gaussian on its own schedule, or categorical
on its own path) on one shared time ``t`` (1 = noise, 0 = data), as MiDi (Vignac et al. 2023)
and SemlaFlow (Irwin et al. 2024) give coordinates, atom types, charges and bonds their own
noise schedules in one model. The run config says which (``DiffusionConfig.components``), the
data what each component is (``data_info["components"]``: its kind, number of classes and class
frequencies).

Training (:meth:`MixedDiffusion.training_losses`)::

    t ~ sample_t                                      (one time per sample, shared)
    x_t[c] ~ q_c(x_t | x_0[c])  for every component c (in the order of the specs)
    out = backbone({c: c_in x_t[c]}, t * time_scale, cond, space[, self_cond])
    loss = sum_c weight_c * loss_c(out[c], x_0[c])    (per sample, each the mean over c's elements)

with condition dropout as in ``core.process.diffusion`` and, for a backbone that declares
``self_conditioning = True``, self-conditioning (Chen et al. 2023, "Analog Bits"): on half of the
batches (one draw per batch) the network first predicts without it, and that prediction, detached,
is its extra input; at sampling every step gets the previous step's prediction.

The backbone contract of a mixed state: ``backbone(x: State, noise_level [B], cond=None,
space=ProductSpace, self_cond=None | {name: tensor}) -> {name: raw output}``: a Gaussian
component's raw ``F`` (as its parameterization defines it), a categorical component's logits
``[..., K]`` over its classes. :class:`MixedDenoiser` turns them into a :class:`MixedPrediction`
(a ``Prediction(x0, eps)`` per Gaussian component, ``p(x_0 | x_t)`` per categorical one).

Sampling, guidance and completion over the product are in ``core.sampling.mixed``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor, nn

from ..config import DiffusionConfig
from ..data.condition import Condition
from ..data.domain import Batch
from ..data.product import ProductSpace, State
from ..errors import ConfigError
from .components import GaussianComponent, MixedPrediction, build_component
from .paths import FlowSchedule
from .presets import resolve
from .timesteps import TIME_SAMPLERS, make_time_sampler

__all__ = ["MixedDiffusion", "MixedDenoiser", "MixedPrediction", "SELF_CONDITION_RATE"]

_F64 = torch.float64
#: the share of training batches that see the network's own (detached) prediction (Chen et al. 2023)
SELF_CONDITION_RATE = 0.5


class MixedDenoiser(nn.Module):
    """A backbone for a mixed state and the components' processes (only the backbone holds weights,
    ``backbone.*``). ``denoiser(x_t, t, cond=, space=, prev=)`` -> :class:`MixedPrediction`."""

    def __init__(self, backbone: nn.Module, process: "MixedDiffusion") -> None:
        super().__init__()
        self.backbone = backbone
        self.components = process.components
        self.schedule = process.schedule
        self.time_scale = process.time_scale
        self.self_conditioning = bool(getattr(backbone, "self_conditioning", False))

    def raw(self, x_t: State, t: Tensor, cond: Any = None, space: ProductSpace | None = None,
            prev: MixedPrediction | None = None) -> dict[str, Tensor]:
        """The backbone's outputs ``{component: raw}`` at per-sample times ``t`` (the training view)."""
        assert space is not None, "MixedDenoiser needs the batch's ProductSpace"
        t = t.to(_F64)
        x_in = State({k: c.network_input(x_t[k], t, space[k]) for k, c in self.components.items()})
        kwargs = {}
        if self.self_conditioning:
            kwargs["self_cond"] = None if prev is None else {k: c.self_condition(prev[k])
                                                             for k, c in self.components.items()}
        return self.backbone(x_in, (t * self.time_scale).to(torch.float32), cond=cond, space=space, **kwargs)

    def forward(self, x_t: State, t: Tensor, cond: Any = None, space: ProductSpace | None = None,
                prev: MixedPrediction | None = None) -> MixedPrediction:
        out = self.raw(x_t, t, cond=cond, space=space, prev=prev)
        return MixedPrediction({k: c.prediction(out[k], x_t[k], t.to(_F64), space[k])
                                for k, c in self.components.items()})

    def bind(self, space: ProductSpace, cond: Any = None):
        """A sampler-ready closure ``denoise(x, t, prev=None)`` for one batch's space and condition."""
        def denoise(x: State, t: Tensor, prev: MixedPrediction | None = None) -> MixedPrediction:
            return self(x, t, cond=cond, space=space, prev=prev)
        return denoise


class MixedDiffusion:
    """The mixed process of a :class:`DiffusionConfig` with ``components`` (see the module docstring);
    ``facts``: ``data_info["components"]`` of the data (``None`` checks the specs only). The objective
    the trainer runs for a mixed-state model."""

    samples = True

    def __init__(self, config: DiffusionConfig | dict[str, Any], facts: dict[str, Any] | None = None) -> None:
        if isinstance(config, dict):
            config = DiffusionConfig(**config)
        config = resolve(config.validate())
        if not config.components:
            raise ConfigError("a mixed process needs diffusion.components")
        self.config = config
        self.mode = "mixed"
        self.time_scale = float(config.time_scale)
        if facts is not None:
            if not isinstance(facts, dict):
                raise ConfigError(f"data_info['components'] must be an object, got {facts!r}")
            missing = sorted(set(facts) - set(config.components))
            extra = sorted(set(config.components) - set(facts))
            if missing or extra:
                raise ConfigError(f"diffusion.components names {', '.join(sorted(config.components))} but the data's "
                                  f"samples have the components {', '.join(sorted(facts))}")
        names = sorted(config.components)   # one order of draws, however the config or data_info was written
        self.components = {n: build_component(n, config.components[n], None if facts is None else facts[n],
                                              self.time_scale) for n in names}
        gaussian = [c for c in self.components.values() if isinstance(c, GaussianComponent)]
        #: the shared clock: the first Gaussian component's schedule (its grids are the sampling grids)
        self.schedule = gaussian[0].schedule if gaussian else FlowSchedule()
        if config.time_sampler not in TIME_SAMPLERS:
            raise ConfigError(f"diffusion.time_sampler must be one of {', '.join(TIME_SAMPLERS)}, got "
                              f"{config.time_sampler!r}")
        self._sample_t = make_time_sampler(config.time_sampler, self.schedule, config)

    def drop_rates(self, names: Any) -> dict[str, float]:
        """Condition dropout of a mixed state is one joint draw (``cond_drop``); independent rates per
        condition (``cond_drop_each``) are refused with a ConfigError."""
        if self.config.cond_drop_each:
            raise ConfigError("diffusion.cond_drop_each (dropout per condition) is not supported for a mixed state; "
                              "use cond_drop")
        return {}

    def denoiser(self, backbone: nn.Module) -> MixedDenoiser:
        return MixedDenoiser(backbone, self)

    def sample_t(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None) -> Tensor:
        return self._sample_t(n, generator=generator, device=device)

    # ------------------------------------------------------------------ training
    def training_losses(self, denoiser: MixedDenoiser, batch: Batch, generator: torch.Generator | None = None,
                        shard: tuple[int, int] | None = None) -> Tensor:
        """Per-sample loss ``[B]`` (see the module docstring; ``shard`` as in ``Diffusion``: every draw
        is made for the whole batch first)."""
        x0, space = batch.x, batch.space
        if not isinstance(space, ProductSpace):
            raise ConfigError("a mixed-state model trains on batches of mixed states (a ProductSpace); this data "
                              "gives one tensor per sample")
        n = space.batch_size(x0)
        t, x_t, aux = self._noised(x0, space, generator)
        device = t.device
        cond = batch.cond
        if isinstance(cond, Condition) and self.config.cond_drop > 0:
            drop = torch.rand(n, generator=generator, device=device) < self.config.cond_drop
            cond = cond.drop(drop)
        self_cond = denoiser.self_conditioning and bool(
            torch.rand((), generator=generator, device=device) < SELF_CONDITION_RATE)
        if shard is not None:
            start, stop = shard
            x0, sp = space.take(x0, start, stop)
            x_t, _ = space.take(x_t, start, stop)
            aux = {k: (space[k].take(v, start, stop)[0] if isinstance(v, Tensor) else v) for k, v in aux.items()}
            space, t = sp, t[start:stop]
            if isinstance(cond, Condition):
                cond = cond.select(slice(start, stop))
            elif isinstance(cond, Tensor):
                cond = cond[start:stop]
        prev = None
        if self_cond:
            with torch.no_grad():
                prev = denoiser(x_t, t, cond=cond, space=space)
        out = denoiser.raw(x_t, t, cond=cond, space=space, prev=prev)
        total = None
        for k, c in self.components.items():
            if c.weight == 0:
                continue
            term = c.weight * c.loss(out[k], x0[k], x_t[k], aux[k], t, space[k])
            total = term if total is None else total + term
        return total if total is not None else t.new_zeros(len(t)).float()

    def _noised(self, x0: State, space: ProductSpace, generator: torch.Generator | None
                ) -> tuple[Tensor, State, dict[str, Any]]:
        """Training times for a batch of mixed states and each component's noisy state at them."""
        n = space.batch_size(x0)
        t = self.sample_t(n, generator, next(iter(x0.values())).device)
        x_t, aux = State(), {}
        for k, c in self.components.items():
            x_t[k], aux[k] = c.noisy(x0[k], t, space[k], generator)
        return t, x_t, aux

    def component_losses(self, denoiser: MixedDenoiser, batch: Batch, generator: torch.Generator | None = None
                         ) -> dict[str, Tensor]:
        """Each component's unweighted per-sample loss on one batch (no self-conditioning): for
        diagnostics and benchmarks."""
        x0, space = batch.x, batch.space
        t, x_t, aux = self._noised(x0, space, generator)
        out = denoiser.raw(x_t, t, cond=batch.cond, space=space)
        return {k: c.loss(out[k], x0[k], x_t[k], aux[k], t, space[k]) for k, c in self.components.items()}

    # ------------------------------------------------------------------ sampling entries
    def generate(self, denoiser: MixedDenoiser, domain: Any, num: int, **kwargs: Any) -> Batch:
        """``num`` samples (``core.sampling.mixed.generate_mixed``)."""
        from ..sampling.mixed import generate_mixed
        return generate_mixed(denoiser, domain, num, **kwargs)

    def generate_completion(self, denoiser: MixedDenoiser, known: Batch, mask: Any, **kwargs: Any) -> Batch:
        """Completions of ``known`` where ``mask`` (a State of masks) is false
        (``core.sampling.mixed.generate_completion_mixed``)."""
        from ..sampling.mixed import generate_completion_mixed
        return generate_completion_mixed(denoiser, known, mask, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def __repr__(self) -> str:
        return "MixedDiffusion(" + ", ".join(f"{k}={c.kind}" for k, c in self.components.items()) + ")"
