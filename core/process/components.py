"""The components of a mixed state: each one's process, loss, prior, sampling step and completion.

A mixed process (``core.process.mixed``) is a product of components sharing one time ``t`` (1 =
noise, 0 = data). Each component is built from its spec (``DiffusionConfig.components[name]``)
and what the data says about it (``data_info["components"][name]``: its kind, number of classes,
class frequencies):

* :class:`GaussianComponent` (``"kind": "gaussian"``): ``x_t = alpha_t x_0 + sigma_t eps`` on its
  own schedule (any of ``core.process.schedules``, e.g. the linear flow path) with its own
  parameterization (``x0``, ``eps``, ``v``, ``flow``...) and loss weighting; sampled by any
  one-evaluation sampler of ``core.sampling.registry`` (``ddpm``, ``ddim``, ``flow_euler``...)
  called on the step's two-point grid with this step's prediction.
* :class:`CategoricalComponent` (``"kind": "categorical"``): a
  :class:`~diffuse.core.process.categorical.CategoricalPath` (prior ``mask`` / ``uniform`` /
  ``marginal``, schedule of ``kappa_t``), a cross-entropy loss on ``p(x_0 | x_t)`` (with the mask
  prior on the masked elements only: the others are known), sampled by a rule of
  ``core.sampling.categorical`` (``d3pm``, ``dfm_euler``, ``tau_leaping``).

Every component's loss is per sample (``[B]``, the mean over its valid elements through its
Space) times its ``weight``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ..data.space import GeneratorLike, Space
from ..errors import ConfigError
from ..sampling.categorical import CATEGORICAL_RULES, categorical_prior, categorical_rule, draw, uniforms
from ..sampling.common import prior_sample
from .categorical import PRIORS, CategoricalPath
from .loss import WEIGHTINGS, DiffusionLoss
from .parameterization import PARAMETERIZATIONS, Prediction, make_parameterization
from .schedules import build_schedule

__all__ = ["GaussianComponent", "CategoricalComponent", "MixedPrediction", "build_component", "COMPONENT_KINDS"]

_F64 = torch.float64


class MixedPrediction(dict):
    """A mixed denoiser's output ``{component: prediction}``: ``Prediction(x0, eps)`` of a Gaussian
    component, ``p(x_0 | x_t)`` ``[..., K]`` of a categorical one."""


def _weight(spec: dict[str, Any], what: str) -> float:
    w = spec.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
        raise ConfigError(f"{what}.weight must be a non-negative number, got {w!r}")
    return float(w)


def _check_keys(spec: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(f"{what} has unknown option(s) {', '.join(unknown)}; known: {', '.join(allowed)}")


class GaussianComponent:
    """A continuous component (see the module docstring)."""

    kind = "gaussian"
    KEYS = ("kind", "schedule", "parameterization", "weighting", "weight")

    def __init__(self, name: str, spec: dict[str, Any], time_scale: float = 1.0) -> None:
        what = f"diffusion.components.{name}"
        _check_keys(spec, self.KEYS, what)
        self.name = name
        self.schedule = build_schedule(spec.get("schedule", {"kind": "flow"}), f"{what}.schedule")
        pname = spec.get("parameterization", "x0")
        if pname not in PARAMETERIZATIONS:
            raise ConfigError(f"{what}.parameterization must be one of {', '.join(sorted(PARAMETERIZATIONS))}, "
                              f"got {pname!r}")
        path = self.schedule.path
        if pname == "flow" and path is None:
            raise ConfigError(f"{what}: the flow parameterization needs a flow schedule")
        if pname == "edm":
            raise ConfigError(f"{what}: the edm parameterization is not supported in a mixed state (its noise "
                              "input is not the shared time); use x0, eps, v or flow")
        self.param = make_parameterization(pname, time_scale=time_scale, path=path.name if path else "linear")
        weighting = spec.get("weighting", "uniform")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"{what}.weighting must be one of {', '.join(sorted(WEIGHTINGS))}, got {weighting!r}")
        self.loss_fn = DiffusionLoss(self.param, weighting)
        self.weight = _weight(spec, what)

    # ------------------------------------------------------------------ training
    def noisy(self, x0: Tensor, t: Tensor, space: Space, generator: GeneratorLike) -> tuple[Tensor, Tensor]:
        """``(x_t, eps)``: ``eps`` from the space's noise, ``x_t = alpha x_0 + sigma eps``."""
        eps = space.noise(x0, generator)
        alpha, sigma = self.schedule.alpha_sigma(t)
        return space.coef(alpha, x0) * x0 + space.coef(sigma, x0) * eps, eps

    def network_input(self, x_t: Tensor, t: Tensor, space: Space) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(_F64))
        c_in = self.param.scalings(alpha, sigma, t.to(_F64)).c_in
        return space.coef(c_in, x_t) * x_t

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, eps: Tensor, t: Tensor, space: Space) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t)
        a, s = space.coef(alpha, x0), space.coef(sigma, x0)
        snr = (alpha / sigma.clamp_min(1e-300)) ** 2
        return space.reduce(self.loss_fn(out, x0, eps, a, s, snr, space))

    # ------------------------------------------------------------------ predictions
    def prediction(self, out: Tensor, x_t: Tensor, t: Tensor, space: Space) -> Prediction:
        alpha, sigma = self.schedule.alpha_sigma(t.to(_F64))
        sc = self.param.scalings(alpha, sigma, t.to(_F64))
        x_t = x_t.to(out.dtype)
        x0 = space.coef(sc.c_skip, out) * x_t + space.coef(sc.c_out, out) * out
        eps = space.coef(sc.e_skip, out) * x_t + space.coef(sc.e_out, out) * out
        return Prediction(space.project(x0), space.project(eps))

    @staticmethod
    def self_condition(pred: Prediction) -> Tensor:
        """What a self-conditioned network sees of the previous prediction: the ``x0`` estimate."""
        return pred.x0

    @staticmethod
    def guide(uncond: Prediction, cond: Prediction, scale: float) -> Prediction:
        """Classifier-free guidance: the same affine combination in both views."""
        return Prediction(uncond.x0 + scale * (cond.x0 - uncond.x0), uncond.eps + scale * (cond.eps - uncond.eps))

    @staticmethod
    def take(pred: Prediction, space: Space, start: int, stop: int) -> Prediction:
        return Prediction(space.take(pred.x0, start, stop)[0], space.take(pred.eps, start, stop)[0])

    # ------------------------------------------------------------------ sampling
    def prior(self, like: Tensor, space: Space, t: float, generator: GeneratorLike) -> Tensor:
        return space.project(prior_sample(self.schedule, space, like, t=t, generator=generator))

    def step(self, x: Tensor, pred: Prediction, t: float, s: float, space: Space, generator: GeneratorLike, *,
             sampler: Callable[..., Tensor], rule: str | None = None, options: dict[str, Any] | None = None) -> Tensor:
        """One step ``t -> s`` of ``sampler`` (a one-evaluation sampler function of
        ``core.sampling.registry``) with this step's prediction (``rule``: the categorical rule, unused)."""
        grid = torch.tensor([t, s], dtype=_F64)
        return sampler(lambda _x, _t: pred, x, grid, schedule=self.schedule, space=space, generator=generator,
                       **(options or {}))

    def impose(self, x: Tensor, known: Tensor, mask: Tensor, s: float, space: Space,
               generator: GeneratorLike) -> Tensor:
        """Completion (``core.sampling.completion``'s RePaint re-imposition): the known part from
        ``q(x_s | x_0 = known)``, shifted into the sample's frame on a translation-free space, the
        fresh noise's mean over the known elements removed."""
        a, sg = (float(v) for v in self.schedule.alpha_sigma(torch.tensor(s, dtype=_F64)))
        target = a * known
        value = target + space.frame_shift(x, target, mask)
        if sg > 0:
            z = space.noise(x, generator)
            value = value + sg * (z - space.frame_shift(z, torch.zeros_like(z), mask))
        return space.project(torch.where(mask, value, x))

    def finish(self, x: Tensor, known: Tensor, mask: Tensor, space: Space) -> Tensor:
        """The completed sample in the known values' frame, the known part exact."""
        shift = space.frame_shift(x, known, mask)
        return torch.where(mask, known, x - shift)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "schedule": self.schedule.config(), "parameterization": self.param.name,
                "weighting": self.loss_fn.weighting_name, "weight": self.weight}


