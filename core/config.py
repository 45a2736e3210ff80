"""Run configuration: plain dataclasses, JSON in and out (no config framework).

A run folder's ``config.json`` holds a :class:`RunConfig`: everything needed to rebuild the
model (domain, backbone keyword arguments, diffusion settings, the dataset's ``data_info``)
and to continue training.

Validation lives here too, driven by types: :func:`check_kwargs` checks keyword arguments
against a callable's signature (annotations, else the default's type; ``bool`` is not an
integer, integers are accepted for floats, ``NaN`` never, infinity only where the default is
infinite) plus optional :class:`Range` / :class:`OneOf` limits. ``TrainConfig.validate`` and
``DiffusionConfig.validate`` apply it to their own fields; domains use it in ``check_config``
and the samplers for their options. Every failure is a ``ValueError`` naming the key.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import types
import typing
from collections.abc import Sequence as _AbcSequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["DiffusionConfig", "TrainConfig", "RunConfig", "update_dataclass", "check_kwargs", "check_value",
           "check_device", "check_schedule", "Range", "OneOf"]


# ------------------------------------------------------------------------------------ validation helpers
@dataclass(frozen=True)
class Range:
    """A numeric interval; ``None`` ends are open-ended. ``lo_open`` / ``hi_open`` exclude the end."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: Any) -> str | None:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return self.describe()
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return self.describe()
        return None

    def describe(self) -> str:
        if self.lo == 1 and self.hi is None and not self.lo_open:
            return "a positive integer"
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (names)."""

    values: tuple

    def check(self, value: Any) -> str | None:
        return None if value in self.values else "one of " + ", ".join(map(str, self.values))


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, hi_open=True)   # [0, 1)
UNIT = Range(0, 1)                     # [0, 1]


def _hints(fn: Callable) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: fall back to the defaults' types
        return {}


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _matches(value: Any, hint: Any, allow_inf: bool) -> bool:
    if hint is Any or hint is inspect.Parameter.empty or hint is None:
        return True
    if hint is type(None):
        return value is None
    if _is_union(hint):
        return any(_matches(value, h, allow_inf) for h in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return not math.isnan(value) and (allow_inf or not math.isinf(value))
    if hint is str:
        return isinstance(value, str)
    if hint in (dict,) or origin is dict:
        return isinstance(value, dict)
    if hint in (list, tuple) or origin in (list, tuple, _AbcSequence) or hint is _AbcSequence or hint is typing.Sequence:
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return all(_matches(v, args[0], allow_inf) for v in value) if len(args) == 1 else True
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    if _is_union(hint):
        parts = [_describe(h) for h in typing.get_args(hint) if h is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + " or null" if type(None) in typing.get_args(hint) else text
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "an object"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is dict:
        return "an object"
    if hint in (list, tuple) or origin in (list, tuple, _AbcSequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        inner = _describe(args[0]) if len(args) == 1 else ""
        return f"a list of {inner.removeprefix('an ').removeprefix('a ')}s" if inner and " or " not in inner else "a list"
    return getattr(hint, "__name__", str(hint))


def _hint_from_default(default: Any) -> Any:
    if default is inspect.Parameter.empty or default is None:
        return Any
    for t in (bool, int, float, str):
        if type(default) is t:
            return t
    if isinstance(default, (list, tuple)):
        return list
    if isinstance(default, dict):
        return dict
    return Any


def check_value(name: str, value: Any, hint: Any = Any, default: Any = inspect.Parameter.empty,
                limit: Range | OneOf | Callable[[Any], str | None] | None = None) -> Any:
    """Check one value against a type hint (or, without one, the default's type) and a limit.
    ``name`` is used in the message as given (e.g. ``train.lr``). Returns ``value``."""
    if hint is Any or hint is inspect.Parameter.empty:
        hint = _hint_from_default(default)
    allow_inf = isinstance(default, float) and math.isinf(default)
    if not _matches(value, hint, allow_inf):
        raise ValueError(f"{name} must be {_describe(hint)}, got {json.dumps(value) if _jsonable(value) else repr(value)}")
    if limit is not None and value is not None:
        problem = limit.check(value) if hasattr(limit, "check") else limit(value)
        if problem:
            raise ValueError(f"{name} must be {problem}, got {json.dumps(value) if _jsonable(value) else repr(value)}")
    return value


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
        return True
    except (TypeError, ValueError):
        return False


def check_kwargs(fn: Callable, values: dict[str, Any], what: str, *, limits: dict[str, Any] | None = None,
                 skip: Sequence[str] = (), allow_unknown: bool = False, sep: str = ".") -> dict[str, Any]:
    """Check keyword arguments for ``fn`` (a function or a class): known names, types from the
    signature, and ``limits`` (name -> :class:`Range` / :class:`OneOf` / callable returning a
    problem or None). Messages name the key as ``f"{what}{sep}{key}"``. Returns ``values``."""
    if not isinstance(values, dict):
        raise ValueError(f"{what} must be a JSON object of options, got {values!r}")
    sig = inspect.signature(fn)
    params = {n: p for n, p in sig.parameters.items()
              if n not in skip and n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = sorted(set(values) - set(params))
    if unknown and not allow_unknown:
        raise ValueError(f"unknown {what} option(s): {', '.join(unknown)}; known: {', '.join(sorted(params)) or 'none'}")
    hints = _hints(fn)
    for key, value in values.items():
        if key not in params:
            continue
        check_value(f"{what}{sep}{key}", value, hints.get(key, Any), params[key].default, (limits or {}).get(key))
    return values


_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def check_device(name: Any) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` that exists on this machine; else a ValueError
    listing the valid devices here."""
    import torch

    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    valid = ["auto", "cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n_cuda)] if n_cuda else [])
    m = _DEVICE.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise ValueError(f"unknown device {name!r}; valid devices here: {', '.join(valid)}")
    if name.startswith("cuda") and not n_cuda:
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine; "
                         f"valid devices here: {', '.join(valid)}")
    if m.group(1) is not None and int(m.group(1)) >= n_cuda:
        raise ValueError(f"device {name!r} does not exist; valid devices here: {', '.join(valid)}")
    return name


#: limits of schedule keywords beyond their types (the constructors check the rest)
SCHEDULE_LIMITS: dict[str, Any] = {
    "num_steps": AT_LEAST_ONE, "beta_start": Range(0, 1, True, True), "beta_end": Range(0, 1, True, True),
    "s": NON_NEGATIVE, "min_alpha_bar": Range(0, 1, True, True), "power": POSITIVE,
    "precision": Range(0, 1, True, True), "sigma_min": POSITIVE, "sigma_max": POSITIVE, "rho": POSITIVE,
    "continuous_scale": POSITIVE, "beta_min": NON_NEGATIVE, "beta_max": POSITIVE,
    "shift": POSITIVE, "path": OneOf(("cosine", "linear")),
}


def check_schedule(config: Any, what: str = "diffusion.schedule"):
    """Build the schedule ``{"kind": ..., **kwargs}`` with every key checked; returns it."""
    from .schedule import SCHEDULES, make_schedule
    from . import sde  # noqa: F401 - registers "subvp"

    if isinstance(config, str):
        config = {"kind": config}
    if not isinstance(config, dict):
        raise ValueError(f"{what} must be an object like {{\"kind\": \"cosine\"}}, got {config!r}")
    kind = config.get("kind", "linear")
    if not isinstance(kind, str) or kind not in SCHEDULES:
        raise ValueError(f"{what}.kind must be one of {', '.join(sorted(SCHEDULES))}, got {kind!r}")
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    check_kwargs(SCHEDULES[kind], kwargs, f"{what}", limits=SCHEDULE_LIMITS)
    try:
        return make_schedule(config)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"{what} {json.dumps(config)} is invalid: {str(exc).splitlines()[0]}") from None


