"""Run configuration: plain dataclasses, JSON in and out (no config framework).

A run folder's ``config.json`` holds a :class:`RunConfig`: everything needed to rebuild the
model (domain, backbone keyword arguments, diffusion settings, the dataset's ``data_info``)
and to continue training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["DiffusionConfig", "TrainConfig", "RunConfig", "update_dataclass"]


@dataclass
class DiffusionConfig:
    """How noise is added and what the network predicts."""

    #: ``{"kind": "linear" | "cosine" | "polynomial" | "sigma", **kwargs}`` (see ``core.schedule``)
    schedule: dict[str, Any] = field(default_factory=lambda: {"kind": "linear"})
    #: ``eps`` | ``x0`` | ``v``
    parameterization: str = "eps"
    #: ``uniform`` (DDPM simple loss) | ``min_snr``
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    #: backbone noise-level input is ``t * time_scale``
    time_scale: float = 1000.0
    #: ``ddpm`` (the schedule's own times) | ``continuous`` (``t ~ U[t_eps, 1]``) | ``edm`` (EDM
    #: preconditioning, log-normal noise levels, EDM loss); see ``core.diffusion``
    training: str = "ddpm"
    t_eps: float = 1e-3
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    # --- conditional generation (cond helper) ---
    #: probability that a training sample's condition is replaced by its null value (condition
    #: dropout; only used when batches carry a condition), so the model is also unconditional
    cond_drop: float = 0.1


@dataclass
class TrainConfig:
    """Optimisation settings for :class:`~diffuse.core.trainer.Trainer`."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0          # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0             # max global grad norm; 0 disables
    grad_accum: int = 1                # micro-batches per optimizer step
    ema_decay: float = 0.999
    ema_warmup: bool = True            # decay = min(ema_decay, (1 + n) / (10 + n))
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    precision: str = "auto"            # auto (bf16 autocast on CUDA) | fp32 | bf16
    log_every: int = 10
    checkpoint_every: int = 500        # 0: only at the end
    sample_every: int = 0              # periodic sample + evaluate; 0: only at the end
    eval_samples: int = 64             # samples drawn for periodic / final evaluation
    eval_sampler: str = "ddim"
    eval_steps: int = 50
    holdout_fraction: float = 0.1      # data held out as the evaluation reference
    final_eval: bool = True


def update_dataclass(obj, values: dict[str, Any], what: str):
    """Return a copy of dataclass ``obj`` with ``values`` applied; unknown keys are an error."""
    names = {f.name for f in fields(obj)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {what} option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    data = asdict(obj)
    data.update(values)
    return type(obj)(**data)


@dataclass
class RunConfig:
    domain: str
    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_info: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        d["diffusion"] = DiffusionConfig(**d.get("diffusion", {}))
        d["train"] = TrainConfig(**d.get("train", {}))
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
