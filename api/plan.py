"""How a training run starts: new, resumed or initialised from a model, decided once.

:func:`plan_training` turns the arguments of :func:`~diffuse.api.training.train` into a
:class:`RunPlan` (the run folder, its complete :class:`~diffuse.core.config.RunConfig`, the
checkpoint it resumes or the weights it starts from) after every rule below is checked, before
anything is written; :func:`~diffuse.api.runs.execute` then runs any plan the same way.

* **new** (``out``): the folder must be new or empty (:func:`check_out`);
* **resume** (``resume``): only what :data:`RESUMABLE_TRAIN_KEYS` names may change; the total
  steps only forward and only where the result is exact (:func:`check_resume_steps`);
* **init** (``init``: a run folder or ``pretrained:NAME``): a new run whose model and diffusion
  are the initial model's, whose data must mean the same (:func:`check_init_data`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..core.config import RunConfig, TrainConfig, update_dataclass
from ..core.data.domain import Domain
from ..core.errors import CheckpointError, DataError, OutputExistsError, UserInputError
from ..core.io import check_output_path
from ..core.lock import LOCK_NAME
from ..core.trust import allow_program, is_allowed
from ..core.training import distributed
from ..core.training.checkpoint import (check_writable, complete_checkpoint, file_sha256, identity_weights_file,
                                        is_model_folder, is_run_folder, load_checkpoint, read_run_config,
                                        refuse_model_folder)
from .configs import check_train, make_config, read_config_file
from .loading import read_pretrained

__all__ = ["RunPlan", "plan_training", "RESUMABLE_TRAIN_KEYS", "PRETRAINED_PREFIX", "check_out", "init_domain",
           "refuse_change", "check_resume_steps", "resume_config"]

log = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """A training run decided: where it goes, its whole config, and what it continues from.
    ``checkpoint``: the resumed run's newest checkpoint (with its training state); ``init``:
    ``(raw weights, EMA weights, where they are)`` of the model a new run starts from; ``source``:
    the initial model's config (to check the data against it)."""

    run_dir: Path
    config: RunConfig
    checkpoint: dict[str, Any] | None = None
    init: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Path] | None = None
    source: RunConfig | None = None
    init_name: str | None = None
    #: the folder holds a run that never completed a checkpoint: it starts again (``RESTART_REMOVES``)
    restart: bool = False
    #: the newest complete checkpoint's generation when planned (re-checked under the run's lock)
    generation: int | None = None

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


#: TrainConfig keys a resumed run may change: the total steps, evaluation / logging, the device
RESUMABLE_TRAIN_KEYS = ("steps", "eval_samples", "eval_sampler", "eval_steps", "eval_budget", "eval_min_seconds",
                        "sample_every", "log_every", "checkpoint_every", "final_eval", "device", "prefetch",
                        "precision", "channels_last", "compile")


def refuse_change(run_dir: Path, key: str, new: Any, old: Any) -> None:
    raise UserInputError(f"cannot resume {run_dir} with {key} = {new!r}: the run was trained with {old!r}, and only "
                     f"train.{', train.'.join(RESUMABLE_TRAIN_KEYS)} can change on resume; start a new run to change it")


def resume_config(run_dir: Path, cfg: RunConfig, config: dict[str, Any] | str | Path | None,
                   diffusion: dict[str, Any] | None, train_overrides: dict[str, Any]) -> RunConfig:
    """The run's config with what may change on resume applied (``RESUMABLE_TRAIN_KEYS``, from the
    config file / dict and then the keyword overrides); any other key that differs is an error."""
    user = config if isinstance(config, dict) else read_config_file(config)
    for key in ("domain", "data"):
        if key in user and user[key] != getattr(cfg, key):
            refuse_change(run_dir, key, user[key], getattr(cfg, key))
    if "objective" in user and user["objective"] != cfg.objective:
        refuse_change(run_dir, "objective", user["objective"], cfg.objective)
    for section in ("model", "data_options"):
        for key, value in (user.get(section) or {}).items():
            old = getattr(cfg, section).get(key)
            if value != old:
                refuse_change(run_dir, f"{section}.{key}", value, old)
    diff_values = {**(user.get("diffusion") or {}), **{k: v for k, v in (diffusion or {}).items() if v is not None}}
    update_dataclass(cfg.diffusion, diff_values, "diffusion")  # unknown keys: a clear error
    for key, value in diff_values.items():
        if value != getattr(cfg.diffusion, key):
            refuse_change(run_dir, f"diffusion.{key}", value, getattr(cfg.diffusion, key))
    train_values = {**(user.get("train") or {}), **{k: v for k, v in train_overrides.items() if v is not None}}
    update_dataclass(cfg.train, train_values, "train")
    for key, value in train_values.items():
        if key not in RESUMABLE_TRAIN_KEYS and value != getattr(cfg.train, key):
            refuse_change(run_dir, f"train.{key}", value, getattr(cfg.train, key))
    return replace(cfg, train=update_dataclass(cfg.train, train_values, "train"))


