"""Run configuration: plain dataclasses, JSON in and out (no config framework).

A run folder's ``config.json`` holds a :class:`RunConfig`: everything needed to rebuild the
model (domain, backbone keyword arguments, diffusion settings, the dataset's ``data_info``)
and to continue training. Configs are data: :meth:`DiffusionConfig.validate` and
:meth:`TrainConfig.validate` check the types and ranges of their fields (``core.validation``);
names (a schedule kind, a parameterization, a sampler) are checked where the objects are built
(``core.process.diffusion``, ``core.sampling.registry``).

Run configs written by older versions are upgraded on reading (:func:`upgrade_run_config`); one
written by a newer version is refused (:data:`CONFIG_VERSION`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError, ConfigVersionError
from .validation import (AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, UNIT, OneOf, Range, check_device,
                         check_fields, check_value)

__all__ = ["DiffusionConfig", "TrainConfig", "RunConfig", "update_dataclass", "CONFIG_VERSION",
           "check_config_version", "upgrade_run_config", "ConfigVersionError"]


def _device_limit(value: Any) -> str | None:
    check_device(value)
    return None


# ------------------------------------------------------------------------------------ the configs
@dataclass
class DiffusionConfig:
    """How noise is added, what the network predicts and how training draws its times.

    The process is four independent axes: the ``schedule`` (a path ``(alpha_t, sigma_t)``), the
    ``parameterization`` (what the network predicts, with its preconditioning), the
    ``time_sampler`` (training times) and the loss ``weighting``. ``training`` names a preset
    that fills the axes left ``None`` (``core.process.presets``): ``ddpm`` (eps, the schedule's
    own times), ``continuous`` (eps, ``t ~ U[t_eps, 1]``), ``edm`` (EDM preconditioning,
    log-normal noise levels) and ``flow`` (flow matching: a flow path, the velocity,
    logit-normal times). A value given explicitly always wins over the preset's.
    """

    #: ``{"kind": "linear" | "cosine" | "polynomial" | "sigma" | "subvp" | "flow", **kwargs}``
    #: (see ``core.process.schedule``); ``None``: the preset's (linear; the linear flow path for flow)
    schedule: dict[str, Any] | None = None
    #: ``eps`` | ``x0`` | ``v`` | ``edm`` | ``flow`` (the flow-matching velocity; needs a flow
    #: schedule); ``None``: the preset's
    parameterization: str | None = None
    #: ``uniform`` (DDPM simple loss; EDM's loss with ``edm``) | ``min_snr``
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    #: the network's noise input is ``c_noise = t * time_scale`` (eps / x0 / v; the path time for
    #: flow; EDM uses ``ln(sigma) / 4``): backbones get it already scaled
    time_scale: float = 1000.0
    #: the preset: ``ddpm`` | ``continuous`` | ``edm`` | ``flow`` | ``ct`` | ``shortcut`` (the last
    #: two also select a few-step objective: ``core.process.presets.PRESET_OBJECTIVES``)
    training: str = "ddpm"
    #: training times: ``schedule`` (the schedule's own: uniform over ``{1..T}/T`` for a T-step
    #: chain) | ``uniform`` (``U[t_eps, t_max]``) | ``lognormal`` (EDM: ``ln(sigma/alpha) ~
    #: N(p_mean, p_std^2)``) | ``logit_normal`` (``sigmoid(N(t_loc, t_scale^2))``, SD3) | ``mode``
    #: (SD3 eq. 20 with ``mode_scale``); ``None``: the preset's
    time_sampler: str | None = None
    #: the lower end of ``uniform`` times; ``None``: the preset's (1e-3; 0 for flow)
    t_eps: float | None = None
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    #: probability that ALL of a training sample's conditions are replaced by their null values
    #: together (condition dropout; only used when batches carry a condition), so the model is
    #: also unconditional
    cond_drop: float = 0.1
    #: ``{name: p}``: each named condition is also dropped on its own with probability ``p``, drawn
    #: independently (InstructPix2Pix-style), so a model trained with a label and a text can be
    #: sampled with either alone; ``None``: ``cond_drop`` for every condition of a model with two or
    #: more (none for a model with one); ``{}``: the joint draw only (``core.process.diffusion``)
    cond_drop_each: dict[str, float] | None = None
    t_loc: float = 0.0
    t_scale: float = 1.0
    mode_scale: float = 1.29
    #: SD3's time shift ``t' = s t / (1 + (s - 1) t)``; written into the flow schedule, which is
    #: the one place it is applied (``core.process.schedule.FlowSchedule``)
    shift: float = 1.0
    #: a mixed state (``core.process.mixed``): ``{component name: spec}``, each with its own process
    #: (``{"kind": "gaussian", "schedule": ..., "parameterization": ...}`` or ``{"kind":
    #: "categorical", "prior": "mask", "schedule": ..., "rule": "d3pm"}``, and a loss ``weight``);
    #: ``None``: the sample is one continuous tensor and the fields above describe its process
    components: dict[str, Any] | None = None

    def validate(self) -> "DiffusionConfig":
        """Check every field's type and range; a ConfigError naming the key. (Names are checked
        where the process is built: :class:`~diffuse.core.process.diffusion.Diffusion`.)"""
        check_fields(self, "diffusion", {
            "min_snr_gamma": POSITIVE, "time_scale": POSITIVE, "t_eps": Range(0, 1, False, True),
            "sigma_data": POSITIVE, "p_std": POSITIVE, "cond_drop": UNIT,
            "t_scale": POSITIVE, "mode_scale": Range(-1.0, 2.0 / (math.pi - 2.0)), "shift": POSITIVE})
        for name, p in (self.cond_drop_each or {}).items():
            check_value(f"diffusion.cond_drop_each.{name}", p, float, 0.0, UNIT)
        if self.components is not None and (not isinstance(self.components, dict) or not self.components):
            raise ConfigError(f"diffusion.components must be an object {{name: spec}} with at least one component, "
                              f"got {self.components!r}")
        if self.schedule is not None and not isinstance(self.schedule, (dict, str)):
            raise ConfigError(f"diffusion.schedule must be an object like {{\"kind\": \"cosine\"}}, got "
                              f"{self.schedule!r}")
        return self


@dataclass
class TrainConfig:
    """Optimisation settings for :class:`~diffuse.core.training.trainer.Trainer`."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0          # cosine decays to lr * min_lr_ratio
    # cosine (warm-up, then cosine decay over `steps`) | constant (warm-up, then lr): only a constant
    # schedule lets a resumed run extend its total steps and still match an uninterrupted run
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0             # max global grad norm; 0 disables
    grad_accum: int = 1                # micro-batches per optimizer step
    ema_decay: float = 0.999
    ema_warmup: bool = True            # decay = min(ema_decay, (1 + n) / (10 + n))
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    precision: str = "auto"            # auto (bf16 autocast on CUDA) | fp32 | bf16 (autocast, CPU too)
    channels_last: bool = False        # the domain's channels-last layout (image backbones; fast on GPUs)
    compile: bool = False              # torch.compile the backbone (first steps slower while it compiles)
    log_every: int = 10
    checkpoint_every: int = 500        # 0: only at the end
    sample_every: int = 0              # periodic sample + evaluate; 0: only at the end
    eval_samples: int = 64             # samples drawn for periodic / final evaluation (0: none)
    eval_sampler: str = "ddim"
    eval_steps: int = 50
    # all evaluations of a run together cost at most this share of its training time (fewer samples,
    # then fewer steps; see core.training.evalbudget); null: the configured evaluation unchanged
    eval_budget: float | None = 0.2
    eval_min_seconds: float = 30.0     # the final evaluation may always take this long
    holdout_fraction: float = 0.1      # data held out as the evaluation reference
    prefetch: int = 2                  # batches built ahead in a background thread (0: none); same results
    final_eval: bool = True
    # several processes: 0 all-reduces the gradients every step (DDP); H > 0 runs DiLoCo, the workers
    # meet every H steps (core.training.diloco) with an outer Nesterov step of outer_lr / outer_momentum
    sync_every: int = 0
    outer_lr: float = 0.7
    outer_momentum: float = 0.9

    def validate(self) -> "TrainConfig":
        """Check every field's type and range (and that the device exists); a ConfigError naming the key.
        (The evaluation sampler's name is checked where the run is planned: ``diffuse.api``.)"""
        check_fields(self, "train", {
            "steps": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
            "warmup_steps": NON_NEGATIVE, "min_lr_ratio": UNIT, "grad_clip": NON_NEGATIVE,
            "grad_accum": AT_LEAST_ONE, "ema_decay": FRACTION, "seed": Range(0, 2 ** 63, hi_open=True),
            "device": _device_limit, "precision": OneOf(("auto", "fp32", "bf16")), "log_every": AT_LEAST_ONE,
            "checkpoint_every": NON_NEGATIVE, "sample_every": NON_NEGATIVE, "eval_samples": NON_NEGATIVE,
            "eval_steps": AT_LEAST_ONE,
            "eval_budget": POSITIVE, "eval_min_seconds": NON_NEGATIVE, "holdout_fraction": FRACTION,
            "prefetch": NON_NEGATIVE, "sync_every": NON_NEGATIVE, "outer_lr": POSITIVE, "outer_momentum": FRACTION})
        return self


