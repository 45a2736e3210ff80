"""Rectified flow's second stage: a flow model retrained on its own (noise, sample) pairs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..core.config import update_dataclass
from ..core.errors import UserInputError
from ..core.sampling.guidance import Guidance
from ..core.sampling.registry import check_sampler_options
from ..core.training.reflow import check_pair_sampler, draw_pairs
from ..core.training.trainer import TrainResult
from ..core.validation import check_positive_int, check_seed
from .configs import check_train
from .loading import load
from .plan import check_out
from .runs import execute

__all__ = ["reflow"]


def reflow(checkpoint: str | Path, *, out: str | Path, pairs: int = 1000, steps: int = 20, sampler: str = "flow_heun",
           train_steps: int | None = None, batch_size: int | None = None, lr: float | None = None, seed: int = 0,
           device: str = "auto", progress: bool = True, guidance_scale: float | str | None = None) -> TrainResult:
    """Rectified flow's second stage (Liu et al. 2023, "Flow Straight and Fast"): draw ``pairs``
    (noise, sample) pairs with the flow model's deterministic ODE (``sampler`` with ``steps``
    steps on the uniform grid), then retrain a copy of the model (from its EMA weights) on that
    coupling: the loss uses each sample's own noise instead of an independent draw
    (``core.process.diffusion``), which straightens the paths for good samples at 1-4 steps. The
    result is a new run folder ``out`` (its ``reflow.json`` records the source and the pair
    settings); every argument is checked before anything is written.

    A conditional model's pairs are drawn given the conditions of random training items (seeded
    by ``seed``; :meth:`~diffuse.api.model.DiffusionModel.training_conditions`), conditionally
    (``guidance_scale`` None or 1) or with classifier-free guidance at ``guidance_scale``, and each
    pair keeps its condition; the retraining applies the model's own condition dropout, so the
    reflowed model stays conditional and unconditional (classifier-free guidance still works)."""
    check_positive_int("the number of pairs", pairs)
    check_positive_int("the number of ODE steps", steps)
    check_seed(seed)
    check_sampler_options(sampler, {})
    check_pair_sampler(sampler)
    if guidance_scale is not None:
        Guidance.parse(guidance_scale)                      # a number >= 0, checked before any work
    run_dir = Path(out)
    restart = check_out(run_dir) == "restart"
    model = load(checkpoint, device=device)
    if model.diffusion.config.parameterization != "flow":
        raise UserInputError(f"{checkpoint} is a {model.config.diffusion.training!r} model; reflow needs a flow model "
                             "(diffuse train --training flow)")
    cond, guidance = None, []
    if model.condition_kinds():
        cond = model.training_conditions(pairs, seed)
        if guidance_scale is not None:
            guidance = [Guidance.parse(guidance_scale)]
    elif guidance_scale is not None:
        raise UserInputError("--guidance-scale applies to conditional models; this one was trained without conditions")
    train_cfg = update_dataclass(model.config.train, {k: v for k, v in {"steps": train_steps, "batch_size": batch_size,
                                                                           "lr": lr, "seed": seed}.items()
                                                        if v is not None}, "train")
    check_train(train_cfg, model.diffusion)
    dataset = draw_pairs(model.denoiser, model.domain, pairs, steps=steps, sampler=sampler, seed=seed,
                         device=model.device, cond=cond, guidance=guidance)
    cfg = replace(model.config, train=train_cfg)
    record = json.dumps({"source": str(checkpoint), "pairs": pairs, "steps": steps, "sampler": sampler, "seed": seed,
                         "conditions": "of random training items" if cond is not None else None,
                         "guidance_scale": None if guidance_scale is None else float(guidance_scale)}, indent=2)
    result, _ = execute(run_dir, cfg, cfg.to_json(), model.domain, model.diffusion, model.denoiser.train(), dataset,
                        model.reference_data(), progress=progress, what="reflowed model", files={"reflow.json": record},
                        restart=restart, generation=0)
    return result
