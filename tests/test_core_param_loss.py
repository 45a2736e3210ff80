"""Parameterizations (eps / x0 / v) and losses (DDPM simple, min-SNR-gamma) against exact identities."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from diffuse.core.process.gaussian import GaussianMixture
from diffuse.core.process.loss import DiffusionLoss, make_weighting
from diffuse.core.process.parameterization import (EDMParam, EpsParam, Parameterization, Prediction, VParam, X0Param,
                                                   edm_scalings, make_parameterization)
from diffuse.core.process.schedule import LinearBetaSchedule
from diffuse.core.data.space import DenseSpace

F64 = torch.float64
PARAMS = [EpsParam(), X0Param(), VParam(), EDMParam(0.5)]
IDS = [p.name for p in PARAMS]


def _problem(seed: int, vp: bool, shape=(64, 3, 5)):
    """Random x0, eps and per-sample (alpha, sigma), VP or arbitrary (VE-like, scaled...)."""
    g = torch.Generator().manual_seed(seed)
    B = shape[0]
    x0 = torch.randn(shape, generator=g, dtype=F64)
    eps = torch.randn(shape, generator=g, dtype=F64)
    if vp:
        lam = torch.empty(B, dtype=F64).uniform_(-8, 8, generator=g)      # log-SNR
        alpha, sigma = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
    else:
        alpha = torch.exp(torch.empty(B, dtype=F64).uniform_(-3, 1, generator=g))
        sigma = torch.exp(torch.empty(B, dtype=F64).uniform_(-4, 4.4, generator=g))
        alpha[: B // 4] = 1.0                                             # VE: alpha = 1
    space = DenseSpace()
    return x0, eps, space.expand(alpha, x0), space.expand(sigma, x0), alpha, sigma


@pytest.mark.parametrize("vp", [True, False], ids=["vp", "non-vp"])
@pytest.mark.parametrize("param", PARAMS, ids=IDS)
def test_conversions_round_trip(param, vp):
    x0, eps, a, s, _, _ = _problem(0, vp)
    x_t = a * x0 + s * eps
    out = param.target(x0, eps, a, s)
    pred = param.to_prediction(out, x_t, a, s)
    # float64 round trip to 1e-12, relative to the scale of the quantities being cancelled
    # (recovering x0 from eps at sigma / alpha = 1e3 loses three digits, whatever the code does)
    assert float(((pred.x0 - x0).abs() / (1 + s / a)).max()) < 1e-12
    assert float(((pred.eps - eps).abs() / (1 + a / s)).max()) < 1e-12
    # and back: the network output that gives this prediction
    back = param.from_prediction(pred, x_t, a, s)
    assert float(((back - out).abs() / (1 + a + s)).max()) < 1e-12


def test_targets_are_the_papers_definitions():
    x0, eps, a, s, _, _ = _problem(1, vp=True)
    torch.testing.assert_close(EpsParam().target(x0, eps, a, s), eps, rtol=0, atol=0)
    torch.testing.assert_close(X0Param().target(x0, eps, a, s), x0, rtol=0, atol=0)
    torch.testing.assert_close(VParam().target(x0, eps, a, s), a * eps - s * x0, rtol=0, atol=0)  # Salimans & Ho
    # v-prediction in VP: x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    torch.testing.assert_close(a * x_t - s * v, x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s * x_t + a * v, eps, rtol=1e-12, atol=1e-12)
    assert make_parameterization("v").name == "v"
    with pytest.raises(ValueError, match="unknown parameterization"):
        make_parameterization("score")


def _torch_mixture(gm: GaussianMixture, alpha: float, sigma: float) -> MixtureSameFamily:
    cov = alpha ** 2 * gm.covs + sigma ** 2 * torch.eye(gm.D, dtype=F64)
    return MixtureSameFamily(Categorical(probs=gm.weights), MultivariateNormal(alpha * gm.means, cov))


@pytest.mark.parametrize("t", [0.02, 0.1, 0.3, 0.6, 0.95])
def test_score_from_eps_equals_exact_mixture_score(t):
    """``-eps_hat / sigma`` from the exact E[x0 | x_t] equals grad log p_t, by autograd of the
    closed-form density (torch.distributions, an independent implementation)."""
    gm = GaussianMixture.random(k=3, d=2, seed=4)
    sched = LinearBetaSchedule()
    alpha, sigma = (float(v) for v in sched.alpha_sigma(torch.tensor(t, dtype=F64)))
    g = torch.Generator().manual_seed(5)
    x_t = alpha * gm.sample(200, g) + sigma * torch.randn(200, 2, generator=g, dtype=F64)
    x_t.requires_grad_(True)
    dist = _torch_mixture(gm, alpha, sigma)
    score, = torch.autograd.grad(dist.log_prob(x_t).sum(), x_t)
    x_t = x_t.detach()
    torch.testing.assert_close(gm.log_prob(x_t, alpha, sigma), dist.log_prob(x_t), rtol=1e-10, atol=1e-10)
    # the exact denoiser's x0 view -> eps via the x0 parameterization -> score = -eps / sigma
    pred = gm.denoiser(sched)(x_t, torch.full((200,), t, dtype=F64))
    eps = X0Param().to_prediction(pred.x0, x_t, alpha, sigma).eps
    torch.testing.assert_close(-eps / sigma, score, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(-pred.eps / sigma, score, rtol=1e-8, atol=1e-8)
    # all views of the prediction are consistent: x_t = alpha x0_hat + sigma eps_hat
    torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, x_t, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------- losses
def _predictions(seed: int, vp: bool = True):
    """A VP (or general) problem and a (wrong) prediction expressed in each parameterization's output."""
    x0, eps, a, s, alpha, sigma = _problem(seed, vp=vp, shape=(32, 4, 6))
    x_t = a * x0 + s * eps
    x0_hat = x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 100), dtype=F64)
    pred = Prediction(x0_hat, (x_t - a * x0_hat) / s)
    snr = (alpha / sigma) ** 2
    return x0, eps, a, s, snr, pred, x_t


