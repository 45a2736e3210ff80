"""EDM preconditioning (Karras et al. 2022, table 1, eqs. 7-8) as a parameterization of the one
Denoiser, and the training modes."""

import math

import pytest
import torch
from torch import nn

from diffuse.core import DenseSpace, Denoiser, LinearBetaSchedule, SigmaSchedule
from diffuse.core.config import DiffusionConfig
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.process.timesteps import lognormal_t
from diffuse.core.process.loss import DiffusionLoss
from diffuse.core.process.parameterization import EDMParam, edm_scalings, edm_weight


def EDMPrecond(backbone, schedule, sigma_data=0.5):
    """The former EDM wrapper: now the one Denoiser with the EDM parameterization."""
    return Denoiser(backbone, schedule, EDMParam(sigma_data))


def EDMLoss(sigma_data=0.5):
    """The former EDM loss: now the one loss, uniform weighting, EDM parameterization."""
    return DiffusionLoss(EDMParam(sigma_data), "uniform")

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = DenseSpace()


class Zero(nn.Module):
    def forward(self, x, noise_level, cond=None, space=None):
        return torch.zeros_like(x)


class Const(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, noise_level, cond=None, space=None):
        return self.value.expand_as(x)


@pytest.mark.parametrize("sch", [SigmaSchedule(), LinearBetaSchedule(num_steps=1000)], ids=["ve", "vp"])
def test_zero_network_returns_c_skip_x(sch):
    """F = 0: D(x) = c_skip * x~ with x~ = x / alpha (= x for VE), and eps consistent with it."""
    t = torch.tensor([0.02, 0.3, 0.7, 1.0], dtype=F64)
    x = torch.randn(4, 3, 2, dtype=F64)
    pred = EDMPrecond(Zero(), sch, sigma_data=0.5)(x, t, space=SPACE)
    alpha, sigma = sch.alpha_sigma(t)
    c_skip = 0.25 / ((sigma / alpha) ** 2 + 0.25)
    torch.testing.assert_close(pred.x0, SPACE.coef(c_skip / alpha, x) * x)
    torch.testing.assert_close(SPACE.coef(alpha, x) * pred.x0 + SPACE.coef(sigma, x) * pred.eps, x)


def test_scalings_give_unit_variance_input_and_target():
    """EDM's design rule (appendix B.6): for data of std sigma_data, Var(c_in x~) = 1 and the
    training target of F has unit variance; lambda(sigma) c_out^2 = 1."""
    sd = 0.5
    sig = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=F64)
    c_skip, c_out, c_in, c_noise = edm_scalings(sig, sd)
    torch.testing.assert_close(c_in ** 2 * (sd ** 2 + sig ** 2), torch.ones_like(sig))
    # Var((x0 - c_skip (x0 + sig n)) / c_out) = ((1 - c_skip)^2 sd^2 + c_skip^2 sig^2) / c_out^2
    torch.testing.assert_close(((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sig ** 2) / c_out ** 2, torch.ones_like(sig))
    torch.testing.assert_close(edm_weight(sig, sd) * c_out ** 2, torch.ones_like(sig))
    torch.testing.assert_close(c_noise, torch.log(sig) / 4)


def test_edm_loss_is_lambda_weighted_x0_error():
    """EDMLoss on F equals lambda(sigma) |D - x0|^2 computed through the wrapper's prediction."""
    sch = LinearBetaSchedule(num_steps=None)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 4, generator=g, dtype=F64)
    eps = torch.randn(5, 4, generator=g, dtype=F64)
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.9], dtype=F64)
    alpha, sigma = sch.alpha_sigma(t)
    a, s = SPACE.coef(alpha, x0), SPACE.coef(sigma, x0)
    x_t = a * x0 + s * eps
    net = EDMPrecond(Const(torch.randn(4, generator=g, dtype=F64)), sch, sigma_data=0.7)
    out = net.raw(x_t, t, space=SPACE)
    loss = EDMLoss(0.7)(out, x0, eps, a, s, (alpha / sigma) ** 2, SPACE).to(F64)
    d = net(x_t, t, space=SPACE).x0
    expect = SPACE.coef(edm_weight(sigma / alpha, 0.7), d) * (d - x0) ** 2
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)   # the loss computes in float32


def test_lognormal_training_noise_levels():
    """ln(sigma_t / alpha_t) of the sampled times ~ N(P_mean, P_std^2) (within the schedule's range)."""
    sch = SigmaSchedule(sigma_min=1e-4, sigma_max=1e4)
    t = lognormal_t(sch, -1.2, 1.2)(20000, torch.Generator().manual_seed(0))
    a, s = sch.alpha_sigma(t)
    ls = torch.log(s / a)
    assert abs(float(ls.mean()) + 1.2) < 0.05 and abs(float(ls.std()) - 1.2) < 0.05


