"""``distill``: a few-step model from a trained one, and the objective of any few-step run.

:func:`distill` turns a trained diffusion model (a run folder or a shipped model) into a model
that samples in 1-8 network evaluations, with one of the teacher-based objectives of
``core.process.objectives``: consistency distillation (``cd``), consistency training started from
the model's weights (``ct``: Geng et al. 2024's consistency tuning, no teacher evaluations) or
progressive distillation (``progressive``, Salimans & Ho 2022: rounds that halve the steps). The
student starts from the teacher's EMA weights and keeps its domain, data, network and process
(``parameterization`` may change, e.g. eps -> v where a one-step map from pure noise needs it);
the run folder's ``objective`` section names the teacher (with the SHA-256 of its weights), so
``diffuse train --resume`` continues it and ``diffuse sample`` uses its few-step sampler.

:func:`run_objective` is the objective of any run config (``diffuse.api.train`` uses it): the
diffusion process itself, or a few-step objective with its teacher loaded and checked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..core.config import RunConfig, update_dataclass
from ..core.errors import CheckpointError, ConfigError, NotSupportedError, UserInputError
from ..core.process.diffusion import Diffusion
from ..core.process.objectives import (OBJECTIVES, build_objective, check_one_tensor, make_denoiser,
                                       objective_options, objective_section)
from ..core.process.parameterization import PARAMETERIZATIONS
from ..core.training.checkpoint import file_sha256, identity_weights_file, load_checkpoint
from ..core.training.trainer import TrainResult
from ..core.validation import check_device, check_positive_int, check_seed
from .configs import check_train, load_data, read_config_file, split_data
from .loading import load, load_pretrained
from .model import DiffusionModel
from .plan import PRETRAINED_PREFIX, check_out
from .runs import execute

__all__ = ["distill", "run_objective", "load_teacher", "DISTILL_METHODS", "DISTILL_TRAIN"]

#: the objectives ``distill`` offers (``ct`` started from the model is consistency tuning)
DISTILL_METHODS = ("cd", "ct", "progressive")

#: the train section of a distillation run, over the teacher's (a constant rate: the student starts
#: from trained weights, as Song et al. 2023 and Salimans & Ho 2022 fine-tune)
DISTILL_TRAIN: dict[str, Any] = {"steps": 2000, "lr": 1e-4, "lr_schedule": "constant", "warmup_steps": 0,
                                 "sample_every": 0, "checkpoint_every": 500}


def _teacher_source(checkpoint: str | Path | None, pretrained: str | None) -> tuple[str, str]:
    """``("run", folder)`` or ``("pretrained", name)`` from the arguments (exactly one given;
    ``checkpoint="pretrained:NAME"`` names a shipped model too)."""
    if (checkpoint is None) == (pretrained is None):
        raise UserInputError("distill needs the model to distil: a run folder (--checkpoint) or a shipped model "
                             "(--pretrained NAME); give one")
    if pretrained is not None:
        return "pretrained", str(pretrained)
    text = str(checkpoint)
    if text.strip() == "":
        raise UserInputError("--checkpoint is an empty string; give a run folder or pretrained:NAME")
    if text.startswith(PRETRAINED_PREFIX):
        return "pretrained", text[len(PRETRAINED_PREFIX):]
    return "run", text


def _load_source(kind: str, where: str, device: str) -> tuple[DiffusionModel, dict[str, Any], tuple]:
    """The teacher model, its record (where, which weights) and its EMA weights for the student."""
    if kind == "pretrained":
        model = load_pretrained(where, device=device)
        weights_file = model.run_dir / "ema.safetensors"
        record = {"pretrained": where, "sha256": file_sha256(weights_file)}
    else:
        model = load(where, device=device)
        ck = load_checkpoint(where)
        weights_file = identity_weights_file(ck["path"])
        record = {"run": str(Path(where).resolve()), "step": ck["meta"].get("step"),
                  "sha256": file_sha256(weights_file)}
    ema = {k: v.detach().cpu().clone() for k, v in model.denoiser.state_dict().items()}
    return model, record, (ema, ema, weights_file.parent)


def load_teacher(record: dict[str, Any] | None, device: str = "auto") -> DiffusionModel:
    """The teacher a few-step run's objective names, checked unchanged (its SHA-256)."""
    if not isinstance(record, dict) or not ({"run", "pretrained"} & set(record)):
        raise CheckpointError(f"the run's objective names no teacher it can load (got {record!r})")
    kind = "pretrained" if "pretrained" in record else "run"
    where = record[kind]
    if kind == "run" and not Path(where).exists():
        raise CheckpointError(f"the teacher of this run, {where}, is gone; a distillation run needs its teacher")
    model, now, _ = _load_source(kind, where, device)
    if record.get("sha256") and now["sha256"] != record["sha256"]:
        raise CheckpointError(f"the teacher {where} has changed since this run started (its weights' SHA-256 differs); "
                              "distil it again into a new run")
    return model


