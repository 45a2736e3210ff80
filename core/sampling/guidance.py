"""Guidance: wrappers that turn a conditional model into a sampler-facing ``denoise(x, t)``.

Every sampler takes ``denoise(x, t) -> Prediction``, so a guided closure works with all of them.

**Classifier-free guidance** (Ho & Salimans 2022). With the conditional and unconditional
predictions of one model (the unconditional one is the *null* condition that condition dropout
trains), a scale ``s``:

    eps_g = eps_u + s (eps_c - eps_u),    x0_g = x0_u + s (x0_c - x0_u)

(the same affine combination in both views, so ``x_t = alpha x0_g + sigma eps_g`` still holds).
``s = 0`` is the unconditional model (only that pass is run), ``s = 1`` the conditional one,
``s > 1`` guided. Both passes run as ONE batched call: ``x``, ``t`` and the condition are
concatenated with their null copies through the Space's ``concat`` (graph batches too).

* ``rescale`` phi in [0, 1] (Lin et al. 2023, "Common diffusion noise schedules and sample
  steps are flawed", eq. 15-16): ``x0_r = x0_g std(x0_c) / std(x0_g)`` per sample (std over the
  sample's valid elements through ``space.reduce``), ``x0 = phi x0_r + (1 - phi) x0_g``, and
  eps recomputed from ``x_t``.
* ``interval = (lo, hi)`` (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval"):
  guidance only where the noise level ``sigma_t / alpha_t`` lies in ``[lo, hi]``; outside, the
  conditional pass alone.

**Denoiser wrappers.** Guidance of any kind enters sampling the same way: a list of wrappers
(:class:`DenoiserWrapper`), each turning one chunk's ``denoise(x, t)`` into a guided one
(:func:`wrap_denoiser`), in order. :class:`Guidance` (classifier-free) builds its guided
prediction from the model itself and so comes first; :class:`ClassifierGuidance` adds a
classifier's gradient to whatever it wraps.

**Classifier guidance** (Dhariwal & Nichol 2021): with ``log_prob_fn(x_t, t) -> log p(y | x_t, t)``
per sample (a noise-aware classifier evaluated at the requested ``y``),

    eps_g = eps - scale * sigma * grad_x log p(y | x_t, t),   x0_g = (x_t - sigma eps_g) / alpha

(``grad log p_t(x | y) = grad log p_t(x) + grad log p(y | x)``, and ``score = -eps / sigma``).
:func:`noisy_classifier_loss` is the domain-agnostic training objective of such a classifier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from ..data.condition import Condition
from ..data.domain import Batch
from ..data.space import Space
from ..errors import UserInputError
from ..process.parameterization import Prediction
from ..process.schedule import Schedule

__all__ = ["Guidance", "ClassifierGuidance", "DenoiserWrapper", "wrap_denoiser", "classifier_free_guidance",
           "classifier_guidance", "noisy_classifier_loss", "ConditionalModel"]

#: ``model(x, t, cond=..., space=...) -> Prediction`` (a :class:`~diffuse.core.process.denoiser.Denoiser`)
ConditionalModel = Callable[..., Prediction]
DenoiseFn = Callable[[Tensor, Tensor], Prediction]


class DenoiserWrapper(Protocol):
    """Guidance as a wrapper of one chunk's ``denoise(x, t)``: ``batch`` is the chunk's template
    (its Space and condition), ``denoiser`` the model, ``start`` the index of the chunk's first
    sample in the run (to pick per-sample targets)."""

    def wrap(self, denoise: DenoiseFn, *, batch: Batch, denoiser: ConditionalModel, start: int) -> DenoiseFn: ...


def wrap_denoiser(denoiser: Any, batch: Batch, wrappers: Sequence[DenoiserWrapper] = (), start: int = 0) -> DenoiseFn:
    """The sampler-facing ``denoise(x, t)`` of one chunk: the denoiser bound to the chunk's Space and
    condition, then each wrapper in order."""
    denoise = denoiser.bind(batch.space, batch.cond)
    for w in wrappers:
        denoise = w.wrap(denoise, batch=batch, denoiser=denoiser, start=start)
    return denoise


@dataclass
class Guidance:
    """Classifier-free guidance settings: ``scale`` (0 unconditional, 1 conditional, > 1 guided),
    ``rescale`` phi in [0, 1], ``interval`` ``(lo, hi)`` of noise levels ``sigma / alpha`` or None."""

    scale: float = 1.0
    rescale: float = 0.0
    interval: tuple[float, float] | None = None

    @classmethod
    def parse(cls, scale: Any = 1.0, rescale: Any = 0.0, interval: Any = None) -> "Guidance":
        """From user values (numbers or strings such as ``"3"``, ``"0.7"``, ``"0.3,5"``);
        ``ValueError`` with a one-line message for bad input."""
        def number(v: Any, what: str) -> float:
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise UserInputError(f"{what} must be a number, got {v!r}") from None
            if not math.isfinite(f):
                raise UserInputError(f"{what} must be finite, got {v!r}")
            return f

        s = number(scale, "guidance scale")
        if s < 0:
            raise UserInputError(f"guidance scale must be >= 0 (0 unconditional, 1 conditional), got {s:g}")
        r = number(rescale, "guidance rescale")
        if not 0.0 <= r <= 1.0:
            raise UserInputError(f"guidance rescale must lie in [0, 1], got {r:g}")
        iv = None
        if interval is not None:
            parts = interval.split(",") if isinstance(interval, str) else list(interval)
            if len(parts) != 2:
                raise UserInputError(f"guidance interval must be two noise levels LO,HI, got {interval!r}")
            lo, hi = (number(p, "guidance interval") for p in parts)
            if not 0 <= lo <= hi:
                raise UserInputError(f"guidance interval needs 0 <= LO <= HI, got {lo:g},{hi:g}")
            iv = (lo, hi)
        return cls(s, r, iv)

    #: classifier-free guidance needs the samples' condition
    needs_condition = True

    def wrap(self, denoise: DenoiseFn, *, batch: Batch, denoiser: ConditionalModel, start: int = 0) -> DenoiseFn:
        """The guided prediction of ``denoiser`` for the chunk's condition (it replaces ``denoise``,
        so it comes first in a wrapper list)."""
        return classifier_free_guidance(denoiser, batch.space, batch.cond, self.scale, denoiser.schedule,
                                        rescale=self.rescale, interval=self.interval)


@dataclass
class ClassifierGuidance:
    """Classifier guidance as a denoiser wrapper: ``log_prob(x_t, t, space, targets) -> [B]`` is
    ``log p(y | x_t, t)`` of a noise-aware classifier at the requested ``targets`` (one per sample
    of the whole run; each chunk takes its own), ``scale`` the guidance scale."""

    log_prob: Callable[[Tensor, Tensor, Space, Tensor], Tensor]
    targets: Tensor
    scale: float
    schedule: Schedule
    needs_condition = False

    def wrap(self, denoise: DenoiseFn, *, batch: Batch, denoiser: ConditionalModel, start: int = 0) -> DenoiseFn:
        y = self.targets[start:start + len(batch)]
        space = batch.space
        return classifier_guidance(denoise, lambda x, t: self.log_prob(x, t, space, y), self.scale, self.schedule,
                                   space)


def _split(pred: Prediction, n: int) -> tuple[Prediction, Prediction]:
    return (Prediction(pred.x0[:n], pred.eps[:n]), Prediction(pred.x0[n:], pred.eps[n:]))


def _std(space: Space, x: Tensor) -> Tensor:
    mean = space.reduce(x)
    return torch.sqrt(space.reduce((x - space.expand(mean, x)) ** 2))


def classifier_free_guidance(model: ConditionalModel, space: Space, cond: Condition, scale: float,
                             schedule: Schedule, *, rescale: float = 0.0,
                             interval: tuple[float, float] | None = None) -> DenoiseFn:
    """A guided ``denoise(x, t)`` from ``model(x, t, cond=, space=)`` and the condition ``cond``
    of this batch (see the module docstring for the formulas)."""
    if not isinstance(cond, Condition):
        raise UserInputError("classifier-free guidance needs a condition (e.g. a label)")
    null = cond.null()
    scale, rescale = float(scale), float(rescale)
    both_cond = Condition.concat([cond, null])
    both_space: Space | None = None

    def conditional(x: Tensor, t: Tensor) -> Prediction:
        return model(x, t, cond=cond, space=space)

    def denoise(x: Tensor, t: Tensor) -> Prediction:
        nonlocal both_space
        if scale == 0.0:
            return model(x, t, cond=null, space=space)
        if scale == 1.0 and rescale == 0.0:      # p_u + 1 (p_c - p_u): the conditional prediction, one pass
            return conditional(x, t)
        alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
        active = None
        if interval is not None:
            level = sigma / alpha
            active = (level >= interval[0]) & (level <= interval[1])
            if not bool(active.any()):
                return conditional(x, t)
        x2, sp2 = space.concat([x, x], [space, space])
        both_space = sp2 if both_space is None else both_space
        p_c, p_u = _split(model(x2, torch.cat([t, t]), cond=both_cond, space=both_space), x.shape[0])
        x0 = p_u.x0 + scale * (p_c.x0 - p_u.x0)
        eps = p_u.eps + scale * (p_c.eps - p_u.eps)
        if rescale > 0:
            factor = _std(space, p_c.x0) / _std(space, x0).clamp_min(torch.finfo(x0.dtype).tiny)
            factor = rescale * factor + (1.0 - rescale)
            x0 = space.coef(factor, x0) * x0
            eps = (x - space.coef(alpha, x0) * x0) / space.coef(sigma, x0)
        if active is not None and not bool(active.all()):
            keep = space.coef(active.to(x0.dtype), x0) > 0
            x0, eps = torch.where(keep, x0, p_c.x0), torch.where(keep, eps, p_c.eps)
        return Prediction(space.project(x0), space.project(eps))

    return denoise


def classifier_guidance(denoise: DenoiseFn, log_prob_fn: Callable[[Tensor, Tensor], Tensor], scale: float,
                        schedule: Schedule, space: Space) -> DenoiseFn:
    """``denoise`` guided by the gradient of ``log_prob_fn(x_t, t) -> [B]`` (log p(y | x_t, t) of
    the requested y), by autograd; works inside ``torch.no_grad`` sampling loops."""
    scale = float(scale)

    def guided(x: Tensor, t: Tensor) -> Prediction:
        pred = denoise(x, t)
        if scale == 0.0:
            return pred
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(log_prob_fn(xg, t).sum(), xg)
        grad = space.project(grad.to(pred.eps.dtype))
        alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
        eps = pred.eps - space.coef(scale * sigma, grad) * grad
        x0 = (x.to(eps.dtype) - space.coef(sigma, eps) * eps) / space.coef(alpha, eps)
        return Prediction(space.project(x0), eps)

    return guided


def noisy_classifier_loss(classifier: Callable[..., Tensor], x0: Tensor, labels: Tensor, space: Space,
                          schedule: Schedule, sample_t: Callable[..., Tensor],
                          generator: torch.Generator | None = None,
                          criterion: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Per-sample cross-entropy ``[B]`` of a noise-aware classifier (Dhariwal & Nichol 2021):
    ``t ~ sample_t`` (the diffusion's training times), ``x_t = alpha x_0 + sigma eps``,
    ``logits = classifier(x_t, t, space=space)`` ``[B, C]``. ``criterion(output, labels) -> [B]``
    replaces the cross-entropy (e.g. a Gaussian negative log-likelihood for a real property)."""
    n = space.batch_size(x0)
    t = sample_t(n, generator, x0.device)
    eps = space.noise(x0, generator)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = space.coef(alpha, x0) * x0 + space.coef(sigma, x0) * eps
    logits = classifier(x_t, t, space=space)
    if criterion is not None:
        return criterion(logits, labels)
    return torch.nn.functional.cross_entropy(logits.float(), labels.to(logits.device).long(), reduction="none")