def test_training_setup_modes():
    base = DiffusionConfig()
    ddpm = Diffusion(base)
    assert ddpm.mode == "ddpm" and isinstance(ddpm.denoiser(Zero()), Denoiser)
    t = ddpm.sample_t(500, torch.Generator().manual_seed(0))
    torch.testing.assert_close(t * 1000, (t * 1000).round())          # the T-step chain's times
    cont = Diffusion({**base.__dict__, "training": "continuous", "t_eps": 1e-3})
    t = cont.sample_t(500, torch.Generator().manual_seed(0))
    assert float(t.min()) >= 1e-3 and float(t.max()) <= 1 and not torch.allclose(t * 1000, (t * 1000).round())
    edm = Diffusion({"schedule": {"kind": "sigma"}, "training": "edm", "sigma_data": 0.5})
    assert isinstance(edm.denoiser(Zero()).param, EDMParam) and edm.loss.weighting_name == "uniform"
    with pytest.raises(ValueError, match="training mode"):
        Diffusion({"training": "nope"})


def test_edm_wrapper_with_oracle_network_is_the_exact_denoiser():
    """F = (D* - c_skip x~) / c_out from the exact mixture denoiser D* gives back D* and, with
    it, the sampler contract (bind)."""
    from diffuse.core.process.gaussian import GaussianMixture
    gm = GaussianMixture.random(k=2, d=2, seed=1)
    sch = SigmaSchedule()

    class Oracle(nn.Module):
        def forward(self, x_in, c_noise, cond=None, space=None):
            sig = torch.exp(4 * c_noise.to(F64))
            c_skip, c_out, c_in, _ = edm_scalings(sig, 0.5)
            xs = x_in / space.coef(c_in, x_in)
            d, _ = gm.denoise_at(xs, torch.ones_like(sig), sig)
            return (d - space.coef(c_skip, xs) * xs) / space.coef(c_out, xs)

    den = EDMPrecond(Oracle(), sch).bind(SPACE)
    x = torch.randn(6, 2, dtype=F64) * 3
    t = torch.full((6,), 0.4, dtype=F64)
    _, sigma = sch.alpha_sigma(t)
    expect, _ = gm.denoise_at(x, torch.ones_like(sigma), sigma)
    torch.testing.assert_close(den(x, t).x0, expect, rtol=1e-4, atol=1e-5)   # c_noise travels in float32


@pytest.mark.parametrize("make", ["ddpm", "edm"])
def test_trained_model_views_run_every_continuous_sampler(make):
    """A discrete-DDPM eps network (conditioned on t * 1000) and an EDM-preconditioned network
    (conditioned on ln(sigma) / 4), both holding the exact mixture answer, give every continuous
    sampler the same samples as the exact denoiser itself (up to the float32 noise input)."""
    from diffuse.core import SAMPLERS, time_grid
    from diffuse.core.process.gaussian import GaussianMixture
    from diffuse.core.process.parameterization import EpsParam
    gm = GaussianMixture.random(k=2, d=2, seed=3)
    sch = LinearBetaSchedule(num_steps=1000)

    class EpsOracle(nn.Module):            # what a perfectly trained DDPM eps-network outputs
        def forward(self, x, noise_level, cond=None, space=None):
            t = noise_level.to(F64) / 1000
            a, s = sch.alpha_sigma(t)
            _, score = gm.denoise_at(x, a, s)
            return -space.coef(s, x) * score

    class FOracle(nn.Module):              # what a perfectly trained EDM F-network outputs
        def forward(self, x_in, c_noise, cond=None, space=None):
            sig = torch.exp(4 * c_noise.to(F64))
            c_skip, c_out, c_in, _ = edm_scalings(sig, 0.5)
            xs = x_in / space.coef(c_in, x_in)
            d, _ = gm.denoise_at(xs, torch.ones_like(sig), sig)
            return (d - space.coef(c_skip, xs) * xs) / space.coef(c_out, xs)

    model = Denoiser(EpsOracle(), sch, EpsParam()) if make == "ddpm" else EDMPrecond(FOracle(), sch)
    den = model.bind(SPACE)
    x1 = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for name in ("ddim", "euler_maruyama", "pc", "ode_heun", "edm_heun", "dpmpp_2m", "dpmpp_3m"):
        grid = time_grid(sch, 12, "logsnr")
        run = lambda d: SAMPLERS[name](d, x1.clone(), grid, schedule=sch, space=SPACE,
                                       generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(run(den), run(gm.denoiser(sch)), rtol=0, atol=2e-3)


@pytest.mark.parametrize("mode", ["ddpm", "continuous", "edm"])
def test_diffusion_config_selects_the_training_mode(mode):
    """DiffusionConfig(training=...) -> Diffusion: the right wrapper, times and a finite loss
    whose gradient reaches the backbone."""
    from diffuse.core import Batch
    from diffuse.core.process.diffusion import Diffusion

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, noise_level, cond=None, space=None):
            return self.lin(torch.cat([x, noise_level[:, None].to(x.dtype)], 1))

    diff = Diffusion(DiffusionConfig(training=mode))
    den = diff.denoiser(Tiny())
    assert isinstance(den, Denoiser) and isinstance(den.param, EDMParam) == (mode == "edm")
    batch = Batch(torch.randn(16, 2), SPACE)
    loss = diff.training_losses(den, batch, torch.Generator().manual_seed(0))
    assert loss.shape == (16,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert den.backbone.lin.weight.grad.abs().sum() > 0
