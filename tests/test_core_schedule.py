"""Schedules against their closed forms (DDPM, iDDPM cosine, EDM-molecules polynomial, Karras sigmas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffuse.core.process.schedule import CosineSchedule, LinearBetaSchedule, PolynomialSchedule, SigmaSchedule
from diffuse.core.process.schedules import make_schedule

F64 = torch.float64
T = 1000
GRID = torch.arange(T + 1, dtype=F64) / T                       # t = n / T, n = 0..T
RAND_T = torch.rand(257, generator=torch.Generator().manual_seed(0), dtype=F64)

VP_SCHEDULES = {
    "linear": LinearBetaSchedule(),
    "linear-cont": LinearBetaSchedule(num_steps=None),
    "cosine": CosineSchedule(),
    "cosine-cont": CosineSchedule(num_steps=None),
    "polynomial": PolynomialSchedule(),
    "polynomial-cont": PolynomialSchedule(num_steps=None),
}
ALL_SCHEDULES = {**VP_SCHEDULES,
                 "sigma-edm": SigmaSchedule(),
                 "sigma-ve": SigmaSchedule(sigma_min=0.01, sigma_max=50.0, rho=None)}


# ---------------------------------------------------------------- linear beta (Ho et al. 2020)
def test_linear_discrete_alpha_bar_is_product_of_one_minus_paper_betas():
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)          # the paper's betas, beta_1 .. beta_T
    alpha_bar = np.concatenate([[1.0], np.cumprod(1.0 - betas)])  # n = 0..T
    alpha, sigma = LinearBetaSchedule().alpha_sigma(GRID)
    assert alpha.dtype == F64 and sigma.dtype == F64
    np.testing.assert_allclose(alpha.numpy() ** 2, alpha_bar, rtol=1e-12, atol=0)
    np.testing.assert_allclose(sigma.numpy() ** 2, 1.0 - alpha_bar, rtol=1e-10, atol=1e-15)


def test_linear_discrete_interpolates_log_alpha_bar_linearly_between_grid_points():
    s = LinearBetaSchedule()
    n = torch.arange(T, dtype=F64)
    mid = s.log_alpha_bar((n + 0.5) / T)
    expected = 0.5 * (s.log_alpha_bar(n / T) + s.log_alpha_bar((n + 1) / T))
    torch.testing.assert_close(mid, expected, rtol=1e-12, atol=1e-15)


def test_linear_continuous_matches_vp_sde_closed_form_and_discrete_chain():
    s = LinearBetaSchedule(num_steps=None)
    b0, b1 = 1e-4 * T, 0.02 * T
    alpha, sigma = s.alpha_sigma(RAND_T)
    alpha_bar = torch.exp(-(b0 * RAND_T + (b1 - b0) * RAND_T ** 2 / 2))
    torch.testing.assert_close(alpha ** 2, alpha_bar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma ** 2, 1 - alpha_bar, rtol=1e-10, atol=1e-15)
    # the T -> infinity limit of the discrete chain: they agree to O(beta^2) per step
    a_disc, _ = LinearBetaSchedule().alpha_sigma(GRID)
    a_cont, _ = s.alpha_sigma(GRID)
    assert float((a_disc - a_cont).abs().max()) < 2e-3
    lab_d, lab_c = LinearBetaSchedule().log_alpha_bar(GRID), s.log_alpha_bar(GRID)
    # the gap is -sum(log(1 - beta) + beta) ~ sum(beta^2) / 2 = 0.067 at t = 1
    assert float((lab_d - lab_c).abs().max()) < 0.08
    # relative gap: ~9 % at n = 1 (beta_1 = 1e-4 vs the integral of beta(t) over [0, 1/T]), < 1 % from t = 0.1
    rel = (lab_d - lab_c).abs() / lab_c.abs().clamp(min=1e-300)
    assert float(rel[T // 10:].max()) < 0.01 and float(rel[1:].max()) < 0.1


# ---------------------------------------------------------------- cosine (Nichol & Dhariwal 2021)
def _cosine_alpha_bar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return f(t) / f(torch.zeros_like(t))


def test_cosine_discrete_matches_formula_before_beta_clipping():
    alpha, _ = CosineSchedule().alpha_sigma(GRID)
    ab = _cosine_alpha_bar(GRID)
    betas = 1 - ab[1:] / ab[:-1]
    unclipped = int((betas < 0.999).sum())                          # only the very last step clips
    assert unclipped == T - 1
    torch.testing.assert_close(alpha[:T] ** 2, ab[:T], rtol=1e-10, atol=0)
    # the last step has beta = 0.999 exactly (as in the paper's clipped chain)
    a2 = alpha ** 2
    assert float(1 - a2[T] / a2[T - 1]) == pytest.approx(0.999, rel=1e-10)


def test_cosine_continuous_matches_formula():
    t = RAND_T * 0.99                                               # away from the floor at t = 1
    alpha, sigma = CosineSchedule(num_steps=None).alpha_sigma(t)
    torch.testing.assert_close(alpha ** 2, _cosine_alpha_bar(t), rtol=1e-12, atol=0)
    assert float(CosineSchedule(num_steps=None).alpha_sigma(1.0)[0]) > 0   # finite log-SNR at t = 1


# ---------------------------------------------------------------- polynomial (Hoogeboom et al. 2022)
def _poly_alpha2(t, s=1e-5, p=2.0):
    return (1 - 2 * s) * (1 - t ** p) ** 2 + s


def test_polynomial_continuous_matches_formula():
    alpha, sigma = PolynomialSchedule(num_steps=None).alpha_sigma(RAND_T)
    torch.testing.assert_close(alpha ** 2, _poly_alpha2(RAND_T), rtol=1e-12, atol=0)
    a0, _ = PolynomialSchedule(num_steps=None).alpha_sigma(0.0)
    a1, _ = PolynomialSchedule(num_steps=None).alpha_sigma(1.0)
    assert float(a0 ** 2) == pytest.approx(1 - 1e-5, rel=1e-12)
    assert float(a1 ** 2) == pytest.approx(1e-5, rel=1e-10)


def test_polynomial_discrete_matches_formula_at_grid_points_before_clipping():
    alpha, _ = PolynomialSchedule().alpha_sigma(GRID)
    # the ratio clip (at 0.001) only acts on the last step, where (1 - t^2)^2 hits 0
    torch.testing.assert_close(alpha[:T] ** 2, _poly_alpha2(GRID[:T]), rtol=1e-10, atol=0)
    # precision s applied once: alpha_T^2 = (1 - 2s) * 0.001 * (1 - ((T-1)/T)^2)^2 + s ~ s
    expected_T = (1 - 2e-5) * 0.001 * (1 - ((T - 1) / T) ** 2) ** 2 + 1e-5
    assert float(alpha[T] ** 2) == pytest.approx(expected_T, rel=1e-10)


# ---------------------------------------------------------------- sigma / EDM (Karras et al. 2022)
def test_sigma_schedule_matches_karras_formula():
    smin, smax, rho = 0.002, 80.0, 7.0
    s = SigmaSchedule(smin, smax, rho)
    alpha0, sigma0 = s.alpha_sigma(0.0)
    alpha1, sigma1 = s.alpha_sigma(1.0)
    # t = 0 is the clean data (EDM's t_N = 0); sigma_min is the formula's low end, at t_min
    assert float(sigma0) == 0.0 and float(sigma1) == pytest.approx(smax, rel=1e-12)
    assert float(s.sigma(s.t_min)) == pytest.approx(smin, rel=1e-7) and 0 < s.t_min < 1e-6
    assert float(alpha0) == 1.0 and float(alpha1) == 1.0
    # Karras eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..N-1,
    # which is this schedule at t = 1 - i / (N - 1) for i < N - 1, and at t_min for i = N - 1
    N = 18
    i = torch.arange(N, dtype=F64)
    karras = (smax ** (1 / rho) + i / (N - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(s.sigma((1 - i / (N - 1)).clamp(min=s.t_min)), karras, rtol=1e-7, atol=0)
    torch.testing.assert_close(s.sigma(1 - i[:-1] / (N - 1)), karras[:-1], rtol=1e-12, atol=0)
    sig = s.sigma(torch.linspace(0, 1, 2001, dtype=F64))
    assert bool((sig[1:] > sig[:-1]).all())
    # a positive noise level maps to a positive time, sigma = 0 to the data
    assert float(s.t_from_sigma_ratio(torch.tensor(smin, dtype=F64))) == s.t_min
    assert float(s.t_from_sigma_ratio(torch.tensor(0.0, dtype=F64))) == 0.0


def test_sigma_schedule_geometric_ve_levels():
    s = SigmaSchedule(0.01, 50.0, rho=None)
    torch.testing.assert_close(s.sigma(RAND_T), 0.01 * (50.0 / 0.01) ** RAND_T, rtol=1e-12, atol=0)
    # log sigma is linear in t
    ls = torch.log(s.sigma(GRID[1:]))       # GRID[0] = 0 is the data (sigma = 0)
    torch.testing.assert_close(ls[1:] - ls[:-1], torch.full((T - 1,), math.log(5000.0) / T, dtype=F64),
                               rtol=1e-9, atol=0)


@pytest.mark.parametrize("sched", [SigmaSchedule(), SigmaSchedule(0.01, 50.0, rho=None)], ids=["edm", "ve"])
def test_sigma_schedule_inverse_noise_level(sched):
    t = RAND_T
    torch.testing.assert_close(sched.t_from_sigma_ratio(sched.sigma(t)), t, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- invariants of every schedule
@pytest.mark.parametrize("name", list(VP_SCHEDULES))
def test_vp_schedules_preserve_variance(name):
    s = VP_SCHEDULES[name]
    assert s.variance_preserving
    for t in (GRID, RAND_T):
        alpha, sigma = s.alpha_sigma(t)
        torch.testing.assert_close(alpha ** 2 + sigma ** 2, torch.ones_like(t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_log_snr_consistent_strictly_decreasing_and_float64(name):
    s = ALL_SCHEDULES[name]
    t = torch.linspace(1e-3, 1 - 1e-3, 4001, dtype=F64)
    lam = s.log_snr(t)
    alpha, sigma = s.alpha_sigma(t)
    assert lam.dtype == F64 and alpha.dtype == F64
    torch.testing.assert_close(lam, torch.log(alpha ** 2 / sigma ** 2), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s.snr(t), alpha ** 2 / sigma ** 2, rtol=1e-12, atol=0)
    assert bool((lam[1:] < lam[:-1]).all())
    # float32 input still gives float64 results
    assert s.alpha_sigma(t.float())[0].dtype == F64


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_t_from_log_snr_inverts_log_snr(name):
    s = ALL_SCHEDULES[name]
    t = 0.005 + 0.99 * RAND_T
    torch.testing.assert_close(s.t_from_log_snr(s.log_snr(t)), t, rtol=0, atol=1e-9)
    # and the EDM noise level sigma / alpha
    alpha, sigma = s.alpha_sigma(t)
    torch.testing.assert_close(s.t_from_sigma_ratio(sigma / alpha), t, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", list(ALL_SCHEDULES))
def test_config_round_trip(name):
    s = ALL_SCHEDULES[name]
    s2 = make_schedule(s.config())
    assert type(s2) is type(s) and s2.config() == s.config()
    torch.testing.assert_close(s2.alpha_sigma(RAND_T), s.alpha_sigma(RAND_T), rtol=0, atol=0)


def test_discrete_training_times_are_on_the_grid():
    s = LinearBetaSchedule()
    t = s.sample_t(5000, generator=torch.Generator().manual_seed(0))
    n = t * T
    torch.testing.assert_close(n, n.round(), rtol=0, atol=1e-9)
    assert int(n.min()) >= 1 and int(n.max()) <= T
    assert s.t_min == 1 / T


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("nope")
    with pytest.raises(ValueError):
        LinearBetaSchedule(beta_start=0.0)
    with pytest.raises(ValueError):
        SigmaSchedule(sigma_min=1.0, sigma_max=0.5)
