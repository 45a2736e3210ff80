"""Classifier guidance of a model's samples: a trained noise-aware classifier, loaded and turned
into a denoiser wrapper (``core.sampling.guidance.ClassifierGuidance``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.data.condition import parse_condition
from ..core.data.registry import get_domain
from ..core.errors import CheckpointError, NotSupportedError, UserInputError
from ..core.models.classifier import Classifier, ClassifierConfig, NoisyClassifier, Target, classifier_weights
from ..core.models.latent import latent_domain
from ..core.sampling.guidance import Guidance
from ..core.training.checkpoint import load_weights
from ..core.training.optim import resolve_device

__all__ = ["load_classifier", "prepare_classifier_guidance", "classifier_guidance_for", "stored_target",
           "check_same_space"]


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
    dom = get_domain(cfg.domain)
    if cfg.latent is not None:   # a classifier of latents: its autoencoder must be there, unchanged
        if not isinstance(cfg.latent, dict) or not isinstance(cfg.latent.get("path"), str):
            raise CheckpointError(f"{run_dir / 'config.json'} has a corrupt latent record {cfg.latent!r}")
        dom = latent_domain(dom, cfg.latent["path"], cfg.latent)
    dom = dom.bind(cfg.data_info)
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
    n = num if isinstance(num, int) and num > 0 else 1
    clf = classifier if isinstance(classifier, Classifier) else load_classifier(classifier, device=str(model.device))
    clf.check_compatible(model.domain.name, model.data_info)
    check_same_space(model.config.latent, clf.config.latent, clf.run_dir)
    s = Guidance.parse(1.0 if scale is None else scale).scale
    targets = clf.parse_target(cond, n)
    kinds = model.condition_kinds()
    rest = {k: v for k, v in (cond or {}).items() if k != clf.target.name and k not in kinds}
    if rest:
        raise UserInputError(f"neither the model nor the classifier understands the condition(s) {', '.join(sorted(rest))}")
    model_cond = parse_condition(kinds, {k: v for k, v in (cond or {}).items() if k in kinds}, n)
    return clf, targets, s, model_cond


def check_same_space(model_latent: dict[str, Any] | None, clf_latent: dict[str, Any] | None, where: Any) -> None:
    """A classifier guides a model that samples what it reads: data for data, the latents of the
    same autoencoder (SHA-256 of its weights) for latents; one NotSupportedError line otherwise."""
    name = f"classifier {where}" if where else "the classifier"
    if model_latent is None and clf_latent is None:
        return
    if model_latent is None or clf_latent is None:
        reads, samples = ("latents", "data") if model_latent is None else ("data", "latents")
        fix = ("train the classifier with --latent on the model's autoencoder" if model_latent is not None
               else "use a classifier trained on data")
        raise NotSupportedError(f"{name} reads {reads} but the model samples {samples}; {fix}")
    if model_latent.get("sha256") != clf_latent.get("sha256"):
        raise NotSupportedError(f"{name} was trained on the latents of another autoencoder ({clf_latent.get('path')}) "
                                f"than the model's ({model_latent.get('path')})")


def classifier_guidance_for(model: Any, num: int, cond: Any, guidance: Any, classifier: Any, scale: Any = None,
                            rescale: Any = None, interval: Any = None):
    """``(model condition, denoiser wrapper)`` of classifier-guided sampling of ``model`` (a
    :class:`~diffuse.api.model.DiffusionModel`): the classifier's gradient towards its target in
    ``cond`` (:func:`prepare_classifier_guidance` checks everything)."""
    clf, targets, s, model_cond = prepare_classifier_guidance(model, num, cond, guidance, classifier, scale,
                                                               rescale, interval)
    return model_cond, clf.guidance(targets.to(model.device), s, model.diffusion.schedule)
