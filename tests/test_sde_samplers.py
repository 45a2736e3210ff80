"""Continuous samplers against closed-form truths: Gaussian data (exact PF-ODE solution, exact
marginals), the exact Gaussian-mixture denoiser, and the zero-CoM graph subspace."""

import math

import pytest
import torch

from diffuse.core import SAMPLERS, DenseSpace, LinearBetaSchedule, SigmaSchedule, per_sample_generators, time_grid
from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.data.graph import GraphSpace
from diffuse.core.process.parameterization import Prediction

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = DenseSpace()
MU = torch.tensor([[1.0, -0.5]], dtype=F64)
COV = torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=F64)
GAUSS = GaussianMixture(torch.ones(1), MU, COV)
NEW = ["euler_maruyama", "pc", "ode_euler", "ode_heun", "rk45", "edm_heun", "dpmpp_2m", "dpmpp_3m"]


def prior_scale(sch):
    a, s = sch.alpha_sigma(torch.tensor(1.0, dtype=F64))
    return float(torch.sqrt(a ** 2 + s ** 2))


def exact_pf_ode(x1, sch, t_end):
    """Closed-form PF-ODE solution for the Gaussian N(MU, COV) (core.gaussian)."""
    return GaussianMixture(torch.ones(1, dtype=F64), MU, COV).pf_ode_solution(x1, sch, t_end)


def test_registered_under_cli_names():
    for name in NEW:
        assert name in SAMPLERS


@pytest.mark.parametrize("name,order", [("ddim", 1.0), ("ode_euler", 1.0), ("ode_heun", 2.0),
                                        ("edm_heun", 2.0), ("dpmpp_2m", 2.0), ("dpmpp_3m", 3.0)])