def check_resume_steps(run_dir: Path, old: TrainConfig, new: TrainConfig, done: int) -> None:
    """Resume only forward, and only where the result is the run it claims to be: the same total
    (always exact) or, with a constant learning rate, any larger total (exact too)."""
    if done >= new.steps:
        if new.steps == old.steps:
            raise UserInputError(f"{run_dir} is already finished ({done} of {old.steps} steps); pass --steps N above "
                             f"{done} to train on (lr_schedule constant runs only), or start a new run with --out")
        raise UserInputError(f"cannot resume {run_dir} to {new.steps} steps: its checkpoint is already at step {done}; "
                         f"pass --steps N above {done}")
    if new.steps != old.steps and old.lr_schedule != "constant":
        raise UserInputError(f"cannot change the total steps of {run_dir} from {old.steps} to {new.steps}: its "
                         f"{old.lr_schedule} learning-rate schedule depends on the total, so the result would match "
                         "neither run; start a new run, with lr_schedule \"constant\" (--config: {\"train\": "
                         "{\"lr_schedule\": \"constant\"}}) if you want runs that can be extended")


def check_out(run_dir: Path, elastic: bool = False) -> str:
    """A new run's folder, checked before anything is created: ``"new"`` (absent, or an empty
    folder), ``"restart"`` (a run folder that never completed a checkpoint: its first save was
    interrupted or failed, so it holds no training; the run starts again in it, replacing it) or,
    with ``elastic`` (an elastic launcher restarting the same command after a failure),
    ``"resume"`` for a run with a complete checkpoint. A live run's folder is refused by its lock."""
    check_output_path(run_dir, "--out")
    if not run_dir.exists():
        return "new"
    if is_run_folder(run_dir):
        if is_model_folder(run_dir):
            raise OutputExistsError(f"{run_dir} is a model folder (save_pretrained); choose another --out")
        if complete_checkpoint(run_dir) is None:
            return "restart"
        if elastic:
            return "resume"
        raise OutputExistsError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it "
                              "or choose another --out")
    if any(p.name not in _IGNORED for p in run_dir.iterdir()):
        raise OutputExistsError(f"{run_dir} is not empty and is not a diffuse run folder; choose a new or empty --out")
    return "new"


#: files an empty run folder may hold (the lock file of a command that failed before writing)
_IGNORED = {LOCK_NAME}

#: what a run folder that never completed a checkpoint may hold; removed when it starts again
RESTART_REMOVES = ("metrics.jsonl", "samples", "checkpoint", "checkpoint.tmp", "checkpoint.old", "evaluation.json",
                   "grids.json")


def final_eval_pending(run_dir: Path, cfg: RunConfig, done: int) -> bool:
    """A finished diffusion run whose final evaluation never completed (killed or failed during
    it): ``--resume`` then runs only that evaluation."""
    t = cfg.train
    if done < t.steps or not (t.final_eval and t.eval_samples > 0):
        return False
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return True
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "eval" and rec.get("step") == done:
            return False
    return True


#: ``train(init=...)`` names a shipped model with this prefix (``pretrained:molecules``)
PRETRAINED_PREFIX = "pretrained:"


def init_domain(init: str | Path) -> str:
    """The domain of the model ``train(init=...)`` would start from (a run folder or ``pretrained:NAME``)."""
    text = str(init)
    if text.startswith(PRETRAINED_PREFIX):
        from ..pretrained import folder
        return read_run_config(folder(text[len(PRETRAINED_PREFIX):])).domain
    return read_run_config(text).domain


