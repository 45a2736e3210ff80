"""DDPM / DDIM samplers and time grids against exact answers.

The data are Gaussian mixtures (core/gaussian.py) whose noisy marginals, optimal denoiser and
score are known in closed form, so a sampler driven by the exact denoiser must reproduce the
mixture up to its own discretization error. Tolerances are stated where they are used; the
random parts use fixed seeds (no flakiness), and each tolerance is several standard errors wide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.process.parameterization import Prediction
from diffuse.core.sampling.ancestral import ddim, ddim_invert, ddpm
from diffuse.core.sampling.registry import get_sampler
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.core.process.schedule import CosineSchedule, LinearBetaSchedule, SigmaSchedule
from diffuse.core.data.space import DenseSpace, per_sample_generators

F64 = torch.float64
T = 1000
SCHED = LinearBetaSchedule()
SPACE = DenseSpace()
GM2 = GaussianMixture.random(k=3, d=2, seed=0)       # 3 well-separated components in 2-D
GM4 = GaussianMixture.random(k=1, d=4, seed=1)       # one full-covariance Gaussian in 4-D
N = {2: 3000, 4: 2000}
GMS = {2: GM2, 4: GM4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _sample(sampler, gm, n, steps, seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    x = prior_sample(SCHED, SPACE, torch.zeros(n, gm.D, dtype=F64), generator=g)
    return sampler(gm.denoiser(SCHED), x, time_grid(SCHED, steps), schedule=SCHED, space=SPACE,
                   generator=g, **kw)


def _stratified(gm: GaussianMixture, n: int, seed: int) -> torch.Tensor:
    """A true sample with exactly round(w_k n) points from component k (no binomial fluctuation of
    the component counts, which otherwise dominates the energy distance's noise)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.round(gm.weights * n).long()
    counts[-1] = n - counts[:-1].sum()
    chol = torch.linalg.cholesky(gm.covs)
    x = torch.cat([gm.means[k] + torch.randn(int(c), gm.D, generator=g, dtype=F64) @ chol[k].T
                   for k, c in enumerate(counts)])
    return x[torch.randperm(n, generator=g)]


@pytest.fixture(scope="module")
def reference():
    """A stratified true sample per mixture, and the energy-distance noise floor: the mean distance
    from 8 independent true samples of the same size to it (what an exact sampler scores)."""
    out = {}
    for d, gm in GMS.items():
        ref = _stratified(gm, N[d], seed=99)
        floor = float(np.mean([energy_distance(gm.sample(N[d], torch.Generator().manual_seed(100 + i)), ref)
                               for i in range(8)]))
        out[d] = (ref, floor)
    return out


@pytest.fixture(scope="module")
def samples():
    """DDPM-1000 and DDIM-50/100 (eta=0) samples from the exact denoiser, computed once."""
    out = {}
    for d, gm in GMS.items():
        out[d, "ddpm", 1000] = _sample(ddpm, gm, N[d], 1000)
        for steps in (50, 100):
            out[d, "ddim", steps] = _sample(ddim, gm, N[d], steps)
    return out


def _component_stats(gm: GaussianMixture, x: torch.Tensor):
    """Assign each point to its most likely component; return weights, means and covariances."""
    comp = MultivariateNormal(gm.means, gm.covs)
    label = (comp.log_prob(x[:, None, :]) + torch.log(gm.weights)).argmax(1)
    w = torch.stack([(label == k).double().mean() for k in range(gm.K)])
    mu = torch.stack([x[label == k].mean(0) for k in range(gm.K)])
    cov = torch.stack([torch.cov(x[label == k].T) for k in range(gm.K)])
    return w, mu, cov


# ------------------------------------------------------------------ (a) the forward marginal
@pytest.mark.parametrize("t", [0.05, 0.3, 0.7, 1.0])
def test_forward_marginal_matches_closed_form(t):
    gm, n = GM2, 20000
    g = torch.Generator().manual_seed(3)
    x0 = gm.sample(n, g)
    alpha, sigma = SCHED.alpha_sigma(torch.full((n,), t, dtype=F64))
    x_t = SPACE.coef(alpha, x0) * x0 + SPACE.coef(sigma, x0) * SPACE.noise(x0, g)
    a, s = float(alpha[0]), float(sigma[0])
    # closed form: mean alpha sum w mu, cov sum w (alpha^2 S + sigma^2 I + alpha^2 mu mu^T) - m m^T
    m = a * (gm.weights[:, None] * gm.means).sum(0)
    second = (gm.weights[:, None, None] * (a ** 2 * gm.covs + s ** 2 * torch.eye(2, dtype=F64)
                                           + a ** 2 * gm.means[:, :, None] * gm.means[:, None, :])).sum(0)
    cov = second - m[:, None] * m[None, :]
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x_t.mean(0) - m).abs() < 5 * se_mean).all())
    # sample covariance: relative Frobenius error ~ sqrt(2 / n) = 1 %; allow 4 %
    assert float((torch.cov(x_t.T) - cov).norm() / cov.norm()) < 0.04
    # the exact marginal density integrates to 1 (2-D trapezoid on a wide grid) ...
    half = 6 * math.sqrt(float(torch.diagonal(cov).max())) + float(m.abs().max())
    u = torch.linspace(-half, half, 401, dtype=F64)
    grid = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    p = gm.log_prob(grid, a, s).exp().reshape(401, 401)
    mass = torch.trapezoid(torch.trapezoid(p, u, dim=1), u)
    assert float(mass) == pytest.approx(1.0, abs=1e-6)
    # ... and the average log-density of forward samples is its expectation (-entropy, by quadrature)
    logp = gm.log_prob(x_t, a, s)
    neg_entropy = torch.trapezoid(torch.trapezoid(p * torch.log(p.clamp(min=1e-300)), u, dim=1), u)
    assert abs(float(logp.mean() - neg_entropy)) < 5 * float(logp.std()) / math.sqrt(n)


