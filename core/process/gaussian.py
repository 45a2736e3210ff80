"""Gaussian-mixture data with closed-form marginals, denoiser and score.

For data ``x_0 ~ sum_k w_k N(mu_k, S_k)`` in ``R^D`` and ``x_t = alpha x_0 + sigma eps`` the
noisy marginal is the mixture ``sum_k w_k N(alpha mu_k, C_k)``, ``C_k = alpha^2 S_k + sigma^2 I``,
and the optimal (MMSE) denoiser is

    E[x_0 | x_t] = sum_k r_k(x_t) (mu_k + alpha S_k C_k^{-1} (x_t - alpha mu_k)),
    r_k(x_t) = w_k N(x_t; alpha mu_k, C_k) / p_t(x_t),

with score ``grad log p_t(x_t) = -sum_k r_k C_k^{-1} (x_t - alpha mu_k)``, and on a flow path the
exact velocity ``a' E[x_0 | x_t] + b' E[eps | x_t]`` (:meth:`GaussianMixture.velocity`). These are truths
no one here chose: tests and benchmarks compare samplers and likelihoods against them.

Read as a labelled data set (one class per component), the class-``k`` conditional of the
mixture is component ``k`` alone (``r = onehot(k)`` above), and the exact noise-aware classifier
is ``p(k | x_t) = r_k(x_t)``: :meth:`GaussianMixture.component`,
:meth:`GaussianMixture.class_log_prob` and :meth:`GaussianMixture.conditional_model` give the
closed forms that guidance is tested against.
Vectors are dense ``[B, D]``; everything runs in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .parameterization import Prediction
from .schedule import Schedule
from ..errors import UserInputError
from .paths import get_flow_path
from ..frechet import frechet_distance

__all__ = ["GaussianMixture", "energy_distance", "gaussian_w2"]


class GaussianMixture:
    """A mixture of full-covariance Gaussians with exact diffusion quantities."""

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)          # [K, D]
        self.covs = torch.as_tensor(covs, dtype=torch.float64)            # [K, D, D]
        self.K, self.D = self.means.shape

    @classmethod
    def random(cls, k: int = 3, d: int = 2, seed: int = 0, spread: float = 3.0, scale: float = 0.5) -> "GaussianMixture":
        g = torch.Generator().manual_seed(seed)
        w = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
        mu = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
        a = scale * torch.randn(k, d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        cov = a @ a.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)
        return cls(w, mu, cov)

    # ------------------------------------------------------------------ data
    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, generator=generator, dtype=torch.float64)
        chol = torch.linalg.cholesky(self.covs)
        x = self.means[comp] + torch.einsum("nij,nj->ni", chol[comp], z)
        return (x, comp) if return_labels else x

    def _marginal(self, alpha: Tensor, sigma: Tensor):
        """Per-sample component covariances ``C_k`` for per-sample ``alpha, sigma`` ([B])."""
        eye = torch.eye(self.D, dtype=torch.float64, device=alpha.device)
        scaled = torch.einsum("b,kij->bkij", alpha ** 2, self.covs.to(alpha.device))
        return scaled + torch.einsum("b,ij->bij", sigma ** 2, eye).unsqueeze(1)  # [B, K, D, D]

    def log_prob(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """``log p_t(x)`` of the noisy marginal (``alpha=1, sigma=0``: the data density)."""
        x = x.to(torch.float64)
        alpha = torch.as_tensor(alpha, dtype=torch.float64).expand(x.shape[0])
        sigma = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
        return torch.logsumexp(self._component_logp(x, alpha, sigma)[0], dim=1)

    def _component_logp(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        diff = x[:, None, :] - alpha[:, None, None] * self.means[None]     # [B, K, D]
        if alpha.numel() > 1 and bool((alpha == alpha[0]).all()) and bool((sigma == sigma[0]).all()):
            # one time for the whole batch (every sampler step): factor the K covariances once
            L = torch.linalg.cholesky(self._marginal(alpha[:1], sigma[:1]))  # [1, K, D, D]
            sol = torch.einsum("kij,bkj->bki", torch.cholesky_inverse(L[0]), diff)
        else:
            C = self._marginal(alpha, sigma)                               # [B, K, D, D]
            L = torch.linalg.cholesky(C)
            sol = torch.cholesky_solve(diff[..., None], L)[..., 0]        # C^{-1} diff
        maha = (diff * sol).sum(-1)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        logp = torch.log(self.weights)[None] - 0.5 * (maha + logdet + self.D * math.log(2 * math.pi))
        return logp, sol, diff

    # ------------------------------------------------------------------ classes
    def component(self, k: int) -> "GaussianMixture":
        """Component ``k`` alone: the class-``k`` conditional of the mixture."""
        return GaussianMixture(self.weights.new_ones(1), self.means[k:k + 1], self.covs[k:k + 1])

    def class_log_prob(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """Exact ``log p(k | x_t)`` ``[B, K]`` (the responsibilities of the noisy marginal)."""
        logp, _, _ = self._component_logp(x.to(torch.float64), alpha, sigma)
        return torch.log_softmax(logp, dim=1)

    def conditional(self, known: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussian conditioning (one component): ``(mean, cov)`` of the unknown coordinates
        (``~known``, a bool ``[D]``) given ``x[known] = values``:
        ``mu_u + S_uk S_kk^-1 (v - mu_k)``, ``S_uu - S_uk S_kk^-1 S_ku``."""
        if self.K != 1:
            raise UserInputError("closed-form conditioning is implemented for a single Gaussian")
        k = torch.as_tensor(known, dtype=torch.bool)
        u = ~k
        mu, S = self.means[0], self.covs[0]
        gain = S[u][:, k] @ torch.linalg.inv(S[k][:, k])
        mean = mu[u] + gain @ (torch.as_tensor(values, dtype=torch.float64) - mu[k])
        cov = S[u][:, u] - gain @ S[k][:, u]
        return mean, cov

    # ------------------------------------------------------------------ exact model
    def denoise_at(self, x: Tensor, alpha: Tensor, sigma: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Exact ``(E[x_0 | x_t], score)`` for per-sample ``alpha, sigma`` ([B]).

        With ``labels [B]`` (``K`` = no label): for labelled rows, the class-conditional answer
        ``(E[x_0 | x_t, k], grad log p_t(x_t | k))``, i.e. component ``k`` alone."""
        x64 = x.to(torch.float64)
        logp, sol, diff = self._component_logp(x64, alpha, sigma)
        if labels is not None:
            labels = labels.to(logp.device).long()
            given = labels < self.K
            if bool(given.any()):
                onehot = torch.nn.functional.one_hot(labels.clamp(max=self.K - 1), self.K).bool()
                logp = torch.where(given[:, None] & ~onehot, torch.full_like(logp, -math.inf), logp)
        r = torch.softmax(logp, dim=1)                                     # [B, K]
        Sk_sol = torch.einsum("kij,bkj->bki", self.covs, sol)              # S_k C_k^{-1} diff
        x0_k = self.means[None] + alpha[:, None, None] * Sk_sol
        x0 = (r[..., None] * x0_k).sum(1)
        score = -(r[..., None] * sol).sum(1)
        return x0, score

    def pf_ode_solution(self, x1: Tensor, schedule: Schedule, t_end: float, t_start: float = 1.0) -> Tensor:
        """The exact probability-flow ODE map from ``x1`` at ``t_start`` to ``t_end``, for a single
        Gaussian ``N(mu, S)`` (closed form: in ``x / alpha`` with noise ``sigma / alpha`` each
        eigen-direction of ``S`` scales as ``sqrt(lambda + sigma^2)``). Mixtures have no closed form."""
        if self.K != 1:
            raise UserInputError("the closed-form probability-flow map exists for a single Gaussian only")
        lam, q = torch.linalg.eigh(self.covs[0])
        a1, s1 = schedule.alpha_sigma(torch.tensor(float(t_start), dtype=torch.float64))
        a0, s0 = schedule.alpha_sigma(torch.tensor(float(t_end), dtype=torch.float64))
        y = (x1.to(torch.float64) / a1 - self.means) @ q
        y = y * torch.sqrt((lam + (s0 / a0) ** 2) / (lam + (s1 / a1) ** 2))
        return a0 * (y @ q.T + self.means)

    def denoiser(self, schedule: Schedule):
        """A sampler-ready ``denoise(x, t) -> Prediction`` for this exact model. A step ``(t, s)``
        (``t [B, 2]``, the flow-map samplers' call) is answered at ``t``, as every one-time model
        answers it (``core.process.denoiser``)."""
        def denoise(x: Tensor, t: Tensor) -> Prediction:
            if t.ndim == 2:
                t = t[:, 0]
            alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
            x0, score = self.denoise_at(x, alpha, sigma)
            eps = -sigma[:, None] * score
            return Prediction(x0.to(x.dtype), eps.to(x.dtype))
        return denoise

    def velocity(self, x: Tensor, tau: Tensor | float, path: str = "linear") -> Tensor:
        """The exact flow-matching velocity ``E[d x_tau / d tau | x_tau] = a' E[x_0 | x] + b' E[eps | x]``
        at path time ``tau`` (per sample ``[B]`` or a number) of a flow path (``eps - x_0`` in
        expectation for the linear path; ``E[eps | x] = -b score``). Finite at both ends."""

        p = get_flow_path(path)
        x64 = x.to(torch.float64)
        tau = torch.as_tensor(tau, dtype=torch.float64).expand(x64.shape[0])
        alpha, sigma = p.alpha_sigma(tau)
        x0, score = self.denoise_at(x64, alpha, sigma)
        da, ds = p.derivatives(alpha, sigma)
        return da[:, None] * x0 + ds[:, None] * (-sigma[:, None] * score)

    def conditional_model(self, schedule: Schedule, name: str = "label"):
        """The exact conditional model ``model(x, t, cond=None, space=None) -> Prediction``, where
        ``cond[name]`` holds class labels (``K``, the null label, or no condition: the mixture)."""
        def model(x: Tensor, t: Tensor, cond=None, space=None) -> Prediction:
            alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
            labels = None if cond is None else cond[name]
            x0, score = self.denoise_at(x, alpha, sigma, labels)
            eps = -sigma[:, None] * score
            return Prediction(x0.to(x.dtype), eps.to(x.dtype))
        return model


def energy_distance(x: Tensor, y: Tensor, max_n: int = 4000) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (Szekely & Rizzo), V-statistic form.

    Zero iff the distributions agree; with ``n`` samples on each side its noise floor for equal
    distributions is about ``1/n`` times the data scale.
    """
    x = x[:max_n].to(torch.float64)
    y = y[:max_n].to(torch.float64)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)


def gaussian_w2(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """2-Wasserstein distance between two Gaussians (closed form, Givens & Shortt 1984): the square
    root of the Frechet distance ``|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^1/2)``
    (:func:`diffuse.core.frechet.frechet_distance`, the one implementation every metric uses)."""
    d2 = frechet_distance(*(t.detach().cpu().double().numpy() for t in (mean1, cov1, mean2, cov2)))
    return math.sqrt(max(d2, 0.0))