def run_objective(cfg: RunConfig, diffusion: Diffusion, device: str = "auto"):
    """The trainer's objective of run config ``cfg``: ``diffusion`` itself, or the few-step objective
    of its ``objective`` section (a distillation's teacher loaded from where the section says)."""
    parsed = objective_options(cfg.objective)
    if parsed is None:
        return diffusion
    record, options = parsed
    teacher = load_teacher(options.teacher, device).denoiser if record.teacher else None
    return build_objective(cfg.objective, diffusion, teacher, cfg.train.steps)


def distill(checkpoint: str | Path | None = None, *, out: str | Path, method: str = "cd", steps: int | None = None,
            pretrained: str | None = None, train_steps: int | None = None, batch_size: int | None = None,
            lr: float | None = None, seed: int = 0, device: str = "auto", parameterization: str | None = None,
            guidance_scale: float | None = None, config: dict[str, Any] | str | Path | None = None,
            start_steps: int | None = None, progress: bool = True) -> TrainResult:
    """Distil a trained model into a few-step model in the new run folder ``out``.

    ``method``: ``cd`` (consistency distillation), ``ct`` (consistency tuning: consistency training
    from the model's weights) or ``progressive``. ``steps``: the few-step model's default number of
    sampling steps (consistency: 2; progressive: the last round's student steps, default 4).
    ``train_steps`` / ``batch_size`` / ``lr``: the optimisation (defaults :data:`DISTILL_TRAIN` over
    the teacher's train section); ``config``: a dict or JSON file with ``train`` and ``objective``
    sections for everything else (e.g. ``{"objective": {"levels": 40, "solver": "ddim"}}``).
    ``parameterization``: the student's (default the teacher's). ``guidance_scale``: distil the
    teacher's classifier-free guided map at that scale (conditional teachers). Progressive
    distillation runs rounds from ``start_steps`` (default 16) student steps down to ``steps``, each
    round a run folder ``out/rounds/N-steps`` whose student is the next round's teacher, the last in
    ``out``. Everything is checked before anything is written."""
    if method not in DISTILL_METHODS:
        raise UserInputError(f"unknown distillation method {method!r}; expected one of {', '.join(DISTILL_METHODS)}")
    record = OBJECTIVES[method]
    for name, value in (("the number of sampling steps", steps), ("--train-steps", train_steps),
                        ("--batch-size", batch_size), ("--start-steps", start_steps)):
        if value is not None:
            check_positive_int(name, value)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise UserInputError(f"--lr must be a positive number, got {lr!r}")
    if parameterization is not None and parameterization not in PARAMETERIZATIONS:
        raise UserInputError(f"unknown parameterization {parameterization!r}; expected one of "
                             f"{', '.join(sorted(PARAMETERIZATIONS))}")
    if guidance_scale is not None and (isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float))
                                       or not guidance_scale >= 0):
        raise UserInputError(f"--guidance-scale must be a number >= 0, got {guidance_scale!r}")
    check_seed(seed)
    check_device(device)
    user = config if isinstance(config, dict) else read_config_file(config)
    unknown = sorted(set(user) - {"train", "objective"})
    if unknown:
        raise ConfigError(f"a distillation config holds train and objective sections only; got {', '.join(unknown)}")
    run_dir = Path(out)
    check_out(run_dir)
    kind, where = _teacher_source(checkpoint, pretrained)
    teacher, teacher_record, init = _load_source(kind, where, device)
    _check_teacher(teacher, where)
    if guidance_scale is not None and not teacher.condition_kinds():
        raise UserInputError(f"--guidance-scale distils classifier-free guidance; {where} is not a conditional model")
    train_values = {**DISTILL_TRAIN, **(user.get("train") or {}),
                    **{k: v for k, v in {"steps": train_steps, "batch_size": batch_size, "lr": lr, "seed": seed}.items()
                       if v is not None}}
    objective_values = dict(user.get("objective") or {})
    if guidance_scale is not None:
        if method == "ct":
            raise UserInputError("--guidance-scale needs a teacher's evaluations (cd or progressive); ct uses none")
        objective_values["guidance_scale"] = float(guidance_scale)
    if method != "progressive":
        if steps is not None:
            objective_values["sample_steps"] = steps
        return _distill_once(teacher, teacher_record, init, run_dir, record.name, objective_values, train_values,
                             parameterization, progress)
    final = steps if steps is not None else 4
    first = start_steps if start_steps is not None else max(final, 16)
    if first < final or first & (first - 1) or final & (final - 1):
        raise UserInputError(f"progressive distillation halves the steps: --start-steps ({first}) and --steps ({final}) "
                             "must be powers of two with start >= steps")
    rounds, n = [], first
    while n >= final:
        rounds.append(n)
        n //= 2
    result = None
    for i, n in enumerate(rounds):
        last = i == len(rounds) - 1
        folder = run_dir if last else run_dir / "rounds" / f"{n}-steps"
        values = {**objective_values, "student_steps": n, "sample_steps": n}
        result = _distill_once(teacher, teacher_record, init, folder, "progressive", values, train_values,
                               parameterization if i == 0 else None, progress, check=not (last and i > 0))
        if not last:
            teacher, teacher_record, init = _load_source("run", str(folder), device)
    return result


