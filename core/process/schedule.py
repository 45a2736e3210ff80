"""Noise schedules: continuous time ``t in [0, 1]`` -> ``(alpha_t, sigma_t)``.

Notation (Kingma et al. 2021, "Variational Diffusion Models"):

    x_t = alpha_t * x_0 + sigma_t * eps,      lambda_t = log(alpha_t^2 / sigma_t^2)

VP (variance-preserving) schedules have ``alpha^2 + sigma^2 = 1``; the sigma (VE / EDM)
schedule has ``alpha = 1``. Every schedule computes in float64 and returns float64; callers
cast to the data dtype at the last moment.

A schedule may also be *discrete* (``num_steps = T``): a model trained on the T-step DDPM
objective sees only ``t = n / T`` for ``n = 1..T``. Between grid points the discrete
linear-beta schedule interpolates ``log alpha_bar`` linearly (as DPM-Solver does), so the same
object serves the discrete DDPM view and the continuous VP-SDE view.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from ..errors import UserInputError

__all__ = [
    "Schedule",
    "LinearBetaSchedule",
    "CosineSchedule",
    "PolynomialSchedule",
    "SigmaSchedule",
    "TableSchedule",
    "SubVPSchedule",
]

_F64 = torch.float64


def _as64(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t, dtype=_F64)


class Schedule(ABC):
    """A noise schedule. Subclasses define :meth:`alpha_sigma` on ``t in [0, 1]``."""

    #: number of discrete training steps T, or ``None`` for a continuous-time model.
    num_steps: int | None = None
    #: ``True`` when ``alpha_t^2 + sigma_t^2 = 1``.
    variance_preserving: bool = True
    #: the sampling grid spacing to use when none is asked for (``None``: ``trailing`` for VP,
    #: ``karras`` otherwise; see ``core.sampling.registry``)
    default_spacing: str | None = None
    #: the :class:`FlowPath` of a flow schedule, ``None`` for the others (the velocity
    #: parameterization runs on flow paths only)
    path: Any = None

    @abstractmethod
    def alpha_sigma(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Return ``(alpha_t, sigma_t)`` in float64 for times ``t`` (any shape)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments, with ``kind``."""

    # ----------------------------------------------------------------- derived quantities
    def log_snr(self, t: Tensor | float) -> Tensor:
        """``lambda_t = log(alpha_t^2 / sigma_t^2)`` in float64."""
        alpha, sigma = self.alpha_sigma(t)
        return 2.0 * (torch.log(alpha) - torch.log(sigma))

    def snr(self, t: Tensor | float) -> Tensor:
        alpha, sigma = self.alpha_sigma(t)
        return (alpha / sigma) ** 2

    @property
    def t_min(self) -> float:
        """Smallest time a sampler should query the model at (``1 / T`` for discrete models)."""
        return 1.0 / self.num_steps if self.num_steps else 1e-3

    @property
    def t_max(self) -> float:
        return 1.0

    def t_from_log_snr(self, log_snr: Tensor | float, iters: int = 100) -> Tensor:
        """Invert the (decreasing) log-SNR by bisection on ``[0, 1]`` in float64."""
        target = _as64(log_snr)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target  # still too clean: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def t_from_sigma_ratio(self, ratio: Tensor | float) -> Tensor:
        """Time at which ``sigma_t / alpha_t`` equals ``ratio`` (the EDM noise level)."""
        return self.t_from_log_snr(-2.0 * torch.log(_as64(ratio)))

    def sample_t(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        """Training times: uniform over ``{1..T} / T`` for discrete models, else U(t_min, 1)."""
        if self.num_steps:
            idx = torch.randint(1, self.num_steps + 1, (n,), generator=generator, device=device)
            return idx.to(_F64) / self.num_steps
        u = torch.rand(n, generator=generator, device=device, dtype=_F64)
        return self.t_min + (1.0 - self.t_min) * u

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"


class _VPSchedule(Schedule):
    """Shared machinery of the VP schedules, defined by ``log alpha_bar(t)`` (``alpha_bar = alpha^2``).

    A discrete schedule keeps the table ``log alpha_bar(n / T)``, ``n = 0..T``, and interpolates it
    linearly in ``t``; a continuous one uses the closed form. Both directions are exact and
    cheap: :meth:`t_from_log_snr` inverts the table (or the closed form) instead of bisecting.
    """

    _table: Tensor | None = None

    def _continuous_lab(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _continuous_t(self, lab: Tensor) -> Tensor:
        raise NotImplementedError

    def log_alpha_bar(self, t: Tensor | float) -> Tensor:
        t = _as64(t).clamp(0.0, 1.0)
        if self._table is None:
            return self._continuous_lab(t)
        table = self._table.to(t.device)
        pos = t * self.num_steps
        lo = pos.floor().clamp(max=self.num_steps - 1).long()
        frac = pos - lo.to(_F64)
        return table[lo] * (1 - frac) + table[lo + 1] * frac

    def alpha_sigma(self, t):
        lab = self.log_alpha_bar(t)
        return torch.exp(0.5 * lab), torch.sqrt(-torch.expm1(lab))

    @property
    def alphas_cumprod(self) -> Tensor:
        """The discrete chain's ``alpha_bar_n``, ``n = 1..T`` (diffusers' ``alphas_cumprod``, whose
        index ``k = n - 1``); a ``ValueError`` for a continuous schedule."""
        if self._table is None:
            raise UserInputError(f"{self!r} is continuous: it has no alphas_cumprod table")
        return torch.exp(self._table[1:])

    def log_snr(self, t):
        lab = self.log_alpha_bar(t)
        return lab - torch.log(-torch.expm1(lab))

    def t_from_log_snr(self, log_snr, iters: int = 0):
        lab = torch.nn.functional.logsigmoid(_as64(log_snr))  # alpha_bar = sigmoid(lambda) for VP
        if self._table is None:
            return self._continuous_t(lab).clamp(0.0, 1.0)
        table = self._table.to(lab.device)
        T = self.num_steps
        # table is decreasing: first index k with table[k] <= lab, then interpolate on [k-1, k]
        k = torch.searchsorted(-table, -lab.contiguous()).clamp(1, T)
        hi, lo = table[k - 1], table[k]
        frac = ((hi - lab) / (hi - lo).clamp(min=1e-300)).clamp(0.0, 1.0)
        return ((k - 1).to(_F64) + frac) / T


class LinearBetaSchedule(_VPSchedule):
    """DDPM's linear beta schedule (Ho et al. 2020): ``beta_n`` linear from 1e-4 to 0.02, T=1000.

    Discrete: ``alpha_bar_n = prod_{i<=n} (1 - beta_i)`` exactly, ``alpha_n = sqrt(alpha_bar_n)``
    at ``t = n / T``; ``log alpha_bar`` is interpolated linearly in ``t`` in between (with
    ``alpha_bar_0 = 1``), which is the VP-SDE with piecewise-constant ``beta(t)``.
    With ``num_steps=None`` it is the continuous VP-SDE of Song et al. 2021 with
    ``beta(t) = beta_min + t (beta_max - beta_min)``, ``beta_min = T beta_start``,
    ``beta_max = T beta_end``: ``log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)``,
    the ``T -> infinity`` limit of the discrete chain.
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02,
                 num_steps: int | None = 1000, continuous_scale: int = 1000) -> None:
        if not 0 < beta_start <= beta_end < 1:
            raise UserInputError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)
        self.num_steps = num_steps
        self.continuous_scale = continuous_scale
        if num_steps:
            betas = torch.linspace(beta_start, beta_end, num_steps, dtype=_F64)
            log_ab = torch.cumsum(torch.log1p(-betas), 0)
            self._table = torch.cat([torch.zeros(1, dtype=_F64), log_ab])  # n = 0..T

    def _betas(self) -> tuple[float, float]:
        return self.beta_start * self.continuous_scale, self.beta_end * self.continuous_scale

    def _continuous_lab(self, t):
        b0, b1 = self._betas()
        return -(b0 * t + 0.5 * (b1 - b0) * t * t)

    def _continuous_t(self, lab):
        b0, b1 = self._betas()
        if b1 == b0:
            return -lab / b0
        return (-b0 + torch.sqrt(b0 * b0 - 2.0 * (b1 - b0) * lab)) / (b1 - b0)

    def config(self):
        return {"kind": "linear", "beta_start": self.beta_start, "beta_end": self.beta_end,
                "num_steps": self.num_steps, "continuous_scale": self.continuous_scale}


class CosineSchedule(_VPSchedule):
    """Cosine schedule (Nichol & Dhariwal 2021): ``alpha_bar(t) = f(t) / f(0)``,
    ``f(t) = cos^2((t + s) / (1 + s) * pi / 2)``, ``s = 0.008``.

    As in the paper, the discrete betas are clipped at ``max_beta = 0.999``. In continuous time
    ``alpha_bar`` is floored at ``min_alpha_bar = 1e-9``, which keeps ``t = 1`` finite
    (``alpha_1 ~ 3e-5`` rather than exactly zero).
    """

    def __init__(self, s: float = 0.008, num_steps: int | None = 1000, min_alpha_bar: float = 1e-9) -> None:
        self.s = float(s)
        self.num_steps = num_steps
        self.min_alpha_bar = float(min_alpha_bar)
        if num_steps:
            n = torch.arange(num_steps + 1, dtype=_F64) / num_steps
            lab = self._continuous_lab(n)
            # clip betas at 0.999 as in the paper's discrete chain
            step = (lab[1:] - lab[:-1]).clamp(min=math.log1p(-0.999))
            self._table = torch.cat([torch.zeros(1, dtype=_F64), torch.cumsum(step, 0)])

    def _f0(self) -> float:
        return math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2

    def _continuous_lab(self, t):
        s = self.s
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return torch.log((f / self._f0()).clamp(min=self.min_alpha_bar))

    def _continuous_t(self, lab):
        ab = torch.exp(lab).clamp(min=self.min_alpha_bar, max=1.0)
        c = torch.sqrt(ab * self._f0()).clamp(max=1.0)
        return torch.acos(c) * 2 / math.pi * (1 + self.s) - self.s

    def config(self):
        return {"kind": "cosine", "s": self.s, "num_steps": self.num_steps,
                "min_alpha_bar": self.min_alpha_bar}


class PolynomialSchedule(_VPSchedule):
    """EDM-molecules polynomial schedule (Hoogeboom et al. 2022, appendix B):
    ``alpha_t^2 = (1 - 2s) (1 - t^p)^2 + s`` with power ``p = 2`` and precision ``s = 1e-5``;
    ``sigma_t^2 = 1 - alpha_t^2``. In the discrete chain the ratios ``alpha_n^2 / alpha_{n-1}^2``
    of the raw ``(1 - t^p)^2`` are clipped below at 0.001 for stability before the precision
    is applied, as in the paper's code.
    """

    def __init__(self, power: float = 2.0, precision: float = 1e-5, num_steps: int | None = 1000) -> None:
        self.power, self.precision, self.num_steps = float(power), float(precision), num_steps
        if num_steps:
            n = torch.arange(num_steps + 1, dtype=_F64) / num_steps
            a2 = (1 - n ** self.power) ** 2  # raw, before the precision is applied (once, below)
            a2 = torch.cat([torch.ones(1, dtype=_F64), a2])
            ratio = (a2[1:] / a2[:-1]).clamp(min=0.001, max=1.0)
            a2 = torch.cumprod(ratio, 0)
            s = self.precision
            self._table = torch.log((1 - 2 * s) * a2 + s)

    def _alpha2(self, t: Tensor) -> Tensor:
        s = self.precision
        return (1 - 2 * s) * (1 - t ** self.power) ** 2 + s

    def _continuous_lab(self, t):
        return torch.log(self._alpha2(t))

    def _continuous_t(self, lab):
        s = self.precision
        r = ((torch.exp(lab) - s) / (1 - 2 * s)).clamp(0.0, 1.0)
        return (1 - torch.sqrt(r)).clamp(0.0, 1.0) ** (1.0 / self.power)

    def config(self):
        return {"kind": "polynomial", "power": self.power, "precision": self.precision,
                "num_steps": self.num_steps}


class TableSchedule(_VPSchedule):
    """A discrete VP schedule given by its table ``alphas_cumprod`` (``alpha_bar_n``, ``n = 1..T``,
    strictly decreasing in ``(0, 1)``), e.g. a diffusers scheduler's ``alphas_cumprod``.

    At ``t = n / T`` it is exactly the table (``alpha_t = sqrt(alpha_bar_n)``); in between, as every
    discrete schedule here (and DPM-Solver's discrete wrapper), ``log alpha_bar`` is linear in ``t``
    with ``alpha_bar_0 = 1``, so ``TableSchedule(LinearBetaSchedule().alphas_cumprod)`` *is* the
    linear-beta chain at every ``t``, and continuous-time samplers and log-SNR grids work on it.
    The log-SNR, ``log alpha_bar - log(1 - alpha_bar)``, is monotone in ``log alpha_bar``, so it
    is interpolated monotonically too and :meth:`t_from_log_snr` inverts it exactly.
    """

    def __init__(self, alphas_cumprod) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=_F64).detach().cpu().reshape(-1)
        if ac.numel() < 1 or not bool(torch.isfinite(ac).all()):
            raise UserInputError("alphas_cumprod must be a non-empty table of finite numbers")
        if not bool(((ac > 0) & (ac < 1)).all()):
            raise UserInputError("alphas_cumprod must lie strictly between 0 and 1")
        if ac.numel() > 1 and not bool((ac[1:] < ac[:-1]).all()):
            raise UserInputError("alphas_cumprod must be strictly decreasing (more noise at every step)")
        self.num_steps = int(ac.numel())
        self._table = torch.cat([torch.zeros(1, dtype=_F64), torch.log(ac)])

    def config(self):
        return {"kind": "table", "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self) -> str:
        return f"TableSchedule(T={self.num_steps})"


#: the smallest sampling time of a continuous :class:`SigmaSchedule` (``t = 0`` is the data)
T_MIN_SIGMA = 1e-9


class SigmaSchedule(Schedule):
    """Variance-exploding noise levels: ``alpha_t = 1``, ``sigma_t`` increasing in ``t``.

    With ``rho`` set (EDM, Karras et al. 2022, rho=7):
    ``sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``.
    With ``rho=None`` the geometric VE-SDE levels of Song et al. 2021:
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``.

    ``t = 0`` is the clean data, ``sigma = 0``, as in every other schedule: EDM's sampler ends
    with a step from ``sigma_min`` to ``t_N = 0`` (Karras et al. 2022, eq. 5) and score_sde's VE
    sampler with a denoising step (``noise_removal``). The formula's own low end ``sigma_min`` is
    reached as ``t -> 0+``; the smallest time a sampler queries, :attr:`t_min`, is
    :data:`T_MIN_SIGMA` for a continuous schedule (``sigma`` there equals ``sigma_min`` to 1e-7
    relative). (Earlier the formula held at ``t = 0`` too, so every grid's final point was
    ``sigma_min``, not the data: samples kept ``sigma_min`` of noise.)
    """

    variance_preserving = False

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float | None = 7.0,
                 num_steps: int | None = None) -> None:
        if not 0 < sigma_min < sigma_max:
            raise UserInputError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.rho, self.num_steps = float(sigma_min), float(sigma_max), rho, num_steps

    @property
    def t_min(self) -> float:
        return 1.0 / self.num_steps if self.num_steps else T_MIN_SIGMA

    def sigma(self, t: Tensor | float) -> Tensor:
        t = _as64(t).clamp(0.0, 1.0)
        if self.rho is None:
            s = self.sigma_min * (self.sigma_max / self.sigma_min) ** t
        else:
            r = 1.0 / self.rho
            s = (self.sigma_min ** r + t * (self.sigma_max ** r - self.sigma_min ** r)) ** self.rho
        return torch.where(t > 0, s, torch.zeros_like(s))      # t = 0: the clean data

    def alpha_sigma(self, t):
        sigma = self.sigma(t)
        return torch.ones_like(sigma), sigma

    def t_from_sigma_ratio(self, ratio):
        ratio = _as64(ratio)
        s = ratio.clamp(self.sigma_min, self.sigma_max)
        if self.rho is None:
            t = torch.log(s / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)
        else:
            r = 1.0 / self.rho
            t = (s ** r - self.sigma_min ** r) / (self.sigma_max ** r - self.sigma_min ** r)
        # a positive noise level never maps to t = 0 (the data); sigma = 0 does
        return torch.where(ratio > 0, t.clamp(min=T_MIN_SIGMA), torch.zeros_like(t))

    def t_from_log_snr(self, log_snr, iters: int = 0):
        return self.t_from_sigma_ratio(torch.exp(-0.5 * _as64(log_snr)))

    def config(self):
        return {"kind": "sigma", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "rho": self.rho, "num_steps": self.num_steps}


# ---------------------------------------------------------------------------- flow matching paths
class SubVPSchedule(Schedule):
    """The sub-VP SDE's marginals (Song et al. 2021, eq. 34 / appendix B):
    ``alpha_t = exp(-B(t) / 2)``, ``sigma_t = 1 - alpha_t^2 = 1 - exp(-B(t))`` with
    ``B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2``.

    Its variance ``sigma_t^2`` is below the VP one, hence the name. ``alpha^2 + sigma^2 != 1``.
    """

    variance_preserving = False

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        if not 0 < beta_min <= beta_max:
            raise UserInputError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.num_steps = None

    def integral_beta(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=_F64).clamp(0.0, 1.0)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def alpha_sigma(self, t):
        b = self.integral_beta(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def log_snr(self, t):
        b = self.integral_beta(t)
        return -b - 2.0 * torch.log(-torch.expm1(-b))

    def sde_coefficients(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Closed form: ``f = -beta(t) / 2``, ``g^2 = beta(t) (1 - exp(-2 B(t)))`` (eq. 34)."""
        t = torch.as_tensor(t, dtype=_F64).clamp(0.0, 1.0)
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return -0.5 * beta, beta * -torch.expm1(-2.0 * self.integral_beta(t))

    def config(self):
        return {"kind": "subvp", "beta_min": self.beta_min, "beta_max": self.beta_max}
