"""SDEs built from schedules: closed-form coefficients and marginals (Song et al. 2021)."""

import math

import pytest
import torch

from diffuse.core import DenseSpace, LinearBetaSchedule, SigmaSchedule, make_schedule
from diffuse.core.data.graph import GraphSpace
from diffuse.core.process.sde import SDE, make_sde, sde_coefficients
from diffuse.core.process.schedule import SubVPSchedule

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")
T = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=F64)


def test_vp_coefficients_are_song_beta():
    """Continuous VP: f = -beta(t)/2, g^2 = beta(t), beta(t) = 0.1 + 19.9 t (eq. 32)."""
    f, g2 = sde_coefficients(LinearBetaSchedule(num_steps=None), T)
    beta = 0.1 + 19.9 * T
    torch.testing.assert_close(f, -0.5 * beta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g2, beta, rtol=1e-10, atol=1e-12)


def test_discrete_ddpm_chain_is_the_same_vp_object():
    """The T=1000 chain: alpha_bar at t=n/T is prod(1 - beta_i); between nodes its SDE has
    f = T log(1 - beta_n) / 2 and g^2 = -2 f (VP), close to the continuous VP-SDE."""
    disc, cont = LinearBetaSchedule(num_steps=1000), LinearBetaSchedule(num_steps=None)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    n = torch.tensor([10, 400, 900])
    a, _ = disc.alpha_sigma(n.to(F64) / 1000)
    torch.testing.assert_close(a ** 2, torch.cumprod(1 - betas, 0)[n - 1], rtol=1e-12, atol=0)
    t = (n.to(F64) + 0.5) / 1000                     # mid-interval n -> n+1 uses beta_{n+1}
    f, g2 = sde_coefficients(disc, t)
    torch.testing.assert_close(f, 500 * torch.log1p(-betas[n]), rtol=1e-9, atol=0)
    torch.testing.assert_close(g2, -2 * f, rtol=1e-9, atol=0)
    fc, _ = sde_coefficients(cont, t)
    torch.testing.assert_close(f, fc, rtol=5e-2, atol=0)   # O(1/T) apart


def test_subvp_marginal_and_coefficients():
    """Sub-VP (eq. 34): mean exp(-B/2) x0, std 1 - exp(-B); g^2 = beta (1 - exp(-2B))."""
    sch = make_schedule({"kind": "subvp"})
    assert isinstance(sch, SubVPSchedule)
    B = 0.1 * T + 0.5 * 19.9 * T ** 2
    alpha, sigma = sch.alpha_sigma(T)
    torch.testing.assert_close(alpha, torch.exp(-B / 2), rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma, 1 - torch.exp(-B), rtol=1e-12, atol=0)
    f, g2 = sch.sde_coefficients(T)
    beta = 0.1 + 19.9 * T
    torch.testing.assert_close(g2, beta * (1 - torch.exp(-2 * B)), rtol=1e-12, atol=0)
    # the closed form agrees with the generic rule g^2 = d sigma^2/dt - 2 f sigma^2 (finite differences)
    h = 1e-6
    s_p, s_m = sch.alpha_sigma(T + h)[1], sch.alpha_sigma(T - h)[1]
    dvar = (s_p ** 2 - s_m ** 2) / (2 * h)
    torch.testing.assert_close(g2, dvar - 2 * f * sigma ** 2, rtol=1e-6, atol=1e-8)


def test_ve_geometric_coefficients():
    """VE (eq. 30): f = 0, g^2 = d sigma^2/dt = 2 sigma(t)^2 log(sigma_max / sigma_min)."""
    sde = make_sde("ve", sigma_min=0.01, sigma_max=50.0)
    f, g2 = sde.coefficients(T)
    sigma = 0.01 * (5000.0 ** T)
    torch.testing.assert_close(f, torch.zeros_like(T))
    torch.testing.assert_close(g2, 2 * sigma ** 2 * math.log(5000.0), rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_forward_sde_simulation_has_the_schedule_marginals(kind):
    """Simulating dx = f x dt + g dW from x0 = 1.5 reproduces mean alpha_t x0 and std sigma_t."""
    sde = make_sde(kind, **({"sigma_max": 5.0} if kind == "ve" else {}))
    space = DenseSpace()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 1.5, dtype=F64)
    alpha0, sigma0 = sde.schedule.alpha_sigma(torch.tensor(0.0, dtype=F64))
    x = alpha0 * x0 + sigma0 * torch.randn(x0.shape, generator=g, dtype=F64)
    steps, t_end = 400, 0.5
    ts = torch.linspace(0, t_end, steps + 1, dtype=F64)
    for t, s in zip(ts[:-1], ts[1:]):
        tm = 0.5 * (t + s)                      # midpoint coefficients
        f, g2 = sde.coefficients(tm)
        x = x + float(f) * x * float(s - t) + math.sqrt(float(g2 * (s - t))) * torch.randn(x.shape, generator=g, dtype=F64)
    mean, std = sde.marginal(x0[:1], torch.tensor(t_end, dtype=F64), space)
    se = float(std) / math.sqrt(x.shape[0])
    assert abs(float(x.mean()) - float(mean)) < 4 * se + 1e-3
    assert abs(float(x.std()) / float(std) - 1) < 0.03