def _validate_fields(obj: Any, section: str, limits: dict[str, Any]) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        default = f.default if f.default is not MISSING else inspect.Parameter.empty
        check_value(f"{section}.{f.name}", getattr(obj, f.name), hints.get(f.name, Any), default, limits.get(f.name))


def _one_of(names: Callable[[], Any], what: str) -> Callable[[Any], str | None]:
    """A limit whose valid names are looked up when checked (registries fill at import time)."""
    def check(value: Any) -> str | None:
        valid = sorted(names())
        return None if value in valid else f"one of {', '.join(valid)}"
    return check


def _device_limit(value: Any) -> str | None:
    check_device(value)
    return None


def _samplers():
    from . import solvers  # noqa: F401 - registers the continuous samplers
    from .samplers import SAMPLERS
    return SAMPLERS


def _parameterizations():
    from .parameterization import PARAMETERIZATIONS
    return PARAMETERIZATIONS


def _weightings():
    from .loss import WEIGHTINGS
    return WEIGHTINGS


def _time_samplers():
    from .diffusion import TIME_SAMPLERS
    return TIME_SAMPLERS


def _training_modes():
    from .diffusion import TRAINING_MODES
    return TRAINING_MODES


# ------------------------------------------------------------------------------------ the configs
@dataclass
class DiffusionConfig:
    """How noise is added and what the network predicts."""

    #: ``{"kind": "linear" | "cosine" | "polynomial" | "sigma" | "subvp" | "flow", **kwargs}`` (see ``core.schedule``)
    schedule: dict[str, Any] = field(default_factory=lambda: {"kind": "linear"})
    #: ``eps`` | ``x0`` | ``v`` | ``flow`` (the flow-matching velocity; needs a flow schedule)
    parameterization: str = "eps"
    #: ``uniform`` (DDPM simple loss) | ``min_snr``
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    #: backbone noise-level input is ``t * time_scale``
    time_scale: float = 1000.0
    #: ``ddpm`` (the schedule's own times) | ``continuous`` (``t ~ U[t_eps, 1]``) | ``edm`` (EDM
    #: preconditioning, log-normal noise levels, EDM loss) | ``flow`` (flow matching on a flow
    #: path, velocity prediction); see ``core.diffusion``
    training: str = "ddpm"
    t_eps: float = 1e-3
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    # --- conditional generation (cond helper) ---
    #: probability that a training sample's condition is replaced by its null value (condition
    #: dropout; only used when batches carry a condition), so the model is also unconditional
    cond_drop: float = 0.1
    # --- flow matching (flow helper): used by ``training="flow"`` only ---
    #: flow training times: ``uniform`` | ``logit_normal`` (``sigmoid(N(t_loc, t_scale^2))``, SD3) |
    #: ``mode`` (SD3 eq. 20 with ``mode_scale``)
    time_sampler: str = "logit_normal"
    t_loc: float = 0.0
    t_scale: float = 1.0
    mode_scale: float = 1.29
    #: SD3's time shift ``t' = s t / (1 + (s - 1) t)``; written into the flow schedule, which is
    #: the one place it is applied (``core.schedule.FlowSchedule``)
    shift: float = 1.0

    def __post_init__(self) -> None:
        """``training="flow"`` runs on a flow path with the velocity parameterization: a schedule
        that is not a flow path (a domain's VP default) becomes the linear path
        ``{"kind": "flow", "path": "linear"}``, the parameterization becomes ``flow``, and a
        ``shift`` other than 1 is written into the flow schedule (a different shift already
        there is an error: the shift is given once)."""
        if self.training != "flow" or not isinstance(self.schedule, (dict, str)):
            return
        sched = {"kind": self.schedule} if isinstance(self.schedule, str) else dict(self.schedule)
        if sched.get("kind") != "flow":
            sched = {"kind": "flow", "path": "linear"}
        if not isinstance(self.shift, bool) and isinstance(self.shift, (int, float)) and self.shift != 1.0:
            if sched.get("shift", 1.0) not in (1.0, self.shift):
                raise ValueError(f"diffusion.shift is {self.shift} but the flow schedule already has shift "
                                 f"{sched['shift']}; give the shift once")
            sched["shift"] = self.shift
        self.schedule = sched
        self.parameterization = "flow"

    def validate(self) -> "DiffusionConfig":
        """Check every field's type and range and build the schedule; ``ValueError`` naming the key."""
        _validate_fields(self, "diffusion", {
            "parameterization": _one_of(_parameterizations, "parameterization"),
            "weighting": _one_of(_weightings, "weighting"), "training": _one_of(_training_modes, "training"),
            "min_snr_gamma": POSITIVE, "time_scale": POSITIVE, "t_eps": Range(0, 1, True, True),
            "sigma_data": POSITIVE, "p_std": POSITIVE, "time_sampler": _one_of(_time_samplers, "time sampler"),
            "t_scale": POSITIVE, "mode_scale": Range(-1.0, 2.0 / (math.pi - 2.0)), "shift": POSITIVE})
        check_schedule(self.schedule)
        return self


