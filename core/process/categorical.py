"""Categorical state: D3PM transitions and discrete flow matching on one family of paths.

A categorical variable with ``K`` classes (plus, for the absorbing prior, a mask state ``K``) is
noised towards a *limit* distribution ``m`` over its states with a data weight ``kappa_t``
(``kappa_0 = 1``: data; ``kappa_1 = 0``: pure noise; ``t`` is the diffusion time of every other
process here, 1 = noise):

    q(x_t | x_0) = Cat(kappa_t onehot(x_0) + (1 - kappa_t) m)

with ``m`` one of :data:`PRIORS`: ``uniform`` (``1/K`` each; Hoogeboom et al. 2021, Austin et al.
2021), ``mask`` (all mass on the extra absorbing state; Austin et al. 2021, "D3PM"; Sahoo et al.
2024, "MDLM") or ``marginal`` (the data's class frequencies; Vignac et al. 2023, "DiGress"/"MiDi").
Every D3PM transition matrix of this family is ``Q = a I + (1 - a) 1 m^T``, and they compose:
``q(x_t | x_s) = Cat(a onehot(x_s) + (1 - a) m)`` with ``a = kappa_t / kappa_s`` for ``s < t``.

The same family is the *mixture path* of discrete flow matching (Gat et al. 2024, "Discrete Flow
Matching", eq. 9; Campbell et al. 2024, "Generative Flows on Discrete State-Spaces"): going from
``t`` back towards data, each element jumps at rate ``lambda_t = -kappa'_t / (1 - kappa_t)`` to a
draw from the denoiser's ``p(x_0 | x_t)``.

What this module provides (all computed in float64 over a trailing class axis):

* :meth:`CategoricalPath.marginal`: ``q(x_t | x_0)`` for a class index or a distribution over ``x_0``;
* :meth:`CategoricalPath.posterior`: the exact D3PM reverse step
  ``p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p(x_0 | x_t)`` for a distribution ``p(x_0 | x_t)``
  (DiGress's form; for a one-hot ``p`` it is the posterior ``q(x_s | x_t, x_0)`` itself):

      q(x_s = i | x_t = j, x_0) = q(x_t = j | x_s = i) q(x_s = i | x_0) / q(x_t = j | x_0)

  so ``p(x_s = i | x_t = j) = q(x_t = j | x_s = i) (kappa_s w_i + (1 - kappa_s) m_i sum_k w_k)``
  with ``w_k = p(x_0 = k | x_t) / q(x_t = j | x_0 = k)``;
* :meth:`CategoricalPath.rate`: ``lambda_t``, and :meth:`CategoricalPath.jump_mass` its integral
  over a step;
* :meth:`CategoricalPath.denoised`: the network's logits as ``p(x_0 | x_t)``; with the mask prior an
  unmasked element is known exactly (``x_0 = x_t``), so its distribution is that one-hot ("carry
  over unmasking", MDLM's SUBS parameterization).

The samplers that step these paths are in ``core.sampling.categorical``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ["CategoricalPath", "KappaSchedule", "KAPPA_SCHEDULES", "PRIORS", "make_kappa_schedule"]

_F64 = torch.float64
#: the limit distributions a categorical path can noise towards
PRIORS = ("uniform", "mask", "marginal")


class KappaSchedule:
    """The data weight ``kappa_t`` of a categorical path, ``kappa_0 = 1``, ``kappa_1 = 0``, decreasing."""

    name = ""

    def kappa(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def dkappa(self, t: Tensor) -> Tensor:
        """``d kappa / dt`` (<= 0)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"kind": self.name}


class LinearKappa(KappaSchedule):
    """``kappa_t = 1 - t`` (the linear mixture path; Campbell et al. 2024, Gat et al. 2024)."""

    name = "linear"

    def kappa(self, t):
        return 1.0 - t

    def dkappa(self, t):
        return -torch.ones_like(t)


class CosineKappa(KappaSchedule):
    """``kappa_t = cos^2(pi t / 2)`` (a cosine schedule of the kept mass, as in DiGress / MiDi)."""

    name = "cosine"

    def kappa(self, t):
        return torch.cos(0.5 * math.pi * t) ** 2

    def dkappa(self, t):
        return -0.5 * math.pi * torch.sin(math.pi * t)


