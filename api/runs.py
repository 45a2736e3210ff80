"""One path that runs every training run: diffusion models, autoencoders, classifiers, reflow.

:func:`execute` takes a run decided elsewhere (its folder, the config to write, and what it
continues from) and the model and objective to train, and runs it the same way for every kind:
the :class:`~diffuse.core.training.trainer.Trainer` checks the weights it resumes or starts from
before anything is written; then rank 0 takes the run folder's lock (``core.lock``: a second
process writing the same folder gets one line naming this one), checks again under it that the
folder is as planned, creates it and writes ``config.json``, a resumed run drops what an
interrupted one left (a run that never completed a checkpoint starts again: its leftovers are
removed), and the trainer fits. Launched in several processes (torchrun, ``--nproc``,
accelerate) every process calls it; they meet, rank 0 writes.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..core.config import RunConfig
from ..core.data.domain import Domain, DomainDataset
from ..core.errors import InUseError
from ..core.io import atomic_write_text, writing
from ..core.lock import run_lock
from ..core.training.checkpoint import complete_checkpoint
from ..core.training.trainer import Objective, Trainer, TrainResult

__all__ = ["execute"]

log = logging.getLogger(__name__)


def execute(run_dir: Path, config: RunConfig, config_json: str, domain: Domain, objective: Objective, model: nn.Module,
            train_set: DomainDataset, reference: DomainDataset | None = None, *,
            checkpoint: dict[str, Any] | None = None,
            init: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Path] | None = None,
            progress: bool = True, stop_at: int | None = None, what: str = "model",
            files: dict[str, str] | None = None, restart: bool = False, generation: int | None = None,
            finish: Callable[[TrainResult, Trainer], Any] | None = None) -> tuple[Any, Trainer]:
    """Train ``model`` under ``objective`` into ``run_dir`` (see the module docstring).
    ``config`` is what the trainer reads (domain, train section, data_info), ``domain`` is bound to
    its ``data_info``, ``config_json`` is the run's ``config.json``; ``checkpoint``: the resumed run's (``load_checkpoint(with_state=True)``);
    ``init``: ``(raw, EMA, where)`` weights a new run starts from; ``stop_at`` pauses the run at
    that step (checkpointed); ``files``: other text files of the run folder, written with
    ``config.json`` (``{name: text}``); ``restart``: the folder holds a run that never completed a
    checkpoint, which starts again; ``generation``: the checkpoint generation the plan saw (a
    resumed run's; 0 for a new one), checked again under the lock; ``finish(result, trainer)``:
    work after the fit that writes the run folder too (an autoencoder's scale and evaluation), run
    under the lock, its value returned instead of the fit's result. Returns ``(result, trainer)``."""
    trainer = Trainer(run_dir, config, domain, objective, model, train_set, reference, progress=progress)
    follow = getattr(objective, "follow", None)
    if follow is not None:                          # an objective with a curriculum reads the run's step
        follow(lambda: trainer.step)
    if checkpoint is not None:
        trainer.load(checkpoint)                    # weight shapes checked here, before anything is written
    elif init is not None:
        trainer.init_from(*init)                    # the same, for --init
    lock = run_lock(run_dir, create=checkpoint is None) if trainer.dist.is_main else nullcontext()
    with lock:
        if trainer.dist.is_main:
            _check_unchanged(run_dir, generation)
            with writing(run_dir / "config.json", "nothing of the run was changed"):
                if restart:
                    _clear_restart(run_dir)
                atomic_write_text(run_dir / "config.json", config_json)
                for name, text in (files or {}).items():
                    atomic_write_text(run_dir / name, text)
            if checkpoint is not None:
                trainer.prepare_resume()
        trainer.dist.barrier()
        log.info("training the %s %s: %d parameters, %d training samples, device %s", domain.name, what,
                 sum(p.numel() for p in model.parameters()), len(train_set), trainer.device)
        result = trainer.fit(stop_at=stop_at)
        if finish is not None:
            result = finish(result, trainer)
    return result, trainer


def _check_unchanged(run_dir: Path, generation: int | None) -> None:
    """Under the lock: the folder still holds what the plan saw (another process may have
    trained it between the plan and the lock)."""
    if generation is None:
        return
    meta = complete_checkpoint(run_dir)
    now = int(meta.get("generation", 0)) if meta is not None else 0
    if now != generation:
        raise InUseError(f"{run_dir} changed while this command was starting (another process wrote a "
                         f"checkpoint{'' if meta is None else ' at step ' + str(meta.get('step'))}); run the "
                         "command again")


def _clear_restart(run_dir: Path) -> None:
    """What a run that never completed a checkpoint left (``plan.RESTART_REMOVES``)."""
    from .plan import RESTART_REMOVES

    found = [run_dir / n for n in RESTART_REMOVES if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    for path in found:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if found or (run_dir / "config.json").exists():
        log.warning("%s held a run that never completed a checkpoint; starting it again from step 0", run_dir)