class CategoricalComponent:
    """A categorical component (see the module docstring); ``classes`` and ``marginal`` come from
    the data (``data_info["components"]``)."""

    kind = "categorical"
    KEYS = ("kind", "prior", "schedule", "weight", "rule")

    def __init__(self, name: str, spec: dict[str, Any], classes: int, marginal: Any = None) -> None:
        what = f"diffusion.components.{name}"
        _check_keys(spec, self.KEYS, what)
        self.name = name
        prior = spec.get("prior", "mask")
        if prior not in PRIORS:
            raise ConfigError(f"{what}.prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        self.path = CategoricalPath(int(classes), prior, spec.get("schedule", "linear"), marginal)
        self.rule = spec.get("rule", "d3pm")
        if self.rule not in CATEGORICAL_RULES:
            raise ConfigError(f"{what}.rule must be one of {', '.join(CATEGORICAL_RULES)}, got {self.rule!r}")
        self.weight = _weight(spec, what)
        self._spec = dict(spec)

    @property
    def num_classes(self) -> int:
        return self.path.num_classes

    # ------------------------------------------------------------------ training
    def noisy(self, x0: Tensor, t: Tensor, space: Space, generator: GeneratorLike) -> tuple[Tensor, None]:
        """``x_t ~ q(x_t | x_0)`` (one uniform per element from the space's per-sample noise)."""
        t_el = space.expand(t.to(_F64), x0.to(_F64)).reshape(x0.shape[:1] + (1,) * (x0.ndim - 1)).expand(x0.shape)
        u = uniforms(space, x0, generator)
        return draw(self.path.marginal(x0, t_el), u), None

    @staticmethod
    def network_input(x_t: Tensor, t: Tensor, space: Space) -> Tensor:
        return x_t

    def loss(self, out: Tensor, x0: Tensor, x_t: Tensor, aux: Any, t: Tensor, space: Space) -> Tensor:
        """Cross-entropy of ``p(x_0 | x_t)`` per element (with the mask prior, masked elements only),
        the mean over the component's elements per sample."""
        logits = out.reshape(-1, out.shape[-1]).float()
        ce = torch.nn.functional.cross_entropy(logits, x0.reshape(-1).long(), reduction="none").reshape(x0.shape)
        if self.path.prior == "mask":
            ce = ce * (x_t == self.path.mask_index).to(ce.dtype)
        return space.reduce(ce)

    # ------------------------------------------------------------------ predictions
    def prediction(self, out: Tensor, x_t: Tensor, t: Tensor, space: Space) -> Tensor:
        """``p(x_0 | x_t)`` ``[..., K]`` (float64)."""
        return self.path.denoised(out, x_t)

    @staticmethod
    def self_condition(pred: Tensor) -> Tensor:
        return pred.float()

    @staticmethod
    def guide(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
        """Guidance on log-probabilities: ``log p_g = log p_u + s (log p_c - log p_u)``, renormalised; an
        element both passes agree on exactly (an unmasked one under the mask prior) is kept as it is."""
        lu, lc = uncond.clamp_min(1e-300).log(), cond.clamp_min(1e-300).log()
        guided = torch.softmax(lu + scale * (lc - lu), -1)
        return torch.where((uncond == cond).all(-1, keepdim=True), cond, guided)

    @staticmethod
    def take(pred: Tensor, space: Space, start: int, stop: int) -> Tensor:
        return space.take(pred, start, stop)[0]

    # ------------------------------------------------------------------ sampling
    def prior(self, like: Tensor, space: Space, t: float, generator: GeneratorLike) -> Tensor:
        return categorical_prior(self.path, space, like, generator)

    def step(self, x: Tensor, pred: Tensor, t: float, s: float, space: Space, generator: GeneratorLike, *,
             sampler: Any = None, rule: str | None = None, options: Any = None) -> Tensor:
        """One step ``t -> s`` of ``rule`` (default: the component's own) with ``p(x_0 | x_t) = pred``
        (``sampler`` / ``options``: the Gaussian components', unused)."""
        return categorical_rule(rule or self.rule)(self.path, x, pred, t, s, uniforms(space, x, generator))

    def impose(self, x: Tensor, known: Tensor, mask: Tensor, s: float, space: Space,
               generator: GeneratorLike) -> Tensor:
        """The known elements at ``s``: with the mask prior unmasked, i.e. the known values themselves (an
        unmasked element is exact, so the network reads the fixed part as known, as MDLM's carry-over
        does); with the uniform or marginal prior re-drawn from ``q(x_s | x_0 = known)`` (RePaint)."""
        if self.path.prior == "mask":
            return torch.where(mask, known, x)
        u = uniforms(space, x, generator)
        value = draw(self.path.marginal(known, s), u)
        return torch.where(mask, value, x)

    @staticmethod
    def finish(x: Tensor, known: Tensor, mask: Tensor, space: Space) -> Tensor:
        return torch.where(mask, known, x)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "prior": self.path.prior, "schedule": self.path.schedule.config(),
                "weight": self.weight, "rule": self.rule}


def _categorical(name: str, spec: dict[str, Any], facts: dict[str, Any] | None, time_scale: float):
    classes = int((facts or {}).get("classes", 2))
    marginal = (facts or {}).get("marginal")
    if marginal is None and facts is None and spec.get("prior") == "marginal":
        marginal = [1.0] * classes                 # checking a config before the data is read
    return CategoricalComponent(name, spec, classes, marginal)


#: kind -> builder ``(name, spec, facts, time_scale) -> component``
COMPONENT_KINDS: dict[str, Callable[..., Any]] = {
    "gaussian": lambda name, spec, facts, time_scale: GaussianComponent(name, spec, time_scale),
    "categorical": _categorical,
}


def build_component(name: str, spec: Any, facts: dict[str, Any] | None, time_scale: float = 1.0):
    """The component ``name`` from its spec and the data's facts about it (``{"kind", "classes",
    "marginal"}``; ``None``: not known yet, e.g. while a config is checked before the data is read)."""
    what = f"diffusion.components.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{what} must be an object like {{\"kind\": \"categorical\"}}, got {spec!r}")
    kind = spec.get("kind", (facts or {}).get("kind"))
    if kind not in COMPONENT_KINDS:
        raise ConfigError(f"{what}.kind must be one of {', '.join(COMPONENT_KINDS)}, got {kind!r}")
    if facts is not None and facts.get("kind", kind) != kind:
        raise ConfigError(f"{what} is {kind} but the data's {name} is {facts.get('kind')}")
    return COMPONENT_KINDS[kind](name, {**spec, "kind": kind}, facts, time_scale)