class PolynomialKappa(KappaSchedule):
    """``kappa_t = 1 - t^power`` (``power > 1`` keeps the data longer)."""

    name = "polynomial"

    def __init__(self, power: float = 2.0) -> None:
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power < math.inf:
            raise ConfigError(f"the categorical schedule's power must be a positive number, got {power!r}")
        self.power = float(power)

    def kappa(self, t):
        return 1.0 - t ** self.power

    def dkappa(self, t):
        return -self.power * t.clamp_min(0.0) ** (self.power - 1.0)

    def config(self):
        return {"kind": self.name, "power": self.power}


KAPPA_SCHEDULES: dict[str, type[KappaSchedule]] = {"linear": LinearKappa, "cosine": CosineKappa,
                                                   "polynomial": PolynomialKappa}


def make_kappa_schedule(config: Any, what: str = "schedule") -> KappaSchedule:
    """A :class:`KappaSchedule` from ``"name"`` or ``{"kind": name, **kwargs}``; a ConfigError otherwise."""
    if config is None:
        config = "linear"
    if isinstance(config, str):
        config = {"kind": config}
    if not isinstance(config, dict):
        raise ConfigError(f"{what} must be a name or an object like {{\"kind\": \"cosine\"}}, got {config!r}")
    config = dict(config)
    kind = config.pop("kind", "linear")
    if kind not in KAPPA_SCHEDULES:
        raise ConfigError(f"{what}.kind must be one of {', '.join(KAPPA_SCHEDULES)}, got {kind!r}")
    try:
        return KAPPA_SCHEDULES[kind](**config)
    except TypeError:
        raise ConfigError(f"{what}: the {kind} schedule takes no option(s) {', '.join(sorted(config))}") from None


