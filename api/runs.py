"""One path that runs every training run: diffusion models, autoencoders, classifiers, reflow.

:func:`execute` takes a run decided elsewhere (its folder, the config to write, and what it
continues from) and the model and objective to train, and runs it the same way for every kind:
the :class:`~diffuse.core.training.trainer.Trainer` checks the weights it resumes or starts from
before anything is written; then rank 0 creates the folder and writes ``config.json``, a resumed
run drops what an interrupted one left, and the trainer fits. Launched in several processes
(torchrun, ``--nproc``, accelerate) every process calls it; they meet, rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.config import RunConfig
from ..core.data.domain import Domain, DomainDataset
from ..core.io import atomic_write_text
from ..core.training.trainer import Objective, Trainer, TrainResult

__all__ = ["execute"]

log = logging.getLogger(__name__)


def execute(run_dir: Path, config: RunConfig, config_json: str, domain: Domain, objective: Objective, model: nn.Module,
            train_set: DomainDataset, reference: DomainDataset | None = None, *,
            checkpoint: dict[str, Any] | None = None,
            init: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Path] | None = None,
            progress: bool = True, stop_at: int | None = None, what: str = "model",
            files: dict[str, str] | None = None) -> tuple[TrainResult, Trainer]:
    """Train ``model`` under ``objective`` into ``run_dir`` (see the module docstring).
    ``config`` is what the trainer reads (domain, train section, data_info), ``domain`` is bound to
    its ``data_info``, ``config_json`` is the run's ``config.json``; ``checkpoint``: the resumed run's (``load_checkpoint(with_state=True)``);
    ``init``: ``(raw, EMA, where)`` weights a new run starts from; ``stop_at`` pauses the run at
    that step (checkpointed); ``files``: other text files of the run folder, written with
    ``config.json`` (``{name: text}``). Returns the fit's result and the trainer (its EMA model, to finish
    an autoencoder's scale)."""
    trainer = Trainer(run_dir, config, domain, objective, model, train_set, reference, progress=progress)
    follow = getattr(objective, "follow", None)
    if follow is not None:                          # an objective with a curriculum reads the run's step
        follow(lambda: trainer.step)
    if checkpoint is not None:
        trainer.load(checkpoint)                    # weight shapes checked here, before anything is written
    elif init is not None:
        trainer.init_from(*init)                    # the same, for --init
    if trainer.dist.is_main:
        if checkpoint is None:
            run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", config_json)
        for name, text in (files or {}).items():
            atomic_write_text(run_dir / name, text)
        if checkpoint is not None:
            trainer.prepare_resume()
    trainer.dist.barrier()
    log.info("training the %s %s: %d parameters, %d training samples, device %s", domain.name, what,
             sum(p.numel() for p in model.parameters()), len(train_set), trainer.device)
    return trainer.fit(stop_at=stop_at), trainer
