"""Run configurations from their sources: the domain's defaults, a config file or dict, flags.

:func:`make_config` builds the :class:`~diffuse.core.config.RunConfig` of a new run and checks
every value before anything is created; :func:`read_config_file` reads a ``--config`` JSON file
(data only: nothing in it runs). The data helpers here load a run's data set and split off its
held-out part, the same way for every kind of run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.config import DiffusionConfig, RunConfig, TrainConfig, update_dataclass, upgrade_run_config
from ..core.data.domain import Domain, DomainDataset
from ..core.data.registry import get_domain
from ..core.errors import ConfigError, DataError, IsAFolderError, MissingPathError
from ..core.process.build import build_process
from ..core.process.diffusion import Diffusion
from ..core.process.objectives import model_options, objective_options, objective_section
from ..core.process.presets import PRESET_OBJECTIVES, PRESET_OWNS, resolve
from ..core.sampling.registry import check_sampler_name

__all__ = ["read_config_file", "recipe_domain", "make_config", "check_train", "diffusion_config", "objective_for",
           "load_data",
           "split_data", "condition_data_options", "record_conditions", "upgrade_config_file", "CONFIG_SECTIONS"]

#: the sections a config file may hold
CONFIG_SECTIONS = ("model", "diffusion", "train", "data_options", "domain", "data", "version", "objective")


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """The JSON object in config file ``path`` (``{}`` for None); one ConfigError line for anything else."""
    if path is None:
        return {}
    p = Path(path)
    if str(path).strip() == "":
        raise ConfigError("--config is an empty string; give a JSON file")
    if p.is_dir():
        raise IsAFolderError(f"config file {p} is a folder; give a JSON file")
    if not p.exists():
        raise MissingPathError(f"config file {p} does not exist")
    if not p.is_file():
        raise ConfigError(f"config file {p} is not a regular file; give a JSON file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text; expected a JSON file") from None
    except RecursionError:
        raise ConfigError(f"config file {p} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a JSON object with keys model / diffusion / train / data_options")
    unknown = set(data) - set(CONFIG_SECTIONS)
    if unknown:
        raise ConfigError(f"config file {p} has unknown section(s) {sorted(unknown)}; "
                         "expected model, diffusion, train, data_options, objective")
    return data


def recipe_domain(path: str | Path) -> str | None:
    """The ``domain`` a config file (a recipe such as ``recipes/molecules.json``) names, if any."""
    name = read_config_file(path).get("domain")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"config file {path}: 'domain' must be a domain name, got {name!r}")
    return name


def make_config(domain: str | Domain, *, data: str | Path | None = None, config: dict[str, Any] | str | Path | None = None,
                diffusion: dict[str, Any] | None = None, conditions: list[str] | str | None = None,
                model: dict[str, Any] | None = None, **train_overrides: Any) -> RunConfig:
    """A :class:`RunConfig` from the domain's defaults, a config dict / JSON file, ``diffusion``
    overrides of :class:`DiffusionConfig` fields (``{"training": "edm"}``...; see :func:`diffusion_config`), and keyword overrides
    of :class:`TrainConfig` fields (``steps=``, ``batch_size=``, ``lr=``, ``device=``, ``seed=`` ...);
    ``model`` overrides the model section (``{"backbone": "dit"}``: another of the domain's
    backbones, with its own defaults).

    Everything is validated here (types and ranges of every field, the model section through the
    domain's ``check_config``, the schedule by building it, the evaluation sampler and its step
    count against the schedule) so that a mistake is a UserInputError before any file exists."""
    dom = get_domain(domain) if isinstance(domain, str) else domain
    user = config if isinstance(config, dict) else read_config_file(config)
    if user.get("domain") is not None and user["domain"] != dom.name:
        raise ConfigError(f"the config is for domain {user['domain']!r}, not {dom.name!r}")
    user = upgrade_config_file(user, dom)
    for section in ("model", "diffusion", "train", "data_options"):
        if not isinstance(user.get(section, {}), dict):
            raise ConfigError(f"config section {section!r} must be a JSON object, got {user[section]!r}")
    if "data" in user and user["data"] is not None and not isinstance(user["data"], str):
        raise ConfigError(f"config 'data' must be a path string, got {user['data']!r}")
    diffusion_cfg = diffusion_config(dom, {**user.get("diffusion", {}),
                                           **{k: v for k, v in (diffusion or {}).items() if v is not None}})
    objective = objective_for(user.get("objective"), diffusion_cfg.training)
    model = dom.model_config({**user.get("model", {}), **{k: v for k, v in (model or {}).items() if v is not None},
                              **model_options(objective)})
    dom.check_config(model)
    diff = build_process(diffusion_cfg)  # the names of the process's axes (or components), with a clear message
    train_cfg = update_dataclass(TrainConfig(), {**dom.default_train(), **user.get("train", {})}, "train")
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    train_cfg = update_dataclass(train_cfg, overrides, "train")
    check_train(train_cfg, diff)
    data_options = {**dom.default_data(), **user.get("data_options", {})}
    data_options.update(condition_data_options(dom, conditions))   # --condition NAME
    data = data if data is not None else user.get("data")
    if data is not None and str(data).strip() == "":
        raise ConfigError("--data is an empty string; give a file or folder, or leave it out for the bundled data")
    return RunConfig(domain=dom.name, data=str(data) if data is not None else None, data_options=data_options,
                     model=model, diffusion=diffusion_cfg, train=train_cfg, objective=objective)


def objective_for(section: Any, training: str) -> dict[str, Any] | None:
    """A new run's objective section: a config file's ``objective`` section, else the objective its
    preset selects (``PRESET_OBJECTIVES``: ``ct``, ``shortcut``) with its defaults, else ``None``
    (diffusion); validated. A teacher-based objective comes from ``diffuse distill`` (or from the
    distilled model a run is started from with ``--init``), which names its teacher."""
    if section is None and training in PRESET_OBJECTIVES:
        section = {"name": PRESET_OBJECTIVES[training]}
    parsed = objective_options(section)
    if parsed is None:
        return None
    record, options = parsed
    if record.teacher and options.teacher is None:
        raise ConfigError(f"the {record.name} objective distils a trained model: use `diffuse distill --method "
                          f"{record.name}`, not a training config")
    return objective_section(record, options)


def upgrade_config_file(user: dict[str, Any], dom: Domain) -> dict[str, Any]:
    """A config file's sections in the current format: a file that states an older ``version``
    (recipes written by ``export-pretrained`` do) is upgraded as a run config of that version is
    (``core.config.upgrade_run_config`` and the domain's ``upgrade_config``); a file without one is
    read as the current format; a newer one is refused."""
    if "version" not in user:
        return user
    upgraded = upgrade_run_config({**user, "domain": dom.name}, type(dom).upgrade_config)
    upgraded.pop("version")
    if "domain" not in user:
        upgraded.pop("domain")
    return upgraded


def diffusion_config(dom: Domain, user: dict[str, Any]) -> DiffusionConfig:
    """The diffusion section of a run: the domain's defaults under the user's values, with the
    preset applied (``core.process.presets``). Where the user names a preset, the domain's own
    defaults for the axes that preset owns yield to it (``PRESET_OWNS``): ``--training flow`` on a
    domain whose default is v-prediction on a cosine schedule trains flow matching, not a
    contradiction; the user's own values always win."""
    defaults = dict(dom.default_diffusion())
    owned = PRESET_OWNS.get(user.get("training"), ()) if isinstance(user.get("training"), str) else ()
    defaults = {k: v for k, v in defaults.items() if k not in owned}
    cfg = update_dataclass(DiffusionConfig(), {**defaults, **user}, "diffusion")
    return resolve(cfg.validate())


def check_train(cfg: TrainConfig, diffusion: Diffusion | None = None) -> None:
    """Types and ranges of every field (``TrainConfig.validate``), and, given the diffusion
    process, that the evaluation sampler can run ``eval_steps`` steps on its schedule."""
    cfg.validate()
    check_sampler_name(cfg.eval_sampler, "train.eval_sampler")
    if diffusion is not None:
        T = diffusion.schedule.num_steps
        if T and cfg.eval_steps > T:
            raise ConfigError(f"train.eval_steps is {cfg.eval_steps} but the schedule has only T={T} steps")


def load_data(dom: Domain, config: RunConfig) -> DomainDataset:
    """The data set a run trains on (``config.data``, or the domain's bundled one); a DataError if it is missing or empty."""
    if config.data is not None and config.data not in dom.named_datasets and not Path(config.data).exists():
        raise DataError(f"data path {config.data} does not exist")
    dataset = dom.load_data(config.data, config.data_options)
    if len(dataset) == 0:
        raise DataError(f"data at {config.data or 'the bundled default'} holds no usable {dom.name} samples")
    return dataset


def split_data(dataset: DomainDataset, cfg: TrainConfig) -> tuple[DomainDataset, DomainDataset | None]:
    """``(training part, held-out part or None)``: ``cfg.holdout_fraction`` held out, seeded by ``cfg.seed``."""
    if cfg.holdout_fraction <= 0 or len(dataset) < 4:
        return dataset, None
    return dataset.split(cfg.holdout_fraction, seed=cfg.seed)


def condition_data_options(dom: Domain, conditions: list[str] | str | None) -> dict[str, Any]:
    """Data options that make the domain's data carry the requested conditions."""
    if not conditions:
        return {}
    names = [conditions] if isinstance(conditions, str) else list(conditions)
    return dom.condition_data_options(names)


def record_conditions(dom: Domain, info: dict[str, Any]) -> dict[str, Any]:
    """``info`` (a data set's ``data_info``) with ``info["conditions"] = {name: kind spec}`` of a
    conditional model (saved with the run); ``dom`` need not be bound."""
    kinds = dom.bind(info).condition_kinds()
    if kinds:
        info = {**info, "conditions": {k: kind.spec() for k, kind in kinds.items()}}
    return info