def test_order_of_convergence_to_exact_gaussian_pf_ode(name, order):
    """Error against the closed-form PF-ODE solution on a log-SNR grid: halving the step
    divides it by 2^order (first order: DDIM, Euler; second order: Heun, EDM, DPM-Solver++(2M))."""
    sch = LinearBetaSchedule(num_steps=None)
    x1 = torch.randn(128, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    errs = []
    for n in (16, 32, 64):
        grid = time_grid(sch, n, "logsnr", final=None)
        y = SAMPLERS[name](GAUSS.denoiser(sch), x1.clone(), grid, schedule=sch, space=SPACE)
        errs.append(float((y - exact_pf_ode(x1, sch, grid[-1])).norm(dim=1).max()))
    p = math.log2(errs[1] / errs[2])
    assert order - 0.25 < p < order + 1.2, (errs, p)   # Gaussian data can show super-convergence


def test_rk45_matches_exact_gaussian_pf_ode_and_reports_nfe():
    sch = SigmaSchedule(sigma_min=0.002, sigma_max=80.0)
    x1 = 80.0 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    grid = time_grid(sch, 10, "karras", final=None)
    stats, seen = {}, []
    y = SAMPLERS["rk45"](GAUSS.denoiser(sch), x1.clone(), grid, schedule=sch, space=SPACE,
                         rtol=1e-8, atol=1e-8, stats=stats, callback=seen.append)
    torch.testing.assert_close(y, exact_pf_ode(x1, sch, grid[-1]), rtol=0, atol=1e-5)
    assert stats["nfe"] > 20 and seen[-1]["nfe"] == stats["nfe"]


@pytest.mark.parametrize("name,steps,options", [("euler_maruyama", 200, {}),
                                                ("pc", 100, {"snr": 0.01}),
                                                ("pc", 100, {"snr": 0.01, "predictor": "euler_maruyama"}),
                                                ("edm_heun", 50, {"s_churn": 10.0})])
def test_stochastic_samplers_reproduce_the_gaussian(name, steps, options):
    """Reverse SDE / PC / EDM churn from N(0, I) give mean mu and covariance S."""
    sch = LinearBetaSchedule(num_steps=None)
    n = 4000
    x = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = SAMPLERS[name](GAUSS.denoiser(sch), x, time_grid(sch, steps, "logsnr"), schedule=sch, space=SPACE,
                       generator=torch.Generator().manual_seed(3), **options)
    se = math.sqrt(0.5 / n)
    assert (y.mean(0) - MU[0]).abs().max() < 5 * se
    torch.testing.assert_close(torch.cov(y.T), COV[0], rtol=0, atol=0.04)


# ----------------------------------------------------------------------------- exact mixture
@pytest.fixture(scope="module")
def mixture():
    gm = GaussianMixture.random(k=3, d=2, seed=0)
    sch = LinearBetaSchedule(num_steps=1000)
    x1 = torch.randn(2000, 2, dtype=F64, generator=torch.Generator().manual_seed(11))
    ref = gm.sample(2000, torch.Generator().manual_seed(12))
    floor = energy_distance(gm.sample(2000, torch.Generator().manual_seed(13)), ref)
    return gm, sch, x1, ref, floor


@pytest.fixture(scope="module")
def exact_flow(mixture):
    """The exact probability-flow transport of the first 1000 starting points (tight RK45)."""
    gm, sch, x1, _, _ = mixture
    return SAMPLERS["rk45"](gm.denoiser(sch), x1[:1000].clone(), time_grid(sch, 10, "logsnr"), schedule=sch,
                            space=SPACE, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("nfe", [10, 20])
def test_dpmpp_2m_beats_ddim_on_the_mixture(mixture, exact_flow, nfe):
    """At 10 and 20 evaluations on the same grid, DPM-Solver++(2M) is closer to the true mixture
    than DDIM (Lu et al. 2022, figures 4-5). The mixture is represented by the exact
    probability-flow transport of the same starting noise (tight RK45), which removes the
    sampling noise of a two-sample distance to fresh draws (common random numbers)."""
    gm, sch, x1, ref, floor = mixture
    den = gm.denoiser(sch)
    x1, exact = x1[:1000], exact_flow
    grid = time_grid(sch, nfe, "trailing")
    y_ddim = SAMPLERS["ddim"](den, x1.clone(), grid, schedule=sch, space=SPACE)
    y_dpm = SAMPLERS["dpmpp_2m"](den, x1.clone(), grid, schedule=sch, space=SPACE)
    assert energy_distance(y_dpm, exact) < 0.5 * energy_distance(y_ddim, exact)
    assert float((y_dpm - exact).norm(dim=1).mean()) < 0.5 * float((y_ddim - exact).norm(dim=1).mean())


@pytest.mark.parametrize("name,evals_per_step,options", [
    ("euler_maruyama", 1, {}), ("pc", 2, {"snr": 0.01}), ("ode_euler", 1, {}), ("ode_heun", 2, {}),
    ("edm_heun", 2, {}), ("edm_heun", 2, {"s_churn": 5.0}), ("dpmpp_2m", 1, {}), ("dpmpp_3m", 1, {})])
def test_every_sampler_approaches_the_noise_floor(mixture, name, evals_per_step, options):
    """More evaluations -> closer to the true mixture; at 100 evaluations within a few noise floors."""
    gm, sch, x1, ref, floor = mixture
    den = gm.denoiser(sch)
    dist = {}
    for nfe in (10, 100):
        grid = time_grid(sch, max(nfe // evals_per_step, 1), "trailing")
        y = SAMPLERS[name](den, x1.clone(), grid, schedule=sch, space=SPACE,
                           generator=torch.Generator().manual_seed(5), **options)
        dist[nfe] = energy_distance(y, ref)
    assert dist[100] < dist[10] or dist[100] < 2 * floor, dist
    assert dist[100] < 5 * floor, (dist, floor)


def test_deterministic_samplers_converge_to_the_exact_pf_ode_solution(mixture, exact_flow):
    """Same starting noise: the deterministic solvers approach the tight RK45 solution."""
    gm, sch, x1, _, _ = mixture
    den = gm.denoiser(sch)
    x1, ref = x1[:256], exact_flow[:256]
    for name in ("ddim", "dpmpp_2m", "dpmpp_3m", "edm_heun"):
        errs = [float((SAMPLERS[name](den, x1.clone(), time_grid(sch, n, "logsnr"), schedule=sch, space=SPACE)
                       - ref).norm(dim=1).mean()) for n in (10, 40)]
        assert errs[1] < errs[0] / 3, (name, errs)


def test_jump_grid_first_step_is_exact_when_x0_is_constant():
    """A first-order exponential-integrator step is exact for a constant x0-prediction, so the
    long first step of jump_logsnr_grid costs nothing there: with a point mass at m the
    PF-ODE solution is x_t = alpha_t m + (sigma_t / sigma_1)(x_1 - alpha_1 m) and every
    data-prediction solver reproduces it on any grid."""
    from diffuse.core.sampling.grids import jump_logsnr_grid
    sch = LinearBetaSchedule(num_steps=1000)
    m = torch.tensor([0.7, -1.2], dtype=F64)
    den = lambda x, t: (lambda a, s: Prediction(m.expand_as(x), (x - SPACE.coef(a, x) * m) / SPACE.coef(s, x)))(*sch.alpha_sigma(t))
    grid = jump_logsnr_grid(sch, 6, t_jump=0.7, t_min=0.05, final=None)
    assert len(grid) == 6 and float(grid[0]) == 1.0 and abs(float(grid[1]) - 0.7) < 1e-9
    x1 = torch.randn(8, 2, dtype=F64)
    a1, s1 = sch.alpha_sigma(torch.tensor(1.0, dtype=F64))
    a0, s0 = sch.alpha_sigma(grid[-1])
    for name in ("ddim", "dpmpp_2m", "dpmpp_3m"):
        y = SAMPLERS[name](den, x1.clone(), grid, schedule=sch, space=SPACE)
        torch.testing.assert_close(y, a0 * m + (s0 / s1) * (x1 - a1 * m), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- invariances
def test_same_seed_same_sample_whatever_the_batch():
    sch = LinearBetaSchedule(num_steps=None)
    den = GAUSS.denoiser(sch)
    for name, opts in (("euler_maruyama", {}), ("edm_heun", {"s_churn": 10.0})):
        outs = []
        for b in (4, 2):
            x = torch.stack([torch.randn(2, generator=g, dtype=F64) for g in per_sample_generators(7, b)])
            outs.append(SAMPLERS[name](den, x, time_grid(sch, 8, "logsnr"), schedule=sch, space=SPACE,
                                       generator=per_sample_generators(8, b), **opts))
        torch.testing.assert_close(outs[0][:2], outs[1], rtol=1e-12, atol=1e-12)


def graph_gaussian(space, scale, sch):
    """Exact denoiser for positions ~ N(0, scale^2 P) on the zero-CoM subspace of each graph."""
    def denoise(x, t):
        a, s = sch.alpha_sigma(t)
        x0 = space.coef(a * scale ** 2 / (a ** 2 * scale ** 2 + s ** 2), x) * x
        return Prediction(space.project(x0), space.project((x - space.coef(a, x) * x0) / space.coef(s, x)))
    return denoise


@pytest.mark.parametrize("name,options", [("euler_maruyama", {}), ("pc", {"snr": 0.16}),
                                          ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("edm_heun", {"s_churn": 10.0}), ("rk45", {})])
def test_graph_space_zero_com_samples(name, options):
    """Molecule positions: every sample stays on the zero-CoM subspace and E|x|^2 = dof scale^2."""
    sch, scale = SigmaSchedule(sigma_min=0.002, sigma_max=20.0), 0.8
    counts = torch.tensor([3, 5, 4] * 50)
    space = GraphSpace(torch.repeat_interleave(torch.arange(len(counts)), counts), centred=3)
    x = prior_scale(sch) * space.noise(torch.zeros(int(counts.sum()), 3, dtype=F64), torch.Generator().manual_seed(0))
    y = SAMPLERS[name](graph_gaussian(space, scale, sch), x, time_grid(sch, 100, "karras"), schedule=sch,
                       space=space, generator=torch.Generator().manual_seed(1), **options)
    com = space.graph_mean(y)
    assert com.abs().max() < 1e-10
    ratio = float(space.inner(y, y).sum() / (space.dof(y).sum() * scale ** 2))
    assert abs(ratio - 1) < 0.06, ratio


def test_repeated_grid_times_are_no_ops():
    """Rounded grids (Karras on a discrete chain) can repeat a time: a zero-length step changes
    nothing, so every deterministic sampler gives the result of the de-duplicated grid."""
    sch = LinearBetaSchedule(num_steps=1000)
    den = GAUSS.denoiser(sch)
    x1 = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    grid = time_grid(sch, 8, "logsnr")
    doubled = torch.cat([grid[:3], grid[2:]])
    for name in ("ddim", "ode_euler", "ode_heun", "edm_heun", "dpmpp_2m", "dpmpp_3m"):
        run = lambda g: SAMPLERS[name](den, x1.clone(), g, schedule=sch, space=SPACE)
        torch.testing.assert_close(run(doubled), run(grid), rtol=1e-12, atol=1e-12)


def test_closed_form_pf_ode_map_round_trips_and_is_refused_for_mixtures():
    sch = LinearBetaSchedule()
    x1 = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    mid = GAUSS.pf_ode_solution(x1, sch, 0.3)
    torch.testing.assert_close(GAUSS.pf_ode_solution(mid, sch, 1.0, t_start=0.3), x1, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="single Gaussian"):
        GaussianMixture.random(k=2).pf_ode_solution(x1, sch, 0.3)
