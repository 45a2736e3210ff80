"""Runs of the auxiliary models (autoencoders, noise-aware classifiers): planned the same way.

An auxiliary run has a ``config.json`` of its kind (``core.models``) with sections ``model``,
``train`` and ``data_options``. :func:`plan_auxiliary` decides a new run (its folder new or empty,
the sections from the kind's defaults under the user's config and flags) or a resumed one (the
same total steps; only :data:`~diffuse.api.plan.RESUMABLE_TRAIN_KEYS` may change), checking
everything before anything is written; :func:`~diffuse.api.runs.execute` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..core.config import TrainConfig, update_dataclass
from ..core.data.domain import Domain
from ..core.errors import CheckpointError, ConfigError, UserInputError
from ..core.training.checkpoint import check_writable, complete_checkpoint, read_checkpoint, refuse_model_folder
from .configs import check_train, read_config_file
from .plan import RESUMABLE_TRAIN_KEYS, check_out, refuse_change

__all__ = ["AuxPlan", "plan_auxiliary", "AUX_SECTIONS"]

#: the sections of an auxiliary run's config file
AUX_SECTIONS = ("model", "train", "data_options", "domain", "data")


@dataclass
class AuxPlan:
    """An auxiliary run decided: its folder, train / model / data sections, the config file's other
    content (``user``), and, when resuming, its stored config and checkpoint."""

    run_dir: Path
    train: TrainConfig
    model: dict[str, Any]
    data_options: dict[str, Any]
    data: str | None
    user: dict[str, Any]
    stored: Any = None
    checkpoint: dict[str, Any] | None = None
    #: the folder holds a run that never completed a checkpoint: it starts again
    restart: bool = False
    #: the newest complete checkpoint's generation when planned (re-checked under the run's lock)
    generation: int | None = None

    @property
    def resuming(self) -> bool:
        return self.checkpoint is not None


def plan_auxiliary(kind: str, dom: Domain, *, load_stored: Callable[[Path], Any], train_defaults: dict[str, Any],
                   model_defaults: dict[str, Any], data: str | Path | None = None, out: str | Path | None = None,
                   config: dict[str, Any] | str | Path | None = None, resume: str | Path | None = None,
                   model: dict[str, Any] | None = None, extra_sections: tuple[str, ...] = (),
                   train_overrides: dict[str, Any] | None = None) -> AuxPlan:
    """The plan of a ``kind`` run (``autoencoder``, ``classifier``) of domain ``dom`` (see the
    module docstring). ``load_stored(run_dir)`` reads a run folder's config of this kind;
    ``extra_sections``: config-file sections of this kind beyond :data:`AUX_SECTIONS`."""
    over = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    if resume is not None:
        run_dir = Path(resume)
        stored = load_stored(run_dir)
        if stored.domain != dom.name:
            raise CheckpointError(f"cannot resume {run_dir}: it is a{'n' if kind[0] in 'aeiou' else ''} {kind} of "
                                  f"domain {stored.domain!r}, not {dom.name!r}")
        if config is not None or data is not None or model:
            raise UserInputError(f"--config / --data cannot change when resuming a{'n' if kind[0] in 'aeiou' else ''} "
                                 f"{kind} run")
        for key, value in over.items():
            if key not in RESUMABLE_TRAIN_KEYS or key == "steps" and value != stored.train.steps:
                refuse_change(run_dir, f"train.{key}", value, getattr(stored.train, key, None))
        cfg = update_dataclass(stored.train, over, "train")
        check_writable(run_dir)
        refuse_model_folder(run_dir)
        if complete_checkpoint(run_dir) is None:   # its first save never completed: start it again
            return AuxPlan(run_dir, cfg, stored.model, stored.data_options, stored.data, {}, stored, None,
                           restart=True, generation=0)
        checkpoint = read_checkpoint(run_dir, with_state=True)
        if int(checkpoint["state"]["step"]) >= cfg.steps:
            raise UserInputError(f"{run_dir} is already finished ({checkpoint['state']['step']} of {cfg.steps} steps)")
        return AuxPlan(run_dir, cfg, stored.model, stored.data_options, stored.data, {}, stored, checkpoint,
                       generation=int(checkpoint["meta"].get("generation", 0)))
    user = config if isinstance(config, dict) else read_config_file(config)
    unknown = set(user) - set(AUX_SECTIONS) - set(extra_sections)
    if unknown:
        raise ConfigError(f"{kind} config has unknown section(s) {sorted(unknown)}; expected model, train, "
                          "data_options")
    for section in ("model", "train", "data_options"):
        if not isinstance(user.get(section, {}), dict):
            raise ConfigError(f"config section {section!r} must be a JSON object, got {user[section]!r}")
    if user.get("domain") is not None and user["domain"] != dom.name:
        raise ConfigError(f"the config is for domain {user['domain']!r}, not {dom.name!r}")
    cfg = update_dataclass(TrainConfig(), {**train_defaults, **user.get("train", {})}, "train")
    cfg = update_dataclass(cfg, over, "train")
    check_train(cfg)
    data_path = str(data) if data is not None else user.get("data")
    if data_path is not None and str(data_path).strip() == "":
        raise UserInputError("--data is an empty string; give a file or folder, or leave it out for the bundled data")
    run_dir = Path(out) if out is not None else Path("runs") / f"{dom.name}-{kind}"
    restart = check_out(run_dir) == "restart"
    return AuxPlan(run_dir, cfg, {**model_defaults, **user.get("model", {}), **(model or {})},
                   {**dom.default_data(), **user.get("data_options", {})}, data_path, user, restart=restart,
                   generation=0)