def test_forward_marginal_log_density_of_a_gaussian_is_its_closed_form_entropy():
    gm, n, t = GM4, 20000, 0.4
    g = torch.Generator().manual_seed(4)
    a, s = (float(v) for v in SCHED.alpha_sigma(torch.tensor(t, dtype=F64)))
    x_t = a * gm.sample(n, g) + s * SPACE.noise(torch.zeros(n, 4, dtype=F64), g)
    C = a ** 2 * gm.covs[0] + s ** 2 * torch.eye(4, dtype=F64)
    neg_entropy = -0.5 * (4 * (1 + math.log(2 * math.pi)) + float(torch.logdet(C)))
    logp = gm.log_prob(x_t, a, s)
    assert abs(float(logp.mean()) - neg_entropy) < 5 * float(logp.std()) / math.sqrt(n)


# ------------------------------------------------------------------ one step = the paper's formula
def _fixed_denoiser(eps_fixed):
    """Predicts a fixed eps; x0 is the consistent view ``(x - sigma eps) / alpha``."""
    def denoise(x, t):
        a, s = SCHED.alpha_sigma(t)
        a, s = SPACE.coef(a, x), SPACE.coef(s, x)
        return Prediction((x - s * eps_fixed) / a, eps_fixed)
    return denoise


def _paper_alpha_bar():
    betas = np.linspace(1e-4, 0.02, T)
    return betas, np.concatenate([[1.0], np.cumprod(1 - betas)])   # alpha_bar[0] = 1


