"""EDM preconditioning and the three training modes (discrete DDPM, continuous time, EDM).

Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models"),
table 1 and eq. 7: with the noise level ``sigma = sigma_t / alpha_t`` and the data scale
``sigma_data``, the denoiser is

    D(x~, sigma) = c_skip(sigma) x~ + c_out(sigma) F(c_in(sigma) x~, c_noise(sigma)),
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2),           c_noise = ln(sigma) / 4,

on ``x~ = x_t / alpha_t`` (so VP schedules work too: ``x~ = x_0 + sigma eps``). The loss
``lambda(sigma) |D - x_0|^2`` with ``lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``
equals the plain squared error of ``F`` against ``(x_0 - c_skip x~) / c_out`` (eq. 8), and the
training noise levels are log-normal: ``ln sigma ~ N(P_mean, P_std^2)``, ``-1.2, 1.2``.

:func:`training_setup` turns a diffusion config into ``(build_denoiser, sample_t, loss)`` for
``training = "ddpm" | "continuous" | "edm"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .denoiser import DenoiseFn, Denoiser
from .loss import DiffusionLoss
from .parameterization import Prediction, make_parameterization
from .schedule import Schedule, make_schedule
from .space import Space

__all__ = ["edm_scalings", "edm_weight", "EDMPrecond", "EDMLoss", "lognormal_t", "uniform_t",
           "TrainingSetup", "training_setup", "TRAINING_MODES"]

_F64 = torch.float64


def edm_scalings(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c_skip, c_out, c_in, c_noise)`` of Karras et al. 2022, table 1 (float64 in, float64 out)."""
    sigma = torch.as_tensor(sigma, dtype=_F64)
    sd2 = sigma_data ** 2
    norm = sigma ** 2 + sd2
    return sd2 / norm, sigma * sigma_data / torch.sqrt(norm), 1.0 / torch.sqrt(norm), torch.log(sigma) / 4.0


def edm_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """EDM's loss weighting ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2``."""
    sigma = torch.as_tensor(sigma, dtype=_F64)
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