def _read_init(init: str | Path, domain: str) -> tuple[RunConfig, dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                      dict[str, Any], Path]:
    """The model ``train(init=...)`` starts from: a run folder's newest checkpoint (raw and EMA
    weights) or ``pretrained:NAME`` (EMA weights, used for both). Returns its config, the two
    weight dicts, the record the new run keeps (``RunConfig.init``) and where the weights are."""
    text = str(init)
    if text.strip() == "":
        raise UserInputError("--init is an empty string; give a run folder or pretrained:NAME")
    if text.startswith(PRETRAINED_PREFIX):
        name = text[len(PRETRAINED_PREFIX):]

        path, src, ema = read_pretrained(name)
        model, where = ema, path
        record = {"pretrained": name, "sha256": file_sha256(path / "ema.safetensors")}
    else:
        run = Path(text)
        ck = load_checkpoint(run)
        src, where = ck["config"], ck["path"]
        model = ck["model"]
        ema = ck["ema"] if ck["ema"] is not None else model
        record = {"run": str(run.resolve()), "step": ck["meta"].get("step"),
                  "sha256": file_sha256(identity_weights_file(where))}
    if src.domain != domain:
        raise CheckpointError(f"--init {text} is a model of domain {src.domain!r}, not {domain!r}")
    if src.latent is not None:
        raise UserInputError(f"--init {text} is a latent diffusion model; --init starts data-space models only")
    return src, model, ema, record, where


def _init_config(user: dict[str, Any], src: RunConfig) -> dict[str, Any]:
    """A new run's config dict on top of the model it starts from: data, data options, model
    and diffusion default to the initial model's (the user's values win; model and diffusion
    are then checked to be unchanged), the train section is the user's over the domain's."""
    out = dict(user)
    out.setdefault("data", src.data)
    out["data_options"] = {**src.data_options, **user.get("data_options", {})}
    out["model"] = {**src.model, **user.get("model", {})}
    out["diffusion"] = {**asdict(src.diffusion), **user.get("diffusion", {})}
    if src.objective is not None:                    # a few-step model fine-tuned keeps its objective
        out.setdefault("objective", src.objective)
    return out


def _check_init_unchanged(cfg: RunConfig, src: RunConfig, init: str | Path) -> None:
    """Fine-tuning keeps the network and what it predicts: model and diffusion as the initial model's."""
    changed = [f"model.{k}" for k in sorted(set(cfg.model) | set(src.model)) if cfg.model.get(k) != src.model.get(k)]
    new, old = asdict(cfg.diffusion), asdict(src.diffusion)
    changed += [f"diffusion.{k}" for k in sorted(new) if new[k] != old.get(k)]
    if changed:
        raise UserInputError(f"--init {init}: {', '.join(changed)} differ(s) from the initial model's; a run started "
                         "from a model keeps its model and diffusion sections (leave them out of --config and flags)")


def check_init_data(dom: Domain, info: dict[str, Any], src: dict[str, Any], init: str | Path) -> None:
    """The new data must mean what the initial model's did where a weight's meaning depends on it:
    what the domain says fixes the meaning of its inputs (``Domain.data_mismatch``: molecules'
    element list) and label classes in the same order."""
    problem = dom.data_mismatch(info, src, meaning=True)
    if problem:
        key, mine, theirs = problem
        raise DataError(f"--init {init}: the data's {key} {mine} are not the initial model's {theirs} (the model's "
                        "input features would change meaning)")
    mine, theirs = info.get("conditions") or {}, src.get("conditions") or {}
    for name in sorted(set(mine) & set(theirs)):
        a, b = mine[name].get("class_names"), theirs[name].get("class_names")
        if a is not None and b is not None and a != b:
            raise DataError(f"--init {init}: the data's {name} classes {a} are not the initial model's {b} "
                            "(label embeddings would change meaning)")