@dataclass
class TrainConfig:
    """Optimisation settings for :class:`~diffuse.core.trainer.Trainer`."""

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
    # then fewer steps; see core.evalbudget); null: the configured evaluation unchanged
    eval_budget: float | None = 0.2
    eval_min_seconds: float = 30.0     # the final evaluation may always take this long
    holdout_fraction: float = 0.1      # data held out as the evaluation reference
    prefetch: int = 2                  # batches built ahead in a background thread (0: none); same results
    final_eval: bool = True

    def validate(self) -> "TrainConfig":
        """Check every field's type and range (and that the device exists); ``ValueError`` naming the key."""
        _validate_fields(self, "train", {
            "steps": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "weight_decay": NON_NEGATIVE,
            "warmup_steps": NON_NEGATIVE, "min_lr_ratio": UNIT, "grad_clip": NON_NEGATIVE,
            "grad_accum": AT_LEAST_ONE, "ema_decay": FRACTION, "seed": Range(0, 2 ** 63, hi_open=True),
            "device": _device_limit, "precision": OneOf(("auto", "fp32", "bf16")), "log_every": AT_LEAST_ONE,
            "checkpoint_every": NON_NEGATIVE, "sample_every": NON_NEGATIVE, "eval_samples": NON_NEGATIVE,
            "eval_sampler": _one_of(_samplers, "sampler"), "eval_steps": AT_LEAST_ONE,
            "eval_budget": POSITIVE, "eval_min_seconds": NON_NEGATIVE, "holdout_fraction": FRACTION,
            "prefetch": NON_NEGATIVE})
        return self


