"""Autoencoders for latent diffusion: training, loading, reconstruction figures.

A latent model is any domain plus a trained autoencoder (``diffuse train --latent AE_RUN``): the
domain supplies the autoencoder (``Domain.build_autoencoder``), this module trains it as any
other run (``diffuse.api.runs``), fits its latent scale and reports held-out reconstructions.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..core.config import RunConfig
from ..core.data.capabilities import HasAutoencoder, require
from ..core.data.domain import Domain, DomainDataset
from ..core.data.registry import get_domain
from ..core.io import atomic_write_text
from ..core.memory import check_training
from ..core.models.latent import AutoencoderConfig, AutoencoderObjective, load_autoencoder as _load
from ..core.training.optim import resolve_device
from ..core.validation import check_device
from .auxiliary import plan_auxiliary
from .configs import load_data, split_data
from .runs import execute

__all__ = ["train_autoencoder", "load_autoencoder", "reconstruction_report", "AUTOENCODER_TRAIN"]

#: training defaults of an autoencoder when its domain gives none
AUTOENCODER_TRAIN = {"steps": 1000, "batch_size": 32, "lr": 1e-3, "warmup_steps": 50, "ema_decay": 0.99,
                     "checkpoint_every": 0, "log_every": 10, "holdout_fraction": 0.1}


def train_autoencoder(domain: str | Domain = "image", *, data: str | Path | None = None, out: str | Path | None = None,
                      config: dict[str, Any] | str | Path | None = None, resume: str | Path | None = None,
                      progress: bool = True, scale_samples: int = 512, stop_at: int | None = None,
                      **train_overrides: Any) -> dict[str, Any]:
    """Train the domain's autoencoder for latent diffusion and leave a run folder at ``out``
    (default ``runs/<domain>-autoencoder``): ``config.json`` (kind ``autoencoder``), ``checkpoint/``
    (the trainer's format; the EMA weights, with the fitted latent ``scale``, are the ones used),
    ``metrics.jsonl`` and ``evaluation.json`` (held-out reconstruction figures, the scale).

    ``config``: a dict or JSON file with sections ``model`` (the autoencoder's options), ``train``
    (:class:`TrainConfig` fields) and ``data_options``; keyword overrides as in :func:`train`.
    ``resume`` continues an interrupted run (same total steps; ``stop_at`` pauses one at that
    step, checkpointed, and resuming it gives the weights of an uninterrupted run; a paused run
    returns ``scale`` and ``metrics`` as ``None``). After training, ``scale`` is set
    to 1 / std of the latents of up to ``scale_samples`` training items. Everything is checked
    before anything is written. Returns ``{"run_dir", "steps", "final_loss", "seconds", "scale",
    "metrics"}``."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    require(dom, HasAutoencoder)
    defaults = dom.default_autoencoder()
    plan = plan_auxiliary("autoencoder", dom, load_stored=AutoencoderConfig.load,
                          train_defaults={**AUTOENCODER_TRAIN, **defaults.get("train", {})},
                          model_defaults=defaults.get("model", {}), data=data, out=out, config=config, resume=resume,
                          train_overrides=train_overrides)
    cfg = replace(plan.train, sample_every=0, final_eval=False, eval_samples=0)
    dataset = load_data(dom, RunConfig(domain=dom.name, data=plan.data, data_options=plan.data_options))
    info = dataset.info()
    train_set, held = split_data(dataset, cfg)
    dom = dom.bind(info)
    check_training(lambda: dom.build_autoencoder(plan.model), None, dom, plan.model, train_set, cfg.batch_size,
                   resolve_device(cfg.device), f"training this {dom.name} autoencoder")   # before building it
    torch.manual_seed(cfg.seed)
    ae = dom.build_autoencoder(plan.model)     # option errors here, before anything is written
    ae_config = AutoencoderConfig(domain=dom.name, data=plan.data, data_options=plan.data_options, model=plan.model,
                                  train=cfg, data_info=info)
    def finish(fit, trainer) -> dict[str, Any]:          # under the run's lock: the scale and the evaluation
        run_dir = plan.run_dir
        if fit.steps < cfg.steps:      # paused: scale and evaluation come at the end of the run
            return {"run_dir": run_dir, "steps": fit.steps, "final_loss": fit.final_loss, "seconds": fit.seconds,
                    "scale": None, "metrics": None}
        # the latent scale of the EMA weights (the ones latent models use), saved with both copies
        final = trainer.ema.module
        scale = final.fit_scale(train_set, num=scale_samples, seed=cfg.seed)
        trainer.model.scale.fill_(scale)
        trainer.save(stop_on_signal=False)
        metrics = reconstruction_report(final, held if held is not None else train_set, seed=cfg.seed)
        metrics = {**metrics, "scale": scale, "held_out_items": len(held) if held is not None else 0}
        atomic_write_text(run_dir / "evaluation.json", json.dumps(metrics, indent=2))
        return {"run_dir": run_dir, "steps": fit.steps, "final_loss": fit.final_loss, "seconds": fit.seconds,
                "scale": scale, "metrics": metrics}

    result, _ = execute(plan.run_dir, RunConfig(domain=dom.name, train=cfg, data_info=info), ae_config.to_json(),
                        dom, AutoencoderObjective(), ae, train_set, checkpoint=plan.checkpoint, progress=progress,
                        stop_at=stop_at, what="autoencoder", restart=plan.restart, generation=plan.generation,
                        finish=finish)
    return result


@torch.no_grad()
def reconstruction_report(ae: Any, dataset: DomainDataset, *, seed: int = 0, batch_size: int = 64,
                          max_items: int = 2000) -> dict[str, float]:
    """Mean held-out reconstruction figures of an autoencoder (``Autoencoder.reconstruction_metrics``)
    over up to ``max_items`` items of ``dataset``."""
    ae.eval()
    dev = ae.scale.device
    sums: dict[str, float] = {}
    n = min(len(dataset), max_items)
    for idx in torch.arange(n).split(batch_size):
        batch = dataset.batch(idx, torch.Generator().manual_seed(seed)).to(dev)
        for k, v in ae.reconstruction_metrics(batch).items():
            sums[k] = sums.get(k, 0.0) + float(v.double().sum())
    return {k: v / max(n, 1) for k, v in sums.items()}


def load_autoencoder(run: str | Path, *, device: str = "auto"):
    """A trained autoencoder (frozen, eval mode) from its run folder."""
    cfg = AutoencoderConfig.load(run)
    return _load(run, get_domain(cfg.domain), device=resolve_device(check_device(device)))
