"""``train``: a diffusion model from data, in a run folder (new, resumed, or started from a model)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..core.data.domain import Domain
from ..core.data.registry import get_domain
from ..core.errors import UserInputError
from ..core.memory import check_training
from ..core.training import distributed
from ..core.models.latent import check_latent_data, latent_domain
from ..core.process.build import build_process
from ..core.process.objectives import make_denoiser
from ..core.training.checkpoint import read_run_config
from ..core.training.optim import resolve_device
from ..core.training.trainer import TrainResult
from .configs import load_data, record_conditions, split_data
from .distill import run_objective
from .plan import check_init_data, plan_training
from .runs import execute

__all__ = ["train"]

log = logging.getLogger(__name__)


def train(domain: str | Domain = "image", *, data: str | Path | None = None, out: str | Path | None = None,
          config: dict[str, Any] | str | Path | None = None, resume: str | Path | None = None,
          progress: bool = True, stop_at: int | None = None, diffusion: dict[str, Any] | None = None,
          conditions: list[str] | str | None = None, latent: str | Path | None = None,
          init: str | Path | None = None, model: dict[str, Any] | None = None, **train_overrides: Any) -> TrainResult:
    """Train a model and leave a run folder at ``out`` (default ``runs/<domain>``).

    ``latent``: an autoencoder run folder (:func:`~diffuse.api.autoencoder.train_autoencoder`) of
    the same domain: the model is a latent diffusion model on its (scaled) latents; the run records
    the autoencoder (path, SHA-256 of its weights, domain) and samples are decoded to data. Its data
    options default to the autoencoder's (so the data has the layout the autoencoder was trained on).

    ``init`` starts a new run from a trained model's weights (fine-tuning, or continuing a
    finished run with a new learning-rate schedule): a run folder (its raw and EMA weights) or
    ``"pretrained:NAME"``. The new run takes that model's data, data options, model and diffusion
    sections as its defaults (``config`` / ``data`` may change the data and data options, not the
    model or diffusion: an error), its own train section, a fresh optimiser at step 0, and an EMA
    that continues from the initial EMA weights; ``config.json`` records the source (``init``).

    ``resume`` continues the run folder it names (its config, weights, optimiser state and step),
    up to ``steps`` (the run's own total unless given). On resume, ``config`` (a dict or JSON
    file) and the keyword overrides may change ``RESUMABLE_TRAIN_KEYS`` only; a differing value
    of any other key is an error. The total ``steps`` may change only for ``lr_schedule="constant"``
    runs. ``stop_at`` pauses the run at that step (checkpointed); resuming it later gives exactly
    the weights of an uninterrupted run. The rules are ``diffuse.api.plan``'s.

    Everything (data, config, checkpoint, weight shapes, writability of the run folder) is
    checked before anything is written; ``config.json`` is written only then.

    Launched in several processes (``torchrun``, ``diffuse train --nproc N``, ``accelerate
    launch``; see ``core.training.distributed``) every process calls this with the same arguments:
    each checks everything, they meet, then rank 0 alone writes the run folder (``batch_size`` is
    the global batch, split across the processes).
    """
    name = domain if isinstance(domain, str) else domain.name
    if init is not None and latent is not None:
        raise UserInputError("--init with --latent is not supported (--init starts data-space models only)")
    dom = get_domain(domain) if isinstance(domain, str) else domain
    if resume is not None:
        if latent is not None:
            raise UserInputError("--latent cannot change when resuming a run (the run keeps its autoencoder)")
        run_cfg = read_run_config(resume)
        if run_cfg.domain == name and run_cfg.latent is not None:
            dom = latent_domain(dom, run_cfg.latent["path"], run_cfg.latent)
    elif latent is not None:
        dom = latent_domain(dom, latent)
    plan = plan_training(dom, data=data, out=out, config=config, resume=resume, diffusion=diffusion,
                         conditions=conditions, init=init, model=model, train_overrides=train_overrides)
    cfg = plan.config
    if cfg.latent is not None:
        dom.to(resolve_device(cfg.train.device))
    dataset = load_data(dom, cfg)
    if cfg.latent is not None:
        check_latent_data(dom, dataset.info())
    train_set, reference = split_data(dataset, cfg.train)
    info = record_conditions(dom, dataset.info())
    if plan.resuming and cfg.data_info and info != cfg.data_info:
        log.warning("data_info of the data differs from the checkpoint's; keeping the checkpoint's")
        info = cfg.data_info
    if plan.source is not None:
        check_init_data(dom, info, plan.source.data_info, plan.init_name)
    cfg.data_info = info
    dom = dom.bind(info)
    diff = build_process(cfg.diffusion, info)
    per_rank = -(-cfg.train.batch_size // distributed.world_from_env()[1])
    check_training(lambda: make_denoiser(cfg.objective, diff, dom.build_backbone(cfg.model)), diff, dom, cfg.model,
                   train_set, per_rank, resolve_device(cfg.train.device),
                   f"training this {dom.name} model")   # before building it
    torch.manual_seed(cfg.train.seed)
    diff.drop_rates(info.get("conditions") or {})     # per-condition dropout names known conditions
    denoiser = make_denoiser(cfg.objective, diff, dom.build_backbone(cfg.model))
    objective = run_objective(cfg, diff, cfg.train.device)      # diffusion, or a few-step objective
    result, _ = execute(plan.run_dir, cfg, cfg.to_json(), dom, objective, denoiser, train_set, reference,
                        checkpoint=plan.checkpoint, init=plan.init, progress=progress, stop_at=stop_at,
                        what="diffusion model", restart=plan.restart, generation=plan.generation)
    return result
