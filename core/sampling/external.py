"""Adapters for networks trained elsewhere (a diffusers UNet, a plain function): every sampler
here can drive them."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..errors import UserInputError
from ..process.parameterization import Prediction
from ..process.schedule import Schedule

__all__ = ["external_denoiser", "PREDICTIONS", "TIMESTEPS"]


PREDICTIONS = ("eps", "x0", "v")
TIMESTEPS = ("index", "time")


def external_denoiser(model: Callable, schedule: Schedule, *, prediction: str = "eps",
                      timesteps: str | Callable[[Tensor], Tensor] = "index") -> Callable[[Tensor, Tensor], Prediction]:
    """A sampler-ready ``denoise(x, t) -> Prediction`` around an external network ``model(x, k)``
    (a diffusers UNet, a plain function...), so every sampler here can drive it.

    ``timesteps`` says what ``model`` is given for schedule time ``t`` (float64 ``[B]``):

    * ``"index"`` (diffusers / the DDPM code): ``k = t T - 1``, the 0-based index into the
      discrete schedule's ``alphas_cumprod`` (our time ``n / T`` is diffusers' timestep ``n - 1``),
      as ``int64`` when every ``k`` is whole (samplers on the model's own grid), else float
      (log-SNR grids query between the nodes, as DPM-Solver's discrete wrapper does);
    * ``"time"``: ``t`` itself, in the model's dtype;
    * a callable ``t -> Tensor``: any other convention (e.g. ``lambda t: 999 * t``).

    ``prediction`` says what it returns (diffusers' ``prediction_type``), with
    ``x_t = alpha x0 + sigma eps``: ``eps``; ``x0`` (``sample``); ``v = alpha eps - sigma x0``
    (Salimans & Ho 2022), turned into ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``,
    ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)``. The model's output may be a tensor, a
    tuple (its first item) or an object with ``.sample`` (diffusers' ``UNet2DOutput``).
    Use :class:`~diffuse.core.process.schedule.TableSchedule` to build ``schedule`` from the model's own
    ``alphas_cumprod``.
    """
    if prediction not in PREDICTIONS:
        raise UserInputError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
    if not callable(timesteps) and timesteps not in TIMESTEPS:
        raise UserInputError(f"unknown timestep convention {timesteps!r}; expected one of {TIMESTEPS} or a callable")
    T = schedule.num_steps
    if timesteps == "index" and not T:
        raise UserInputError(f"the 'index' timestep convention needs a discrete schedule (num_steps = T); {schedule!r} is continuous")

    def model_time(t: Tensor, like: Tensor) -> Tensor:
        if callable(timesteps):
            return timesteps(t)
        if timesteps == "time":
            return t.to(like.dtype)
        k = t * T - 1.0
        kr = k.round()
        return kr.long() if bool(((k - kr).abs() < 1e-6).all()) else k.to(like.dtype)

    def denoise(x: Tensor, t: Tensor) -> Prediction:
        out = model(x, model_time(t, x))
        out = out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)
        a, s = schedule.alpha_sigma(t.to(torch.float64))
        if prediction == "eps":
            eps = out
            x0 = x * _expand(1.0 / a, x) - out * _expand(s / a, x)
        elif prediction == "x0":
            x0 = out
            eps = (x - out * _expand(a, x)) * _expand(1.0 / s, x)
        else:
            n = a * a + s * s
            x0 = x * _expand(a / n, x) - out * _expand(s / n, x)
            eps = x * _expand(s / n, x) + out * _expand(a / n, x)
        return Prediction(x0, eps)
    return denoise


def _expand(c: Tensor, like: Tensor) -> Tensor:
    """A per-sample float64 coefficient ``[B]`` broadcast against a dense ``like`` ``[B, ...]``."""
    return c.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