class CategoricalPath:
    """``q(x_t | x_0) = Cat(kappa_t onehot(x_0) + (1 - kappa_t) m)`` over ``num_classes`` classes
    (see the module docstring). ``states`` is ``num_classes + 1`` with the mask prior (state
    ``num_classes`` is the mask), else ``num_classes``. ``marginal``: the class frequencies of the
    data (required by the ``marginal`` prior)."""

    def __init__(self, num_classes: int, prior: str = "mask", schedule: Any = "linear",
                 marginal: Sequence[float] | Tensor | None = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"a categorical path needs a positive number of classes, got {num_classes!r}")
        if prior not in PRIORS:
            raise ConfigError(f"the categorical prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        self.num_classes = int(num_classes)
        self.prior = prior
        self.schedule = schedule if isinstance(schedule, KappaSchedule) else make_kappa_schedule(schedule)
        self.states = self.num_classes + (1 if prior == "mask" else 0)
        if prior == "uniform":
            limit = torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=_F64)
        elif prior == "mask":
            limit = torch.zeros(self.states, dtype=_F64)
            limit[-1] = 1.0
        else:
            if marginal is None:
                raise ConfigError("the marginal prior needs the data's class frequencies")
            limit = torch.as_tensor(marginal, dtype=_F64).reshape(-1)
            if limit.numel() != self.num_classes or bool((limit < 0).any()) or float(limit.sum()) <= 0:
                raise ConfigError(f"the class frequencies must be {self.num_classes} non-negative numbers, got "
                                  f"{limit.tolist()}")
            limit = limit / limit.sum()
        self.limit = limit

    @property
    def mask_index(self) -> int | None:
        """The mask state's index (the absorbing prior), else None."""
        return self.num_classes if self.prior == "mask" else None

    def config(self) -> dict[str, Any]:
        return {"classes": self.num_classes, "prior": self.prior, "schedule": self.schedule.config()}

    # ------------------------------------------------------------------ the schedule
    def kappa(self, t: Tensor | float) -> Tensor:
        return self.schedule.kappa(torch.as_tensor(t, dtype=_F64)).clamp(0.0, 1.0)

    def rate(self, t: Tensor | float) -> Tensor:
        """``lambda_t = -kappa'_t / (1 - kappa_t)``: the rate at which an element jumps to a draw from
        ``p(x_0 | x_t)`` when running from ``t`` towards data (``inf`` at ``kappa_t = 1``)."""
        t = torch.as_tensor(t, dtype=_F64)
        num = -self.schedule.dkappa(t)
        den = 1.0 - self.kappa(t)
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.inf))

    def jump_mass(self, t: Tensor | float, s: Tensor | float) -> Tensor:
        """``int_s^t lambda = log((1 - kappa_s) / (1 - kappa_t))`` for ``s < t``: the probability of at
        least one jump over the step is ``1 - exp(-jump_mass) = (kappa_s - kappa_t) / (1 - kappa_t)``."""
        ks, kt = self.kappa(s), self.kappa(t)
        return torch.log((1.0 - kt) / (1.0 - ks).clamp_min(1e-300))

    # ------------------------------------------------------------------ distributions
    def _pad(self, p0: Tensor) -> Tensor:
        """Probabilities over the classes padded to the states (the mask state gets 0)."""
        p0 = p0.to(_F64)
        if self.states == self.num_classes:
            return p0
        return torch.cat([p0, p0.new_zeros(p0.shape[:-1] + (1,))], -1)

    def onehot(self, x: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(x.long(), self.states).to(_F64)

    def marginal(self, x0: Tensor, t: Tensor | float) -> Tensor:
        """``q(x_t | x_0)`` over the states: ``x0`` class indices ``[...]`` or probabilities
        ``[..., K]``; ``t`` a number or per element ``[...]``. Returns ``[..., states]``."""
        p0 = self.onehot(x0) if not x0.is_floating_point() else self._pad(x0)
        k = self.kappa(t).to(p0.device)
        k = k.reshape(k.shape + (1,)) if k.ndim else k
        return k * p0 + (1.0 - k) * self.limit.to(p0.device)

    def prior_probs(self, shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        """The limit ``m`` broadcast to ``[*shape, states]``."""
        return self.limit.to(device).expand(tuple(shape) + (self.states,))

    def denoised(self, logits: Tensor, x_t: Tensor | None = None) -> Tensor:
        """``p(x_0 | x_t)`` (float64, ``[..., K]``) from the network's logits ``[..., K]``; with the mask
        prior and ``x_t`` given, every unmasked element is its own one-hot (it is known exactly)."""
        p0 = torch.softmax(logits.to(_F64), -1)
        if self.prior == "mask" and x_t is not None:
            keep = x_t != self.num_classes
            if bool(keep.any()):
                exact = torch.nn.functional.one_hot(x_t.clamp(max=self.num_classes - 1).long(),
                                                    self.num_classes).to(_F64)
                p0 = torch.where(keep.unsqueeze(-1), exact, p0)
        return p0

    def posterior(self, x_t: Tensor, p0: Tensor, t: Tensor | float, s: Tensor | float) -> Tensor:
        """The D3PM reverse step ``p(x_s | x_t) = sum_{x_0} q(x_s | x_t, x_0) p0(x_0)`` for ``s < t``
        (module docstring): ``x_t`` ``[...]`` state indices, ``p0`` ``[..., K]``; ``t, s`` numbers or
        per element. Returns probabilities ``[..., states]``. Where ``p0`` gives zero mass to every
        ``x_0`` consistent with ``x_t`` the element keeps ``x_t``."""
        dev = p0.device
        kt, ks = self.kappa(t).to(dev), self.kappa(s).to(dev)
        kt = kt.reshape(kt.shape + (1,)) if kt.ndim else kt
        ks = ks.reshape(ks.shape + (1,)) if ks.ndim else ks
        m = self.limit.to(dev)
        oh = self.onehot(x_t).to(dev)                       # [..., S]
        m_j = m[x_t.long()].unsqueeze(-1)                   # q(x_t = j | limit)
        q_t = kt * oh + (1.0 - kt) * m_j                    # q(x_t = j | x_0 = k), over k
        pp = self._pad(p0)
        w = torch.where(q_t > 0, pp / q_t.clamp_min(1e-300), torch.zeros_like(pp))
        a = torch.where(ks > 0, kt / ks.clamp_min(1e-300), torch.zeros_like(kt))
        trans = a * oh + (1.0 - a) * m_j                    # q(x_t = j | x_s = i), over i
        post = trans * (ks * w + (1.0 - ks) * m * w.sum(-1, keepdim=True))
        total = post.sum(-1, keepdim=True)
        return torch.where(total > 0, post / total.clamp_min(1e-300), oh)

    def __repr__(self) -> str:
        return f"CategoricalPath(classes={self.num_classes}, prior={self.prior!r}, schedule={self.schedule.name!r})"