def test_prior_logp_through_dense_and_graph_spaces():
    """Dense: the isotropic Gaussian density. Graph: the Gaussian on the zero-CoM subspace,
    with dof = (N - 1) * 3 + N * F (computed here in an orthonormal basis of the subspace)."""
    sde = make_sde("ve", sigma_max=3.0)
    s = sde.prior_std()
    x = torch.randn(5, 4, dtype=F64)
    expect = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(s, dtype=F64)).log_prob(x).sum(1)
    torch.testing.assert_close(sde.prior_logp(x, DenseSpace()), expect, rtol=1e-12, atol=1e-12)

    space = GraphSpace(torch.tensor([0, 0, 0, 1, 1]), centred=3)
    xg = space.project(torch.randn(5, 4, dtype=F64))   # 3 coordinates + 1 feature per node
    assert space.dof(xg).tolist() == [2 * 3 + 3, 1 * 3 + 2]
    got = sde.prior_logp(xg, space)
    for gi, n in ((0, 3), (1, 2)):
        pts = xg[space.batch == gi]
        # orthonormal basis of {sum of positions = 0}: the last n-1 columns of a QR of [1, I]
        q, _ = torch.linalg.qr(torch.cat([torch.ones(n, 1, dtype=F64), torch.eye(n, dtype=F64)], 1))
        coords = torch.cat([(q[:, 1:n].T @ pts[:, :3]).reshape(-1), pts[:, 3]])
        assert coords.numel() == int(space.dof(xg)[gi])
        expect = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), torch.tensor(s, dtype=F64)).log_prob(coords).sum()
        torch.testing.assert_close(got[gi], expect, rtol=1e-10, atol=1e-10)


def test_probability_flow_ode_transports_gaussian_marginals():
    """For data N(0, c^2) the PF-ODE is linear: x(t) = sqrt(v(t) / v(1)) x(1),
    v(t) = alpha_t^2 c^2 + sigma_t^2; the reverse SDE has drift f x - g^2 s and g = sqrt(g^2)."""
    sde, space, c = make_sde("vp"), DenseSpace(), 0.7

    def score(x, t):
        a, s = sde.schedule.alpha_sigma(t)
        return -x / space.coef(a ** 2 * c ** 2 + s ** 2, x)

    ode = sde.reverse(score, probability_flow=True)
    x1 = torch.linspace(-2, 2, 7, dtype=F64)[:, None]
    x = x1.clone()
    ts = torch.linspace(1.0, 0.05, 2001, dtype=F64)
    for t, s in zip(ts[:-1], ts[1:]):          # Heun in t
        d1, g = ode(x, t, space)
        d2, _ = ode(x + (s - t) * d1, s, space)
        x = x + 0.5 * (s - t) * (d1 + d2)
        assert float(g) == 0.0
    v = lambda t: (lambda a, s: a ** 2 * c ** 2 + s ** 2)(*sde.schedule.alpha_sigma(torch.tensor(t, dtype=F64)))
    torch.testing.assert_close(x, torch.sqrt(v(0.05) / v(1.0)) * x1, rtol=1e-6, atol=1e-8)
    rev = sde.reverse(score)
    drift, g = rev(x1, torch.tensor(0.5, dtype=F64), space)
    f, g2 = sde.coefficients(torch.tensor(0.5, dtype=F64))
    torch.testing.assert_close(drift, f * x1 - g2 * score(x1, torch.full((7,), 0.5, dtype=F64)))
    torch.testing.assert_close(g, torch.sqrt(g2))