def update_dataclass(obj, values: dict[str, Any], what: str):
    """Return a copy of dataclass ``obj`` with ``values`` applied; unknown keys are an error."""
    if not isinstance(values, dict):
        raise ValueError(f"the {what} section must be a JSON object, got {values!r}")
    names = {f.name for f in fields(obj)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {what} option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    data = asdict(obj)
    data.update(values)
    return type(obj)(**data)


#: The run-config format this code reads and writes. Raise it with any change that alters what a
#: saved run means (a data option that changes the model space, a new parameterization ...): an
#: older diffuse then refuses the run with one line instead of sampling from it with another meaning.
CONFIG_VERSION = 1


class ConfigVersionError(ValueError):
    """A run config written in a newer format than this diffuse reads."""


def check_config_version(version: Any) -> None:
    """Refuse a config ``version`` that is not a positive integer or is newer than :data:`CONFIG_VERSION`."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigVersionError(f"written by a newer diffuse (config version {version}; this one reads up to "
                                 f"{CONFIG_VERSION}); upgrade diffuse to use it")


@dataclass
class RunConfig:
    domain: str
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_info: dict[str, Any] = field(default_factory=dict)
    #: a latent model's autoencoder (``core.latent.autoencoder_record``: path, sha256, domain,
    #: model); ``None`` for a model in data space
    latent: dict[str, Any] | None = None
    #: the weights a run started from (``diffuse train --init``: the run folder and step, or the
    #: pretrained model's name, with the SHA-256 of the weights file); ``None`` for a run from scratch
    init: dict[str, Any] | None = None
    #: the run-config format (:data:`CONFIG_VERSION`); a run written in a newer format is refused
    version: int = CONFIG_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        check_config_version(d.get("version", 1))
        d["diffusion"] = update_dataclass(DiffusionConfig(), d.get("diffusion", {}), "diffusion")
        d["train"] = update_dataclass(TrainConfig(), d.get("train", {}), "train")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