def plan_training(dom: Domain, *, data: str | Path | None = None, out: str | Path | None = None,
                  config: dict[str, Any] | str | Path | None = None, resume: str | Path | None = None,
                  diffusion: dict[str, Any] | None = None, conditions: list[str] | str | None = None,
                  init: str | Path | None = None, model: dict[str, Any] | None = None,
                  train_overrides: dict[str, Any] | None = None) -> RunPlan:
    """The :class:`RunPlan` of a diffusion training run (see the module docstring); every rule is
    checked here, nothing is written. ``dom`` is the run's domain (a latent model's wrapped one)."""
    train_overrides = train_overrides or {}
    name = dom.name
    if init is not None and resume is not None:
        raise UserInputError("--init starts a new run from a model's weights; --resume continues a run: give one")
    if resume is not None:
        if conditions:
            raise UserInputError("--condition cannot change when resuming a run")
        if model:
            raise UserInputError("--backbone / the model section cannot change when resuming a run")
        run_dir = Path(resume)
        run_cfg = read_run_config(run_dir)
        if run_cfg.domain != name:
            raise CheckpointError(f"cannot resume {run_dir}: it is a run of domain {run_cfg.domain!r}, not {name!r}")
        config = _allow_user_programs(dom, config)
        cfg = resume_config(run_dir, run_cfg, config, diffusion, train_overrides)
        _check_programs(dom, run_dir, cfg)
        check_train(cfg.train)
        if data is not None:
            cfg.data = str(data)
        refuse_model_folder(run_dir)
        if complete_checkpoint(run_dir) is None:     # its first save never completed: start it again
            check_writable(run_dir)
            return RunPlan(run_dir, cfg, restart=True, generation=0)
        checkpoint = load_checkpoint(run_dir, with_state=True)
        done = int(checkpoint["state"]["step"])
        if not final_eval_pending(run_dir, cfg, done):
            check_resume_steps(run_dir, run_cfg.train, cfg.train, done)
        check_writable(run_dir)
        return RunPlan(run_dir, cfg, checkpoint=checkpoint, generation=_generation(checkpoint))
    src = weights = None
    config = _allow_user_programs(dom, config)
    if init is not None:
        src, model_w, ema_w, record, where = _read_init(init, name)
        config = _init_config(config if isinstance(config, dict) else read_config_file(config), src)
        weights = (model_w, ema_w, where)
    cfg = make_config(dom, data=data, config=config, diffusion=diffusion, conditions=conditions, model=model,
                      **train_overrides)
    cfg.latent = getattr(dom, "record", None)
    if src is not None:
        _check_init_unchanged(cfg, src, init)
        cfg.init = record
    run_dir = Path(out) if out is not None else Path("runs") / name
    state = check_out(run_dir, elastic=distributed.restart_count() > 0)
    if state == "resume":                  # an elastic restart of this command: continue its run
        return _elastic_resume(run_dir, cfg)
    return RunPlan(run_dir, cfg, init=weights, source=src, init_name=str(init) if init is not None else None,
                   restart=state == "restart", generation=0)


def _allow_user_programs(dom: Domain, config: dict[str, Any] | str | Path | None) -> dict[str, Any]:
    """The user's config as a dict; the program files its data options name (an Inception network
    for FID) may be loaded: the user gave them (``core.trust``)."""
    user = config if isinstance(config, dict) else read_config_file(config)
    for path in dom.program_files(user.get("data_options") or {}):
        allow_program(path)
    return user


def _check_programs(dom: Domain, run_dir: Path, cfg: RunConfig) -> None:
    """A resumed run that evaluates with a program file its config names: refused unless the user
    named that file again (``--config`` with the same data option), before any work."""
    t = cfg.train
    if not (t.eval_samples and (t.final_eval or t.sample_every)):
        return
    for path in dom.program_files(cfg.data_options):
        if not is_allowed(path):
            raise UserInputError(f"{run_dir} evaluates with the program file {path} (data_options of its config.json); "
                                 "diffuse loads programs only from a path you give: resume with a --config naming it "
                                 "in data_options, if you trust that file")


def _generation(checkpoint: dict[str, Any]) -> int:
    return int(checkpoint["meta"].get("generation", 0))


def _elastic_resume(run_dir: Path, cfg: RunConfig) -> RunPlan:
    """``train --out RUN`` restarted by an elastic launcher (``torchrun --max-restarts``) after a
    failure: the run it started continues from its newest complete checkpoint, if it is this
    command's run (the same config up to what may change on resume)."""
    stored = read_run_config(run_dir)
    mine, theirs = asdict(cfg), asdict(stored)
    for d in (mine, theirs):
        d.pop("data_info", None)
        d["train"] = {k: v for k, v in d["train"].items() if k not in RESUMABLE_TRAIN_KEYS}
    if mine != theirs:
        raise OutputExistsError(f"{run_dir} already holds a run of another config; an elastic restart continues only "
                                "the run its command started")
    cfg.data_info = stored.data_info
    checkpoint = load_checkpoint(run_dir, with_state=True)
    log.warning("elastic restart %d: continuing %s from its checkpoint at step %s", distributed.restart_count(),
                run_dir, checkpoint["state"]["step"])
    return RunPlan(run_dir, cfg, checkpoint=checkpoint, generation=_generation(checkpoint))