class EDMPrecond(nn.Module):
    """A Denoiser-compatible EDM preconditioning wrapper around a backbone.

    Same contract as :class:`~diffuse.core.denoiser.Denoiser`: ``(x_t, t, cond, space) ->
    Prediction``, :meth:`raw` (the network's ``F``, the training view) and :meth:`bind`.
    The backbone is called as ``backbone(c_in x~, c_noise, cond=cond, space=space)``.
    """

    def __init__(self, backbone: nn.Module, schedule: Schedule, sigma_data: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.schedule = schedule
        self.sigma_data = float(sigma_data)

    def _levels(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha, sigma = self.schedule.alpha_sigma(t.to(_F64))
        return alpha, sigma, sigma / alpha

    def raw(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None) -> Tensor:
        """``F(c_in x~, c_noise)`` at per-sample times ``t``."""
        assert space is not None, "EDMPrecond needs the batch's Space"
        alpha, _, sig = self._levels(t)
        _, _, c_in, c_noise = edm_scalings(sig, self.sigma_data)
        x_in = space.coef(c_in / alpha, x_t) * x_t
        return self.backbone(x_in, c_noise.to(torch.float32), cond=cond, space=space)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None, space: Space | None = None) -> Prediction:
        assert space is not None, "EDMPrecond needs the batch's Space"
        alpha, sigma, sig = self._levels(t)
        c_skip, c_out, _, _ = edm_scalings(sig, self.sigma_data)
        out = self.raw(x_t, t, cond=cond, space=space)
        x_t = x_t.to(out.dtype)
        x0 = space.coef(c_skip / alpha, out) * x_t + space.coef(c_out, out) * out
        eps = (x_t - space.coef(alpha, out) * x0) / space.coef(sigma, out)
        return Prediction(space.project(x0), space.project(eps))

    def bind(self, space: Space, cond: Any = None) -> DenoiseFn:
        def denoise(x: Tensor, t: Tensor) -> Prediction:
            return self(x, t, cond=cond, space=space)
        return denoise


class EDMLoss:
    """EDM's loss (eq. 8) on the raw network output ``F``, unreduced per element.

    ``lambda(sigma) |D - x_0|^2 = lambda c_out^2 |F - F*|^2 = |F - F*|^2`` with
    ``F* = (x_0 - c_skip x~) / c_out``, ``x~ = x_0 + sigma eps``. Same call signature as
    :class:`~diffuse.core.loss.DiffusionLoss`.
    """

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = float(sigma_data)

    def __call__(self, out: Tensor, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor,
                 snr: Tensor, space: Space) -> Tensor:
        sig = 1.0 / torch.sqrt(snr.to(_F64))                  # per-sample sigma_t / alpha_t
        c_skip, c_out, _, _ = edm_scalings(sig, self.sigma_data)
        x0f, epsf = x0.float(), eps.float()
        x_tilde = x0f + space.coef(sig, x0f) * epsf
        target = (x0f - space.coef(c_skip, x0f) * x_tilde) / space.coef(c_out, x0f)
        return (out.float() - target) ** 2


def lognormal_t(schedule: Schedule, p_mean: float = -1.2, p_std: float = 1.2):
    """Training times whose noise levels are EDM's log-normal ``ln sigma ~ N(P_mean, P_std^2)``
    (mapped to times through the schedule; levels beyond its range are clipped to its ends)."""
    def sample_t(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        z = torch.randn(n, generator=generator, device=device, dtype=_F64)
        sig = torch.exp(p_mean + p_std * z)
        t = schedule.t_from_sigma_ratio(sig.cpu()).to(device)
        return t.clamp(max(schedule.t_min, 1e-6), schedule.t_max)
    return sample_t


def uniform_t(schedule: Schedule, eps: float = 1e-3):
    """Continuous-time training times ``t ~ U[eps, 1]`` (Song et al. 2021), even for a
    schedule with a discrete chain (its interpolated ``alpha_t, sigma_t``)."""
    def sample_t(n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        u = torch.rand(n, generator=generator, device=device, dtype=_F64)
        return eps + (schedule.t_max - eps) * u
    return sample_t


TRAINING_MODES = ("ddpm", "continuous", "edm")


@dataclass
class TrainingSetup:
    """What the trainer needs for one training mode.

    ``build_denoiser(backbone) -> Denoiser | EDMPrecond``; ``sample_t(n, generator, device)``
    -> float64 times ``[n]``; ``loss(out, x0, eps, alpha, sigma, snr, space)`` -> per element,
    with ``out = denoiser.raw(x_t, t, cond, space)``.
    """

    mode: str
    schedule: Schedule
    build_denoiser: Callable[[nn.Module], nn.Module]
    sample_t: Callable[..., Tensor]
    loss: Callable[..., Tensor]


def training_setup(config: Any) -> TrainingSetup:
    """Build the training objects from a ``DiffusionConfig`` (or a dict with its keys).

    Keys read: ``schedule``, ``parameterization``, ``weighting``, ``min_snr_gamma``,
    ``time_scale`` (as in :class:`~diffuse.core.config.DiffusionConfig`) and the optional
    ``training`` (``"ddpm"`` default | ``"continuous"`` | ``"edm"``), ``t_eps`` (1e-3),
    ``sigma_data`` (0.5), ``p_mean`` (-1.2), ``p_std`` (1.2).

    * ``ddpm``: the schedule's own times (uniform over ``{1..T}/T`` for a discrete chain);
    * ``continuous``: ``t ~ U[t_eps, 1]``, network conditioned on ``t * time_scale``;
    * ``edm``: :class:`EDMPrecond` (network conditioned on ``ln(sigma) / 4``), log-normal
      noise levels, :class:`EDMLoss`.
    """
    cfg = asdict(config) if is_dataclass(config) else dict(config)
    mode = cfg.get("training", "ddpm")
    if mode not in TRAINING_MODES:
        raise ValueError(f"unknown training mode {mode!r}; expected one of {TRAINING_MODES}")
    schedule = make_schedule(cfg.get("schedule", {"kind": "linear"}))
    if mode == "edm":
        sigma_data = float(cfg.get("sigma_data", 0.5))
        return TrainingSetup(mode, schedule,
                             lambda backbone: EDMPrecond(backbone, schedule, sigma_data),
                             lognormal_t(schedule, float(cfg.get("p_mean", -1.2)), float(cfg.get("p_std", 1.2))),
                             EDMLoss(sigma_data))
    param = make_parameterization(cfg.get("parameterization", "eps"))
    weighting = cfg.get("weighting", "uniform")
    kwargs = {"gamma": cfg.get("min_snr_gamma", 5.0)} if weighting == "min_snr" else {}
    time_scale = float(cfg.get("time_scale", 1000.0))
    sample_t = (uniform_t(schedule, float(cfg.get("t_eps", 1e-3))) if mode == "continuous"
                else schedule.sample_t)
    return TrainingSetup(mode, schedule,
                         lambda backbone: Denoiser(backbone, schedule, param, time_scale=time_scale),
                         sample_t, DiffusionLoss(param, weighting, **kwargs))
