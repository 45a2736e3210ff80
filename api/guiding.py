"""Classifier guidance of a model's samples: a trained noise-aware classifier, loaded and turned
into a denoiser wrapper (``core.sampling.guidance.ClassifierGuidance``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.data.condition import parse_condition
from ..core.data.registry import get_domain
from ..core.errors import CheckpointError, NotSupportedError, UserInputError
from ..core.models.classifier import Classifier, ClassifierConfig, NoisyClassifier, Target, classifier_weights
from ..core.sampling.guidance import Guidance
from ..core.training.checkpoint import load_weights
from ..core.training.optim import resolve_device

__all__ = ["load_classifier", "prepare_classifier_guidance", "classifier_guidance_for", "stored_target"]


def stored_target(run_dir: Path, stored: ClassifierConfig) -> Target:
    """The :class:`Target` a classifier run was trained for."""
    try:
        return Target(**stored.target)
    except TypeError:
        raise CheckpointError(f"{run_dir / 'config.json'} has a corrupt target {stored.target!r}") from None


def load_classifier(run: str | Path, *, device: str = "auto", domain: str | None = None) -> Classifier:
    """A trained :class:`~diffuse.core.models.classifier.Classifier` from its run folder (its EMA
    weights)."""
    run_dir = Path(run)
    cfg = ClassifierConfig.load(run_dir)
    if domain is not None and domain != cfg.domain:
        raise CheckpointError(f"{run_dir} is a classifier of domain {cfg.domain!r}, not {domain!r}")
    dom = get_domain(cfg.domain).bind(cfg.data_info)
    tgt = stored_target(run_dir, cfg)
    module = NoisyClassifier(dom.build_classifier(cfg.model, tgt), tgt)
    load_weights(module, classifier_weights(run_dir), run_dir)
    dev = resolve_device(device)
    return Classifier(dom, cfg, module.to(dev), dev, run_dir)


def prepare_classifier_guidance(model: Any, num: int, cond: Any, guidance: Any, classifier: Any,
                                 scale: Any = None, rescale: Any = None, interval: Any = None):
    """``(classifier, targets [num], scale, model condition)`` for classifier-guided sampling;
    ``ValueError`` / ``CheckpointError`` for bad input, before anything is sampled or written."""
    if guidance == "free":
        raise UserInputError("a classifier is used with classifier guidance only (--guidance classifier)")
    if guidance != "classifier":
        raise UserInputError(f"guidance must be 'free' (classifier-free) or 'classifier', got {guidance!r}")
    if classifier is None:
        raise UserInputError("classifier guidance needs a classifier run (--classifier RUN)")
    if rescale is not None or interval is not None:
        raise UserInputError("--guidance-rescale / --guidance-interval apply to classifier-free guidance only")
    if cond is not None and not isinstance(cond, dict):
        raise UserInputError(f"a condition is given as {{name: value}}, e.g. {{'label': 7}}, not {type(cond).__name__}")
    if model.config.latent is not None:
        raise NotSupportedError("classifier guidance is not supported for latent models (the classifier reads data, "
                         "the sampler latents); use classifier-free guidance (--guidance-scale)")
    n = num if isinstance(num, int) and num > 0 else 1
    clf = classifier if isinstance(classifier, Classifier) else load_classifier(classifier, device=str(model.device))
    clf.check_compatible(model.domain.name, model.data_info)
    s = Guidance.parse(1.0 if scale is None else scale).scale
    targets = clf.parse_target(cond, n)
    kinds = model.condition_kinds()
    rest = {k: v for k, v in (cond or {}).items() if k != clf.target.name and k not in kinds}
    if rest:
        raise UserInputError(f"neither the model nor the classifier understands the condition(s) {', '.join(sorted(rest))}")
    model_cond = parse_condition(kinds, {k: v for k, v in (cond or {}).items() if k in kinds}, n)
    return clf, targets, s, model_cond


def classifier_guidance_for(model: Any, num: int, cond: Any, guidance: Any, classifier: Any, scale: Any = None,
                            rescale: Any = None, interval: Any = None):
    """``(model condition, denoiser wrapper)`` of classifier-guided sampling of ``model`` (a
    :class:`~diffuse.api.model.DiffusionModel`): the classifier's gradient towards its target in
    ``cond`` (:func:`prepare_classifier_guidance` checks everything)."""
    clf, targets, s, model_cond = prepare_classifier_guidance(model, num, cond, guidance, classifier, scale,
                                                               rescale, interval)
    return model_cond, clf.guidance(targets.to(model.device), s, model.diffusion.schedule)