@pytest.mark.parametrize("n", [1000, 500, 2, 1])
def test_ddpm_step_is_ho_et_al_algorithm_2(n):
    betas, ab = _paper_alpha_bar()
    g = torch.Generator().manual_seed(n)
    x = torch.randn(7, 3, generator=g, dtype=F64)
    eps = torch.randn(7, 3, generator=g, dtype=F64)
    state = g.get_state()
    out = ddpm(_fixed_denoiser(eps), x, torch.tensor([n / T, (n - 1) / T], dtype=F64), schedule=SCHED,
               space=SPACE, generator=g)
    z = torch.randn(7, 3, generator=torch.Generator().set_state(state), dtype=F64) if n > 1 else 0.0
    beta, a_t = betas[n - 1], 1 - betas[n - 1]
    sigma2 = (1 - ab[n - 1]) / (1 - ab[n]) * beta                  # beta-tilde
    expected = (x - beta / math.sqrt(1 - ab[n]) * eps) / math.sqrt(a_t) + math.sqrt(sigma2) * z
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # the "large" variance is beta_t
    out_large = ddpm(_fixed_denoiser(eps), x, torch.tensor([n / T, (n - 1) / T], dtype=F64), schedule=SCHED,
                     space=SPACE, generator=torch.Generator().set_state(state), variance="large")
    expected_large = expected + (math.sqrt(beta) - math.sqrt(sigma2)) * z
    torch.testing.assert_close(out_large, expected_large, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("n, m", [(600, 580), (1000, 900), (20, 0)])
def test_ddim_step_is_song_et_al_eq_12(eta, n, m):
    _, ab = _paper_alpha_bar()
    g = torch.Generator().manual_seed(n + m)
    x = torch.randn(5, 4, generator=g, dtype=F64)
    eps = torch.randn(5, 4, generator=g, dtype=F64)
    state = g.get_state()
    out = ddim(_fixed_denoiser(eps), x, torch.tensor([n / T, m / T], dtype=F64), schedule=SCHED, space=SPACE,
               generator=g, eta=eta)
    sig = eta * math.sqrt((1 - ab[m]) / (1 - ab[n])) * math.sqrt(1 - ab[n] / ab[m])
    x0 = (x - math.sqrt(1 - ab[n]) * eps) / math.sqrt(ab[n])
    expected = math.sqrt(ab[m]) * x0 + math.sqrt(max(1 - ab[m] - sig ** 2, 0.0)) * eps
    if sig > 0:
        expected = expected + sig * torch.randn(5, 4, generator=torch.Generator().set_state(state), dtype=F64)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ (b) samplers reproduce the mixture
CASES = [(2, "ddpm", 1000), (2, "ddim", 50), (2, "ddim", 100), (4, "ddpm", 1000), (4, "ddim", 50), (4, "ddim", 100)]
# relative Frobenius error allowed on each component covariance. Sampling error alone is
# ~sqrt(2 / n_k) = 3-5 %; DDIM adds its own discretization error: its last jump to t=0 returns
# E[x0 | x_t], which shrinks a component's covariance by about sigma_t^2 / (alpha^2 S + sigma^2)
# (computed exactly below for GM4: 9 % at 50 steps, 5 % at 100, 0.5 % on the full 1000-step grid).
COV_TOL = {("ddpm", 1000): 0.12, ("ddim", 50): 0.2, ("ddim", 100): 0.15}
# energy distance allowed, in units of the noise floor (the mean over 8 independent true samples of
# the same size; single true samples themselves score 0.2x..2.7x of it). Measured here, 2-D / 4-D:
# DDPM-1000 0.5x / 1.9x, DDIM-50 1.0x / 2.6x, DDIM-100 0.6x / 1.9x, while DDIM-5 scores 46x / 44x.
ED_FACTOR = {("ddpm", 1000): 3.0, ("ddim", 50): 4.0, ("ddim", 100): 4.0}


@pytest.mark.parametrize("d, name, steps", CASES)
def test_sampler_reproduces_mixture_components(samples, d, name, steps):
    gm, n = GMS[d], N[d]
    w, mu, cov = _component_stats(gm, samples[d, name, steps])
    # weights: binomial standard error <= sqrt(0.25 / 3000) = 0.009; allow 0.03
    assert float((w - gm.weights).abs().max()) < 0.03
    for k in range(gm.K):
        n_k = float(w[k]) * n
        se = math.sqrt(float(torch.diagonal(gm.covs[k]).sum()) / n_k)   # std. error of the mean (norm)
        assert float((mu[k] - gm.means[k]).norm()) < 4 * se
        assert float((cov[k] - gm.covs[k]).norm() / gm.covs[k].norm()) < COV_TOL[name, steps]


@pytest.mark.parametrize("d, name, steps", CASES)
def test_sampler_energy_distance_near_noise_floor(samples, reference, d, name, steps):
    ref, floor = reference[d]
    ed = energy_distance(samples[d, name, steps], ref)
    assert ed < ED_FACTOR[name, steps] * floor, (ed, floor)


def test_energy_distance_detects_a_bad_sampler(reference):
    """The check above can fail: 5 DDIM steps land far above the floor (>10x)."""
    ref, floor = reference[2]
    assert energy_distance(_sample(ddim, GM2, N[2], 5), ref) > 10 * floor


def _ddim_gaussian_map(mu, S, grid):
    """For Gaussian data N(mu, S) the exact denoiser is affine, so deterministic DDIM is an affine
    map x_T -> M x_T + c; compose it step by step (an independent implementation of eq. 12)."""
    D = mu.shape[0]
    eye = torch.eye(D, dtype=F64)
    M, c = eye.clone(), torch.zeros(D, dtype=F64)
    for t, s in zip(grid[:-1], grid[1:]):
        a, sg = (float(v) for v in SCHED.alpha_sigma(t))
        a_n, s_n = (float(v) for v in SCHED.alpha_sigma(s))
        G = a * S @ torch.linalg.inv(a ** 2 * S + sg ** 2 * eye)          # x0_hat = G x + mu - a G mu
        k = a_n - a * s_n / sg                                             # x_s = (s_n/sg) x + k x0_hat
        step_M, step_c = (s_n / sg) * eye + k * G, k * (mu - a * G @ mu)
        M, c = step_M @ M, step_M @ c + step_c
    return M, c


@pytest.mark.parametrize("steps", [50, 100])
def test_ddim_on_a_gaussian_is_the_exact_affine_map(samples, steps):
    gm = GM4
    grid = time_grid(SCHED, steps)
    M, c = _ddim_gaussian_map(gm.means[0], gm.covs[0], grid)
    g = torch.Generator().manual_seed(1)                                  # the seed used by `samples`
    x_T = prior_sample(SCHED, SPACE, torch.zeros(N[4], 4, dtype=F64), generator=g)
    torch.testing.assert_close(samples[4, "ddim", steps], x_T @ M.T + c, rtol=1e-9, atol=1e-9)
    # the law of DDIM's output is N(c, M M^T): its covariance error is DDIM's discretization error,
    # which shrinks with the number of steps and vanishes on the full grid
    err = lambda M_: float((M_ @ M_.T - gm.covs[0]).norm() / gm.covs[0].norm())
    full = _ddim_gaussian_map(gm.means[0], gm.covs[0], time_grid(SCHED, T))[0]
    assert err(full) < 0.02 < err(M) < COV_TOL["ddim", steps]


def _ddpm_gaussian_law(mu, S, grid):
    """For Gaussian data, DDPM from x_T ~ N(0, I) is a linear-Gaussian chain: propagate its exact
    output mean and covariance (x_s = A x + B x0_hat + std z, Ho et al. eq. 7)."""
    D = mu.shape[0]
    eye = torch.eye(D, dtype=F64)
    m, P = torch.zeros(D, dtype=F64), eye.clone()
    for t, s in zip(grid[:-1], grid[1:]):
        a, sg = (float(v) for v in SCHED.alpha_sigma(t))
        a_n, s_n = (float(v) for v in SCHED.alpha_sigma(s))
        G = a * S @ torch.linalg.inv(a ** 2 * S + sg ** 2 * eye)
        var = sg ** 2 - (a / a_n) ** 2 * s_n ** 2
        A, B = (a / a_n) * s_n ** 2 / sg ** 2, a_n * var / sg ** 2
        step_M = A * eye + B * G
        m = step_M @ m + B * (mu - a * G @ mu)
        P = step_M @ P @ step_M.T + (var * s_n ** 2 / sg ** 2) * eye
    return m, P


def test_ddpm_on_a_gaussian_matches_its_exact_output_law(samples):
    """DDPM-1000's own law is within 1.3 % of the data (the beta-tilde variance slightly
    underestimates each reverse step's spread; 10 steps are 50 % off); its samples match that law."""
    gm = GM4
    mu, S = gm.means[0], gm.covs[0]
    m, P = _ddpm_gaussian_law(mu, S, time_grid(SCHED, T))
    assert float((m - mu).norm()) < 1e-4                                   # only the prior mismatch at T
    assert float((P - S).norm() / S.norm()) < 0.02
    m10, P10 = _ddpm_gaussian_law(mu, S, time_grid(SCHED, 10))
    assert float((P10 - S).norm() / S.norm()) > 0.3
    x = samples[4, "ddpm", T]
    se = torch.sqrt(torch.diagonal(P) / len(x))
    assert bool(((x.mean(0) - m).abs() < 5 * se).all())
    assert float((torch.cov(x.T) - P).norm() / P.norm()) < 0.1              # ~sqrt(2 / n) = 3 % sampling error


# ------------------------------------------------------------------ (c) determinism and inversion
def test_ddim_eta0_is_deterministic():
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = time_grid(SCHED, 20)
    den = GM2.denoiser(SCHED)
    a = ddim(den, x, grid, schedule=SCHED, space=SPACE, generator=torch.Generator().manual_seed(1))
    b = ddim(den, x, grid, schedule=SCHED, space=SPACE, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_ddim_invert_then_ddim_returns_the_data():
    x0 = GM2.sample(300, torch.Generator().manual_seed(9))
    grid = time_grid(SCHED, 100)
    den = GM2.denoiser(SCHED)
    kw = dict(schedule=SCHED, space=SPACE)
    # the usual approximation eps(x_t, t) ~ eps(x_s, t): close for most points (median error
    # 0.07 at 100 steps, for data of scale ~3), but a point near a component boundary may move
    z0 = ddim_invert(den, x0, grid, **kw)
    err0 = (ddim(den, z0, grid, **kw) - x0).norm(dim=1)
    assert float(err0.median()) < 0.2
    # fixed-point iterations solve the implicit step exactly: error contracts geometrically
    z = ddim_invert(den, x0, grid, fixed_point_iters=10, **kw)
    err = (ddim(den, z, grid, **kw) - x0).norm(dim=1)
    assert float(err.max()) < 1e-6 and float(err.median()) < 1e-10
    # the latents are (approximately) standard normal, as the prior
    assert abs(float(z.std()) - 1) < 0.1 and abs(float(z.mean())) < 0.1


def test_ddim_eta1_on_the_full_grid_is_ddpm():
    """With eta=1, DDIM's step is DDPM's posterior step (same mean, same variance), so with the
    same noise both samplers produce the same path: equal in distribution, and even pathwise."""
    gm, n = GM2, 256
    den = gm.denoiser(SCHED)
    grid = time_grid(SCHED, T)
    outs = []
    for sampler, kw in ((ddpm, {}), (ddim, {"eta": 1.0})):
        g = torch.Generator().manual_seed(11)
        x = prior_sample(SCHED, SPACE, torch.zeros(n, 2, dtype=F64), generator=g)
        outs.append(sampler(den, x, grid, schedule=SCHED, space=SPACE, generator=g, **kw))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------ (d) prior and conversions
@pytest.mark.parametrize("sched", [SCHED, CosineSchedule(), SigmaSchedule()], ids=["linear", "cosine", "edm"])
def test_prior_sample_is_scaled_space_noise(sched):
    like = torch.zeros(8, 3, dtype=F64)
    x = prior_sample(sched, SPACE, like, generator=torch.Generator().manual_seed(0))
    z = SPACE.noise(like, torch.Generator().manual_seed(0))
    a, s = sched.alpha_sigma(torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(x, float(torch.sqrt(a ** 2 + s ** 2)) * z)
    if sched.variance_preserving:
        torch.testing.assert_close(x, z)


# ------------------------------------------------------------------ (e) batch-size independence
@pytest.mark.parametrize("sampler, kw", [(ddpm, {}), (ddim, {"eta": 0.5})], ids=["ddpm", "ddim-eta0.5"])
def test_same_seed_same_samples_whatever_the_batch_size(sampler, kw):
    den = GM2.denoiser(SCHED)
    grid = time_grid(SCHED, 50)

    def run(count, start=0):
        gens = per_sample_generators(1234, count, start=start)
        x = prior_sample(SCHED, SPACE, torch.zeros(count, 2, dtype=F64), generator=gens)
        return sampler(den, x, grid, schedule=SCHED, space=SPACE, generator=gens, **kw)

    full = run(6)
    torch.testing.assert_close(run(2), full[:2], rtol=0, atol=1e-12)
    torch.testing.assert_close(run(3, start=3), full[3:], rtol=0, atol=1e-12)
    assert not torch.allclose(full[0], full[1])


# ------------------------------------------------------------------ (f) time grids
def _diffusers_0_based(spacing: str, steps: int) -> np.ndarray:
    """The timestep selections of Lin et al. 2023, table 2 (diffusers' formulas, 0-based)."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, steps).round()[::-1]
    if spacing == "leading":
        return (np.arange(0, steps) * (T // steps)).round()[::-1]
    return np.round(np.arange(T, 0, -T / steps)) - 1                      # trailing


LIN_TABLE_10 = {                     # 1-based n (t = n / T), Lin et al. 2023 table 2, T = 1000, 10 steps
    "linspace": [1000, 889, 778, 667, 556, 445, 334, 223, 112, 1],
    "leading": [901, 801, 701, 601, 501, 401, 301, 201, 101, 1],
    "trailing": [1000, 900, 800, 700, 600, 500, 400, 300, 200, 100],
}


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50, 1000])
def test_time_grid_uses_the_literature_timesteps(spacing, steps):
    grid = time_grid(SCHED, steps, spacing)
    assert grid.dtype == F64 and len(grid) == steps + 1 and float(grid[-1]) == 0.0
    assert bool((grid[1:] < grid[:-1]).all())                            # strictly descending
    n = (grid[:-1] * T).numpy()
    np.testing.assert_allclose(n, _diffusers_0_based(spacing, steps) + 1, rtol=0, atol=1e-9)
    if steps == 10:
        assert n.round().astype(int).tolist() == LIN_TABLE_10[spacing]
    if spacing == "trailing":
        assert n[0] == T
    if spacing == "leading" and 1 < steps < T:
        assert n.max() < T                                               # never reaches T


def test_karras_grid_matches_karras_noise_levels():
    # for the EDM sigma schedule (rho = 7) Karras' levels are uniform in t
    edm = SigmaSchedule()
    # (the lowest level sigma_min at t_min = 1e-9, then the data at t = 0)
    grid = time_grid(edm, 18, "karras")
    torch.testing.assert_close(grid, torch.cat([torch.linspace(1, 0, 18, dtype=F64).clamp(min=edm.t_min),
                                                torch.zeros(1, dtype=F64)]), rtol=0, atol=2e-9)
    assert float(edm.sigma(grid[-2])) == pytest.approx(edm.sigma_min, rel=1e-7) and float(edm.sigma(grid[-1])) == 0.0
    # for a continuous VP schedule the grid's sigma / alpha are Karras' eq. 5 between the end points
    cos = CosineSchedule(num_steps=None)
    grid = time_grid(cos, 12, "karras")
    a, s = cos.alpha_sigma(grid[:-1])
    ratio = s / a
    smax, smin, r = float(ratio[0]), float(ratio[-1]), 1 / 7
    i = torch.arange(12, dtype=F64)
    torch.testing.assert_close(ratio, (smax ** r + i / 11 * (smin ** r - smax ** r)) ** 7, rtol=1e-8, atol=0)
    # on a discrete schedule it is rounded to the model's integer timesteps, non-increasing
    g = time_grid(SCHED, 50, "karras")
    n = g * T
    torch.testing.assert_close(n, n.round(), rtol=0, atol=1e-9)
    assert float(g[0]) == 1.0 and float(g[-1]) == 0.0 and bool((g[1:] <= g[:-1]).all())


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing", "karras"])
@pytest.mark.parametrize("steps", [0, -3, T + 1, 2.5])
def test_time_grid_rejects_invalid_steps(spacing, steps):
    with pytest.raises(ValueError):
        time_grid(SCHED, steps, spacing)


def test_time_grid_and_sampler_names_rejected_clearly():
    with pytest.raises(ValueError, match="spacing"):
        time_grid(SCHED, 10, "bogus")
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("euler-ancestral-typo")
    assert get_sampler("ddim") is ddim and get_sampler("ddpm") is ddpm
    with pytest.raises(ValueError):
        ddim(GM2.denoiser(SCHED), torch.zeros(2, 2, dtype=F64), time_grid(SCHED, 2), schedule=SCHED,
             space=SPACE, eta=1.5)


# ------------------------------------------------------------------ (g) the per-step callback
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "ddim_invert"])
def test_callback_called_once_per_step_with_documented_keys(sampler):
    fn = {"ddpm": ddpm, "ddim": ddim, "ddim_invert": ddim_invert}[sampler]
    grid = time_grid(SCHED, 8, "linspace")
    calls = []
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = fn(GM2.denoiser(SCHED), x, grid, schedule=SCHED, space=SPACE,
             generator=torch.Generator().manual_seed(1), callback=calls.append)
    assert len(calls) == len(grid) - 1
    assert all(set(c) == {"i", "t", "t_next", "x", "x0"} for c in calls)
    assert [c["i"] for c in calls] == list(range(len(grid) - 1))
    steps = list(zip(grid[:-1].tolist(), grid[1:].tolist()))
    if sampler == "ddim_invert":                                         # walks the grid upwards
        steps = [(b, a) for a, b in reversed(steps)]
    assert [(c["t"], c["t_next"]) for c in calls] == steps
    assert torch.equal(calls[-1]["x"], out)
    if sampler != "ddim_invert":
        assert all(c["x0"].shape == x.shape for c in calls)


@pytest.mark.parametrize("steps", [10, 100, 200, 999, 1000])
def test_karras_grid_on_a_discrete_chain_has_no_repeated_timesteps(steps):
    """Rounding a dense Karras grid onto the T=1000 chain must not repeat a timestep (a zero-length step)."""
    grid = time_grid(LinearBetaSchedule(), steps, "karras")
    n = (grid[:-1] * 1000).round()
    assert len(n) == steps and bool((n[1:] < n[:-1]).all())
    assert n[0] == 1000 and n[-1] >= 1 and grid[-1] == 0