@pytest.mark.parametrize("param", PARAMS, ids=IDS)
def test_uniform_loss_is_unreduced_squared_error_on_the_target(param):
    x0, eps, a, s, snr, pred, x_t = _predictions(2)
    space = DenseSpace()
    out = param.from_prediction(pred, x_t, a, s)
    loss = DiffusionLoss(param, "uniform")(out, x0, eps, a, s, snr, space)
    assert loss.shape == x0.shape and loss.dtype == F64
    torch.testing.assert_close(loss, (out - param.target(x0, eps, a, s)) ** 2, rtol=1e-12, atol=0)
    per_sample = space.reduce(loss)
    assert per_sample.shape == (x0.shape[0],)
    torch.testing.assert_close(per_sample, loss.reshape(x0.shape[0], -1).mean(1))
    if param.name == "eps":  # DDPM's L_simple: |eps - eps_theta|^2
        torch.testing.assert_close(loss, (pred.eps - eps) ** 2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("vp", [True, False], ids=["vp", "general"])
@pytest.mark.parametrize("param", PARAMS, ids=IDS)
def test_native_error_is_x0_error_times_factor(param, vp):
    x0, eps, a, s, snr, pred, x_t = _predictions(3, vp)
    out = param.from_prediction(pred, x_t, a, s)
    native = (out - param.target(x0, eps, a, s)) ** 2
    x0_err = (pred.x0 - x0) ** 2
    factor = param.x0_mse_factor(DenseSpace().coef(snr, native), a * a + s * s)
    torch.testing.assert_close(native, factor * x0_err, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("vp", [True, False], ids=["vp", "general"])
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_loss_is_min_snr_gamma_times_x0_error_for_every_parameterization(gamma, vp):
    x0, eps, a, s, snr, pred, x_t = _predictions(4, vp)
    space = DenseSpace()
    expected = space.coef(snr.clamp(max=gamma), x0) * (pred.x0 - x0) ** 2
    assert bool((snr > gamma).any() and (snr < gamma).any())       # both sides of the clamp are exercised
    losses = []
    for param in PARAMS:
        out = param.from_prediction(pred, x_t, a, s)
        loss = DiffusionLoss(param, "min_snr", gamma=gamma)(out, x0, eps, a, s, snr, space)
        torch.testing.assert_close(loss, expected, rtol=1e-9, atol=1e-12)
        losses.append(space.reduce(loss))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(losses[2], losses[1], rtol=1e-9, atol=1e-12)


def test_loss_keeps_float32_for_float32_and_low_precision_outputs():
    x0, eps, a, s, snr, pred, x_t = _predictions(5)
    f32 = [v.float() for v in (x0, eps, a, s)]
    loss = DiffusionLoss(EpsParam())(pred.eps.bfloat16(), *f32, snr, DenseSpace())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, (pred.eps.bfloat16().float() - eps.float()) ** 2)


def test_unknown_weighting_raises():
    with pytest.raises(ValueError, match="unknown loss weighting"):
        make_weighting("edm2")


# ------------------------------------------------------------------ one denoiser: the scalings
def _old_closed_form(name, out, x_t, a, s):
    """The pre-scalings closed forms: eps / x0 / v conversions and EDM's wrapper on x~ = x_t / alpha."""
    if name == "eps":
        return (x_t - s * out) / a, out
    if name == "x0":
        return out, (x_t - a * out) / s
    if name == "v":
        n = a * a + s * s
        return (a * x_t - s * out) / n, (s * x_t + a * out) / n
    c_skip, c_out, _, _ = edm_scalings(s / a, 0.5)
    x0 = c_skip * (x_t / a) + c_out * out
    return x0, (x_t - a * x0) / s


@pytest.mark.parametrize("vp", [True, False], ids=["vp", "non-vp"])
@pytest.mark.parametrize("param", PARAMS, ids=IDS)
def test_scalings_give_the_closed_forms(param, vp):
    """x0 = c_skip x_t + c_out F and eps = e_skip x_t + e_out F equal each parameterization's
    closed form; the generic target (x0 - c_skip x_t) / c_out equals the closed-form target."""
    x0, eps, a, s, alpha, sigma = _problem(6, vp)
    x_t = a * x0 + s * eps
    out = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    sc = param.scalings(a, s)
    want_x0, want_eps = _old_closed_form(param.name, out, x_t, a, s)
    scale = 1 + (x_t.abs() + out.abs()) * (1 + s / a + a / s)
    assert float(((sc.c_skip * x_t + sc.c_out * out - want_x0).abs() / scale).max()) < 1e-13
    assert float(((sc.e_skip * x_t + sc.e_out * out - want_eps).abs() / scale).max()) < 1e-13
    generic = Parameterization.target(param, x0, eps, a, s)
    direct = (x0 - sc.c_skip * x_t) / sc.c_out
    torch.testing.assert_close(generic, param.target(x0, eps, a, s), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(generic, direct, rtol=1e-6, atol=1e-6)     # direct form cancels digits
    torch.testing.assert_close(1 / sc.c_out ** 2, param.x0_mse_factor(a ** 2 / s ** 2, a * a + s * s), rtol=1e-10, atol=0)


def test_time_scaling_is_owned_by_the_parameterization():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    a, s = torch.tensor([1.0, 0.8, 0.1], dtype=F64), torch.tensor([0.1, 0.6, 1.0], dtype=F64)
    for name in ("eps", "x0", "v"):
        sc = make_parameterization(name, time_scale=1000.0).scalings(a, s, t)
        torch.testing.assert_close(sc.c_noise, t * 1000)
        torch.testing.assert_close(sc.c_in, torch.ones_like(a), rtol=0, atol=0)
    sc = make_parameterization("edm", sigma_data=0.5).scalings(a, s, t)
    c_skip, c_out, c_in, c_noise = edm_scalings(s / a, 0.5)
    torch.testing.assert_close(sc.c_noise, c_noise)
    torch.testing.assert_close(sc.c_in, c_in / a)
    eps = EpsParam().scalings(a, s)
    assert torch.equal(eps.e_skip, torch.zeros_like(a)) and torch.equal(eps.e_out, torch.ones_like(a))


@pytest.mark.parametrize("param", PARAMS, ids=IDS)
def test_one_denoiser_applies_the_scalings(param):
    """The Denoiser with any backbone equals the closed forms evaluated on that backbone's output
    at input c_in x_t and noise input c_noise."""
    from torch import nn
    from diffuse.core import Denoiser, LinearBetaSchedule

    seen = {}

    class Net(nn.Module):
        def forward(self, x, noise_level, cond=None, space=None):
            seen["x"], seen["noise"] = x, noise_level
            return torch.tanh(x) + noise_level[:, None].to(x.dtype) * 1e-3

    sch = LinearBetaSchedule(num_steps=None)
    den = Denoiser(Net(), sch, param)
    t = torch.tensor([0.01, 0.3, 0.6, 0.95], dtype=F64)
    x_t = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(8))
    pred = den(x_t, t, space=DenseSpace())
    alpha, sigma = sch.alpha_sigma(t)
    a, s = alpha[:, None], sigma[:, None]
    sc = param.scalings(alpha, sigma, t)
    torch.testing.assert_close(seen["x"], sc.c_in[:, None] * x_t)
    torch.testing.assert_close(seen["noise"], sc.c_noise.float())
    out = Net()(sc.c_in[:, None] * x_t, sc.c_noise.float())
    want_x0, want_eps = _old_closed_form(param.name, out, x_t, a, s)
    torch.testing.assert_close(pred.x0, want_x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pred.eps, want_eps, rtol=1e-10, atol=1e-10)
