"""Probability-flow ODE likelihood against closed-form densities (Song et al. 2021, sec. 4.3)."""

import math

import pytest
import torch

from diffuse.core import DenseSpace, LinearBetaSchedule, SigmaSchedule
from diffuse.core.process.gaussian import GaussianMixture
from diffuse.core.data.graph import GraphSpace
from diffuse.core.process.likelihood import bits_per_dim, log_likelihood
from diffuse.core.process.parameterization import Prediction
from diffuse.core.process.schedule import SubVPSchedule

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")
SPACE = DenseSpace()


def at(sch, t):
    return sch.alpha_sigma(torch.tensor(float(t), dtype=F64))


@pytest.mark.parametrize("sch", [LinearBetaSchedule(num_steps=None), LinearBetaSchedule(num_steps=1000),
                                 SubVPSchedule(), SigmaSchedule(0.01, 50.0, rho=None)],
                         ids=["vp", "ddpm1000", "subvp", "ve"])
def test_exact_trace_ode_matches_the_mixture_density(sch):
    """log p_{t_min}(x) = log p_1(x_1) + int div: with the exact trace and the exact marginal at
    t = 1 (GaussianMixture.log_prob), the ODE part matches the exact log-density tightly."""
    gm = GaussianMixture.random(k=2, d=2, seed=0)
    x = gm.sample(16, torch.Generator().manual_seed(0))
    out = log_likelihood(gm.denoiser(sch), x, sch, SPACE, rtol=1e-7, atol=1e-7)
    assert out["exact_trace"] and out["nfe"] > 0
    exact = gm.log_prob(x, *at(sch, out["t_min"]))
    via_ode = gm.log_prob(out["x_T"], *at(sch, 1.0)) + out["delta_logp"]
    torch.testing.assert_close(via_ode, exact, rtol=0, atol=2e-5)


def test_nll_with_the_space_prior_for_gaussian_data():
    """Centred near-unit Gaussian data: the prior N(0, I) is the true p_1 up to alpha_1^2 ~ 4e-5,
    so the full NLL equals -log N(x; 0, S) (at t_min ~ 0) within 1e-3 nats."""
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[0.8, 0.1], [0.1, 1.2]]]))
    sch = LinearBetaSchedule(num_steps=None)
    x = gm.sample(16, torch.Generator().manual_seed(1))
    out = log_likelihood(gm.denoiser(sch), x, sch, SPACE, t_min=1e-5, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(-out["nll_nats"], gm.log_prob(x), rtol=0, atol=1e-3)
    torch.testing.assert_close(out["bits_per_dim"], out["nll_nats"] / (2 * math.log(2)))


def test_hutchinson_is_unbiased():
    """Hutchinson's estimate (Rademacher and Gaussian probes) averages to the exact value."""
    gm = GaussianMixture.random(k=2, d=3, seed=2)
    sch = LinearBetaSchedule(num_steps=None)
    x = gm.sample(1, torch.Generator().manual_seed(3)).repeat(200, 1)    # one point, many probes
    exact = float(log_likelihood(gm.denoiser(sch), x[:1], sch, SPACE, exact_trace=True, rtol=1e-6, atol=1e-6)["nll_nats"])
    for probe in ("rademacher", "gaussian"):
        est = log_likelihood(gm.denoiser(sch), x, sch, SPACE, exact_trace=False, probe=probe, rtol=1e-5, atol=1e-5,
                             generator=torch.Generator().manual_seed(4))["nll_nats"]
        assert est.unique().numel() > 2, "each sample gets its own probe"
        assert abs(float(est.mean()) - exact) < 4 * float(est.std()) / math.sqrt(len(est)) + 1e-3


def test_bits_per_dim_offset():
    """8-bit data on [-1, 1]: bits/dim = nll / (D ln 2) + log2(256 / 2) = ... + 7."""
    nll = torch.tensor([100.0, 0.0], dtype=F64)
    dof = torch.tensor([10.0, 10.0], dtype=F64)
    torch.testing.assert_close(bits_per_dim(nll, dof, bins=256), nll / (10 * math.log(2)) + 7.0)


def test_graph_likelihood_on_the_zero_com_subspace():
    """Positions ~ N(0, c^2 P) per molecule: nats per molecule = -log N on the (N-1)*3-dim subspace,
    through the Space's dof (exact trace over every element of the flat batch)."""
    sch, c = SigmaSchedule(sigma_min=0.01, sigma_max=30.0, rho=None), 1.0
    space = GraphSpace(torch.tensor([0, 0, 0, 1, 1]), centred=3)
    x = space.noise(torch.zeros(5, 3, dtype=F64), torch.Generator().manual_seed(5)) * c

    def denoise(xt, t):
        a, s = sch.alpha_sigma(t)
        x0 = space.coef(a * c ** 2 / (a ** 2 * c ** 2 + s ** 2), xt) * xt
        return Prediction(space.project(x0), space.project((xt - space.coef(a, xt) * x0) / space.coef(s, xt)))

    out = log_likelihood(denoise, x, sch, space, rtol=1e-7, atol=1e-7, t_min=0.0)
    var = c ** 2 + float(at(sch, sch.t_min)[1]) ** 2      # t_min=0 asks for the lowest noise level, sigma_min
    dof = space.dof(x)
    assert dof.tolist() == [6.0, 3.0]
    expect_p1 = -0.5 * space.inner(out["x_T"], out["x_T"]) / (c ** 2 + 30.0 ** 2) - 0.5 * dof * math.log(2 * math.pi * (c ** 2 + 30.0 ** 2))
    expect_p0 = -0.5 * space.inner(x, x) / var - 0.5 * dof * math.log(2 * math.pi * var)
    torch.testing.assert_close(expect_p1 + out["delta_logp"], expect_p0, rtol=0, atol=1e-5)


def test_batch_log_likelihood_through_a_denoiser():
    """The Batch / Denoiser entry point gives the same numbers as the closure form."""
    from torch import nn
    from diffuse.core import Batch, Denoiser
    from diffuse.core.process.parameterization import X0Param
    gm = GaussianMixture.random(k=2, d=2, seed=4)
    sch = LinearBetaSchedule(num_steps=None)

    class X0Oracle(nn.Module):
        def forward(self, x, noise_level, cond=None, space=None):
            a, s = sch.alpha_sigma(noise_level.to(F64) / 1000)
            return gm.denoise_at(x, a, s)[0]

    from diffuse.core.process.likelihood import batch_log_likelihood
    x = gm.sample(8, torch.Generator().manual_seed(0))
    got = batch_log_likelihood(Denoiser(X0Oracle(), sch, X0Param()), Batch(x, SPACE), rtol=1e-6, atol=1e-6)
    ref = log_likelihood(gm.denoiser(sch), x, sch, SPACE, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got["nll_nats"], ref["nll_nats"], rtol=0, atol=1e-3)