def update_dataclass(obj, values: dict[str, Any], what: str):
    """Return a copy of dataclass ``obj`` with ``values`` applied; unknown keys are an error."""
    if not isinstance(values, dict):
        raise ConfigError(f"the {what} section must be a JSON object, got {values!r}")
    names = {f.name for f in fields(obj)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    data = asdict(obj)
    data.update(values)
    return type(obj)(**data)


#: The run-config format this code reads and writes. Raise it with any change that alters what a
#: saved run means (a data option that changes the model space, a new parameterization ...) and add
#: the upgrade of the older format to :func:`upgrade_run_config`: an older diffuse then refuses the
#: run with one line instead of sampling from it with another meaning.
#:
#: 2: the process as independent axes (``parameterization`` ``edm`` / ``flow`` and ``time_sampler``
#: ``schedule`` / ``uniform`` / ``lognormal`` stated, not implied by ``training``); backbones get
#: their noise input already scaled (a domain may move a backbone's own scaling into
#: ``diffusion.time_scale``: ``Domain.upgrade_config``).
#: 3: a run may carry an ``objective`` section (few-step models: consistency distillation and
#: training, shortcut models, progressive distillation; ``core.process.objectives``), which changes
#: how it samples, and ``diffusion.components`` (a mixed state: ``core.process.mixed``); a
#: version-2 run has neither (the diffusion objective, one tensor), so nothing is rewritten.
CONFIG_VERSION = 3

#: the training times version-1 configs implied by their ``training`` mode (flow runs stored theirs)
_V1_TIME_SAMPLER = {"ddpm": "schedule", "continuous": "uniform", "edm": "lognormal"}


def check_config_version(version: Any) -> None:
    """Refuse a config ``version`` that is not a positive integer or is newer than :data:`CONFIG_VERSION`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"version must be a positive integer, got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigVersionError(f"written by a newer diffuse (config version {version}; this one reads up to "
                                 f"{CONFIG_VERSION}); upgrade diffuse to use it")


def upgrade_run_config(d: dict[str, Any], domain_upgrade: Callable[[dict[str, Any], int], dict[str, Any]] | None = None
                       ) -> dict[str, Any]:
    """A run config dict of an older format in the current one (the same model, the same
    meaning); ``domain_upgrade(d, version)`` applies the domain's part (``Domain.upgrade_config``).
    Version 1 -> 2: the axes ``training`` implied are written out (``edm`` / ``flow`` training
    meant that parameterization whatever the field said; ``ddpm`` / ``continuous`` / ``edm`` meant
    ``schedule`` / ``uniform`` / ``lognormal`` times; flow's ``uniform`` times were ``U[0, 1]``).
    Version 2 -> 3: nothing changes (version 3 added the optional ``objective`` section and
    ``diffusion.components``)."""
    d = dict(d)
    version = d.get("version", 1)
    check_config_version(version)
    if version < 2:
        diff = dict(d.get("diffusion") or {})
        mode = diff.get("training", "ddpm")
        if mode in ("edm", "flow"):
            diff["parameterization"] = mode
        if mode in _V1_TIME_SAMPLER:
            diff["time_sampler"] = _V1_TIME_SAMPLER[mode]
        elif mode == "flow":
            diff.setdefault("time_sampler", "logit_normal")
            if diff["time_sampler"] == "uniform":
                diff["t_eps"] = 0.0
        diff.setdefault("parameterization", "eps")
        diff.setdefault("t_eps", 1e-3)
        d["diffusion"] = diff
    if version < CONFIG_VERSION:    # 2 -> 3: nothing to rewrite (no objective section: diffusion)
        if domain_upgrade is not None:
            d = domain_upgrade(d, version)
        d["version"] = CONFIG_VERSION
    return d


@dataclass
class RunConfig:
    domain: str
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_info: dict[str, Any] = field(default_factory=dict)
    #: a latent model's autoencoder (``core.models.latent.autoencoder_record``: path, sha256, domain,
    #: model); ``None`` for a model in data space
    latent: dict[str, Any] | None = None
    #: the weights a run started from (``diffuse train --init``: the run folder and step, or the
    #: pretrained model's name, with the SHA-256 of the weights file); ``None`` for a run from scratch
    init: dict[str, Any] | None = None
    #: the objective a few-step model was trained with (``{"name": "cd" | "ct" | "shortcut" |
    #: "progressive", **options}``, ``core.process.objectives``; a distilled model's names its
    #: teacher); ``None``: the diffusion objective
    objective: dict[str, Any] | None = None
    #: the run-config format (:data:`CONFIG_VERSION`); a run written in a newer format is refused
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], domain_upgrade: Callable | None = None) -> "RunConfig":
        """A RunConfig from its JSON dict (an older format upgraded first: :func:`upgrade_run_config`)."""
        d = upgrade_run_config(d, domain_upgrade)
        d["diffusion"] = update_dataclass(DiffusionConfig(), d.get("diffusion", {}), "diffusion")
        d["train"] = update_dataclass(TrainConfig(), d.get("train", {}), "train")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path, domain_upgrade: Callable | None = None) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()), domain_upgrade)