def _check_teacher(teacher: DiffusionModel, where: str) -> None:
    if teacher.config.latent is not None:
        raise NotSupportedError(f"{where} is a latent diffusion model; distil a data-space model")
    check_one_tensor(where, bool(teacher.config.diffusion.components))
    parsed = objective_options(teacher.config.objective)
    if parsed is not None and parsed[0].name != "progressive":
        raise UserInputError(f"{where} is already a few-step ({parsed[0].name}) model; distil a diffusion model")


def _distill_once(teacher: DiffusionModel, teacher_record: dict[str, Any], init: tuple, run_dir: Path, method: str,
                  objective_values: dict[str, Any], train_values: dict[str, Any], parameterization: str | None,
                  progress: bool, check: bool = True) -> TrainResult:
    """One distillation run from ``teacher`` into ``run_dir`` (checked first, then trained; the last
    round of a progressive distillation goes into the folder that holds the earlier ones)."""
    if check:
        check_out(run_dir)
    src = teacher.config
    record = OBJECTIVES[method]
    section_in = {"name": method, **objective_values, "teacher": teacher_record}
    parsed = objective_options(section_in)
    section = objective_section(*parsed)
    diffusion_cfg = src.diffusion if parameterization is None else replace(src.diffusion,
                                                                           parameterization=parameterization)
    diff = Diffusion(asdict(diffusion_cfg))
    train_cfg = update_dataclass(src.train, {**train_values, "eval_sampler": record.sampler,
                                             "eval_steps": _sample_steps(parsed[1])}, "train")
    check_train(train_cfg, diff)
    cfg = replace(src, train=train_cfg, diffusion=diff.config, objective=section, init=teacher_record,
                  data_info=dict(src.data_info))
    dom = teacher.domain
    dataset = load_data(dom, cfg)
    train_set, reference = split_data(dataset, cfg.train)
    torch.manual_seed(cfg.train.seed)
    student = make_denoiser(section, diff, dom.build_backbone(cfg.model))
    objective = build_objective(section, diff, teacher.denoiser if record.teacher else None, cfg.train.steps)
    note = json.dumps({"teacher": teacher_record, "method": method, "objective": section}, indent=2)
    result, _ = execute(run_dir, cfg, cfg.to_json(), dom, objective, student, train_set, reference, init=init,
                        progress=progress, what=f"{method} few-step model", files={"distill.json": note})
    return result


def _sample_steps(options: Any) -> int:
    return getattr(options, "student_steps", 0) or options.sample_steps
