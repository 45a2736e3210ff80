"""The optimisation pieces every trained model shares: the learning-rate schedule, the EMA
update, the per-step seeds and the device choice (``core.training.trainer`` runs them)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..config import TrainConfig
from ..errors import ConfigError

__all__ = ["LR_SCHEDULES", "lr_lambda", "ema_avg_fn", "EMA_CONTINUED", "step_seed", "resolve_device"]

#: ``cosine``: linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``steps`` (depends on
#: the total); ``constant``: linear warm-up, then ``lr`` (independent of the total)
LR_SCHEDULES = ("cosine", "constant")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu or cuda[:N]")
    return dev


def ema_avg_fn(decay: float, warmup: bool = True):
    """A multi-tensor EMA update ``ema <- ema + (1 - d) (p - ema)`` for ``AveragedModel``.

    With ``warmup`` the decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so
    early EMA weights are not dominated by the random initialisation.
    """
    def update(ema_params, params, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
        if ema_params and torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:
            for e, p in zip(ema_params, params):
                e.lerp_(p, 1.0 - d) if torch.is_floating_point(e) else e.copy_(p)
    return update


#: ``n_averaged`` of an EMA that continues given weights: past any warm-up, so its decay is the
#: configured one (and not 0, which makes ``AveragedModel`` copy the raw weights at the first update)
EMA_CONTINUED = 10 ** 9


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    schedule = getattr(cfg, "lr_schedule", "cosine")
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}")

    def f(step: int) -> float:
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt) % (2 ** 62)
