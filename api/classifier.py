"""Noise-aware classifiers for classifier guidance: training.

A classifier run trains as any other run (``diffuse.api.runs``, resumable) with the classifier
objective (``core.models.classifier``); ``diffuse.api.guiding`` loads one and turns it into a
denoiser wrapper for a model's sampling.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..core.config import DiffusionConfig, RunConfig, update_dataclass
from ..core.data.capabilities import HasClassifier, require
from ..core.data.domain import Domain
from ..core.data.registry import get_domain
from ..core.errors import DataError, UserInputError
from ..core.io import atomic_write_text
from ..core.memory import check_training
from ..core.training.optim import resolve_device
from ..core.models.classifier import (ClassifierConfig, ClassifierObjective, NoisyClassifier, Target,
                                      evaluate_classifier, label_kind)
from ..core.models.latent import check_latent_data, latent_domain
from ..core.process.diffusion import Diffusion
from .auxiliary import plan_auxiliary
from .configs import load_data, record_conditions, split_data
from .guiding import stored_target
from .runs import execute

__all__ = ["train_classifier", "CLASSIFIER_TRAIN"]

log = logging.getLogger(__name__)

#: training defaults of a classifier (overridable by keyword: steps=, batch_size=, lr=, ...)
CLASSIFIER_TRAIN = {"steps": 500, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "weight_decay": 0.0,
                    "log_every": 10, "holdout_fraction": 0.1, "ema_decay": 0.99, "checkpoint_every": 500,
                    "eval_samples": 0, "final_eval": False}


def train_classifier(domain: str | Domain = "image", *, data: str | Path | None = None, out: str | Path | None = None,
                     target: str = "label", model: dict[str, Any] | None = None, progress: bool = True,
                     config: dict[str, Any] | str | Path | None = None, resume: str | Path | None = None,
                     stop_at: int | None = None, latent: str | Path | None = None,
                     **train_overrides: Any) -> dict[str, Any]:
    """Train a noise-aware classifier (``core.models.classifier``) for classifier guidance and
    leave a run folder at ``out`` (default ``runs/<domain>-classifier``): ``config.json`` (kind
    ``classifier``), ``checkpoint/`` (the trainer's: raw and EMA weights, state), ``metrics.jsonl``,
    ``evaluation.json`` (held-out accuracy / RMSE on clean and noised data, of the EMA weights).
    ``target``: ``"label"`` or ``"property:NAME"``. ``config``: a dict or JSON file with sections
    ``model`` (classifier options), ``train`` (:class:`TrainConfig` fields) and ``data_options``.
    ``resume`` continues an interrupted run (the same total steps); ``stop_at`` pauses one at that
    step. ``latent``: an autoencoder run of the domain: the classifier is trained on the (scaled)
    latents of the data and guides latent models of that autoencoder (the run records it, as a
    latent model does). Everything is checked before anything is written. Returns ``{"run_dir", "steps",
    "final_loss", "seconds", "metrics", "target"}`` (``metrics`` None for a paused run)."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    require(dom, HasClassifier)
    kind, name = Target.parse_spec(target)
    dom, record = _latent_of(dom, latent, resume)
    plan = plan_auxiliary("classifier", dom, load_stored=ClassifierConfig.load, train_defaults=CLASSIFIER_TRAIN,
                          model_defaults={}, data=data, out=out, config=config, resume=resume, model=model,
                          train_overrides=train_overrides)
    cfg = plan.train
    if plan.restart and plan.stored is not None:      # a run starting again keeps its target
        kind, name = plan.stored.target["kind"], plan.stored.target["name"]
    if plan.resuming:
        tgt = stored_target(plan.run_dir, plan.stored)
        options = plan.data_options
    else:
        options = {**plan.data_options, **dom.classifier_data_options(Target(kind, name))}
    dataset = load_data(dom, RunConfig(domain=dom.name, data=plan.data, data_options=options))
    if record is not None:
        check_latent_data(dom, dataset.info())
    info = plan.stored.data_info if plan.resuming else record_conditions(dom, dataset.info())
    train_set, held = split_data(dataset, cfg)
    dom = dom.bind(info)
    if not plan.resuming:
        tgt = _new_target(dom, kind, name, train_set, data)
    check_training(lambda: NoisyClassifier(dom.build_classifier(plan.model, tgt), tgt), None, dom, plan.model,
                   train_set, cfg.batch_size, resolve_device(cfg.device), f"training this {dom.name} classifier")
    torch.manual_seed(cfg.seed)
    module = NoisyClassifier(dom.build_classifier(plan.model, tgt), tgt)
    diff = Diffusion(update_dataclass(DiffusionConfig(), dom.default_diffusion(), "diffusion"))
    run_config = ClassifierConfig(domain=dom.name, target=asdict(tgt), data=plan.data, data_options=options,
                                  model=plan.model, schedule=diff.config.schedule, train=cfg, data_info=info,
                                  latent=record)
    objective = ClassifierObjective(dom, diff.schedule, diff.sample_t)
    def finish(fit, trainer) -> dict[str, Any]:          # under the run's lock: the held-out evaluation
        result = {"run_dir": plan.run_dir, "steps": fit.steps, "final_loss": fit.final_loss, "seconds": fit.seconds,
                  "metrics": None, "target": tgt.describe()}
        if fit.steps < cfg.steps:        # paused: evaluated at the end of the run
            return result
        metrics = evaluate_classifier(trainer.ema.module, dom, held if held is not None else train_set,
                                      seed=cfg.seed, device=trainer.device)
        metrics["held_out_items"] = len(held) if held is not None else 0
        atomic_write_text(plan.run_dir / "evaluation.json", json.dumps(metrics, indent=2))
        log.info("classifier %s: %s", plan.run_dir, metrics)
        return {**result, "metrics": metrics}

    result, _ = execute(plan.run_dir, RunConfig(domain=dom.name, train=cfg, data_info=info), run_config.to_json(),
                        dom, objective, module, train_set, checkpoint=plan.checkpoint, progress=progress,
                        stop_at=stop_at, what="classifier", restart=plan.restart, generation=plan.generation,
                        finish=finish)
    return result


def _latent_of(dom: Domain, latent: str | Path | None, resume: str | Path | None):
    """``(domain, autoencoder record or None)``: ``dom`` wrapped with the autoencoder of a
    classifier of latents (a new one's ``latent``, a resumed one's record)."""
    if resume is not None:
        if latent is not None:
            raise UserInputError("--latent cannot change when resuming a classifier run")
        stored = ClassifierConfig.load(resume)
        if stored.latent is None or stored.domain != dom.name:
            return dom, None
        return latent_domain(dom, stored.latent["path"], stored.latent), stored.latent
    if latent is None:
        return dom, None
    wrapped = latent_domain(dom, latent)
    return wrapped, wrapped.record


def _new_target(dom: Domain, kind: str, name: str, train_set, data: Any) -> Target:
    """The target of a new classifier (``dom`` bound to its data): the data's label classes, or a
    property standardised by its training-split mean and std."""
    if kind == "label":
        labels = label_kind(dom)
        if labels is None:
            raise DataError(f"the {dom.name} data at {data or 'the bundled default'} has no class labels; "
                            "train on labelled data or use --target property:NAME")
        return Target("label", "label", labels.num_classes, labels.class_names, labels.aliases or None)
    vals = torch.cat([dom.classifier_property(name, train_set.batch(idx)).double().reshape(-1)
                      for idx in torch.arange(len(train_set)).split(256)])
    return Target("property", name, mean=float(vals.mean()), std=float(vals.std().clamp_min(1e-8)))
