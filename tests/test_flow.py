"""Flow matching / rectified flow in the core: paths, velocity, time sampling, shift, samplers,
likelihood, training and reflow, checked against closed forms and symmetries."""

from __future__ import annotations

import math

import pytest
import torch

from diffuse.core import SAMPLERS, DenseSpace, LinearBetaSchedule, time_grid
from diffuse.core.config import DiffusionConfig
from diffuse.core.errors import ConfigError
from diffuse.core.process.presets import resolve
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.process.timesteps import logit_normal_density, logit_normal_t, mode_density, mode_t
from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.process.parameterization import FlowParam, Prediction, VParam
from diffuse.core.process.schedules import make_schedule
from diffuse.core.process.paths import FlowSchedule, shift_time

F64 = torch.float64
SPACE = DenseSpace()


def gm2():
    return GaussianMixture.random(3, 2, seed=0)


# ----------------------------------------------------------------------------- path and shift
def test_linear_path_is_the_interpolant_with_exact_ends():
    sch = FlowSchedule()
    t = torch.linspace(0, 1, 11, dtype=F64)
    a, s = sch.alpha_sigma(t)
    assert torch.equal(a, 1 - t) and torch.equal(s, t)
    assert float(a[-1]) == 0.0 and float(s[0]) == 0.0
    assert float(sch.log_snr(torch.tensor(1.0, dtype=F64))) == -math.inf
    c = FlowSchedule(path="cosine")
    a, s = c.alpha_sigma(t)
    assert torch.allclose(a, torch.cos(math.pi * t / 2)) and torch.allclose(s, torch.sin(math.pi * t / 2))
    assert float(a[-1]) == 0.0 and float(s[0]) == 0.0
    # t_from_log_snr inverts alpha_sigma (away from the ends), for both paths and a shift
    for sch in (FlowSchedule(), c, FlowSchedule(shift=3.0), FlowSchedule("cosine", shift=0.5)):
        tt = torch.linspace(0.01, 0.99, 50, dtype=F64)
        assert torch.allclose(sch.t_from_log_snr(sch.log_snr(tt)), tt, atol=1e-10)
    # the closed-form SDE coefficients agree with autograd through alpha_sigma inside (0, 1)
    from diffuse.core.process.sde import sde_coefficients
    for sch in (FlowSchedule(), FlowSchedule("cosine", shift=3.0)):
        tt = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
        f, g2 = sch.sde_coefficients(tt)
        sch.sde_coefficients, closed = None, sch.sde_coefficients    # hide it: autograd path
        f_ag, g2_ag = sde_coefficients(sch, tt)
        sch.sde_coefficients = closed
        assert torch.allclose(f, f_ag) and torch.allclose(g2, g2_ag)
        assert float(sch.sde_coefficients(torch.tensor(1.0, dtype=F64))[0]) == -math.inf
    assert make_schedule({"kind": "flow", "path": "cosine", "shift": 2.0}).config() == \
        {"kind": "flow", "path": "cosine", "shift": 2.0}


def test_shift_maps_t_as_specified_in_one_place():
    t = torch.linspace(0, 1, 101, dtype=F64)
    for s in (0.5, 1.0, 3.0):
        expect = s * t / (1 + (s - 1) * t)
        assert torch.allclose(shift_time(t, s), expect, atol=0)
        sch = FlowSchedule(shift=s)
        a, sig = sch.alpha_sigma(t)
        assert torch.allclose(sig, expect) and torch.allclose(a, 1 - expect)
    assert float(shift_time(torch.tensor(0.5), 3.0)) == pytest.approx(0.75)
    # the grid is uniform in the clock t whatever the shift: the shift acts once, in the schedule
    g1, g3 = time_grid(FlowSchedule(), 4, "uniform"), time_grid(FlowSchedule(shift=3.0), 4, "uniform")
    assert torch.equal(g1, g3) and torch.allclose(g1, torch.tensor([1, 0.75, 0.5, 0.25, 0], dtype=F64))
    # and the network sees the path time (shifted), not the clock
    p = FlowParam()
    sch = FlowSchedule(shift=3.0)
    a, sig = sch.alpha_sigma(torch.tensor([0.5], dtype=F64))
    assert float(p.scalings(a, sig, torch.tensor([0.5], dtype=F64)).c_noise) == pytest.approx(750.0)


# ----------------------------------------------------------------------------- velocity parameterization
@pytest.mark.parametrize("path", ["linear", "cosine"])
def test_velocity_conversions_match_closed_forms(path):
    g = torch.Generator().manual_seed(0)
    sch = FlowSchedule(path)
    p = FlowParam(path=path)
    t = torch.tensor([0.0, 1e-6, 0.3, 0.5, 0.9, 1 - 1e-6, 1.0], dtype=F64)
    a, s = sch.alpha_sigma(t)
    x0 = torch.randn(7, 3, generator=g, dtype=F64)
    eps = torch.randn(7, 3, generator=g, dtype=F64)
    x = a[:, None] * x0 + s[:, None] * eps
    v = p.target(x0, eps, a[:, None], s[:, None])
    if path == "linear":
        assert torch.allclose(v, eps - x0)
    else:  # pi/2 times Salimans & Ho's v on the same (VP) point
        assert torch.allclose(v, 0.5 * math.pi * VParam().target(x0, eps, a[:, None], s[:, None]))
    # closed form and the preconditioning route (c_skip, c_out, e_skip, e_out) both invert exactly, at the ends too
    pred = p.to_prediction(v, x, a[:, None], s[:, None])
    sc = p.scalings(a, s, t)
    x0_sc = sc.c_skip[:, None] * x + sc.c_out[:, None] * v
    eps_sc = sc.e_skip[:, None] * x + sc.e_out[:, None] * v
    for got in (pred.x0, x0_sc):
        assert torch.isfinite(got).all() and torch.allclose(got, x0, atol=1e-12)
    for got in (pred.eps, eps_sc):
        assert torch.isfinite(got).all() and torch.allclose(got, eps, atol=1e-12)
    assert torch.allclose(p.from_prediction(Prediction(x0, eps), x, a[:, None], s[:, None]), v, atol=1e-12)
    # 1 / c_out^2 is the x0-MSE factor the weightings use
    mid = slice(2, 5)
    snr, norm = (a[mid] / s[mid]) ** 2, a[mid] ** 2 + s[mid] ** 2
    assert torch.allclose(p.x0_mse_factor(snr, norm), 1 / sc.c_out[mid] ** 2)


def test_exact_velocity_of_the_mixture_and_its_score():
    gm = gm2()
    g = torch.Generator().manual_seed(1)
    sch = FlowSchedule()
    p = FlowParam()
    x = 2 * torch.randn(64, 2, generator=g, dtype=F64)
    for tau in (0.0, 0.2, 0.7, 1.0):
        tt = torch.full((64,), tau, dtype=F64)
        v = gm.velocity(x, tt)
        pred = gm.denoiser(sch)(x, tt)
        assert torch.isfinite(v).all()
        assert torch.allclose(v, pred.eps - pred.x0, atol=1e-10)
        a, s = sch.alpha_sigma(tt)
        back = p.to_prediction(v, x, a[:, None], s[:, None])
        assert torch.allclose(back.x0, pred.x0, atol=1e-10)
        if 0 < tau:  # score = -eps / sigma = -(x + (1 - t) v) / t, against the mixture's closed form
            _, score = gm.denoise_at(x, a, s)
            assert torch.allclose(-(x + (1 - tau) * v) / tau, score, atol=1e-9)
    # the path derivative: the velocity is d/dtau of E[x_tau]-style transport: finite differences
    # of the marginal's mean along the flow match E[v] (mass conservation of the mean)
    n = 20000
    x0, eps = gm.sample(n, generator=g), torch.randn(n, 2, generator=g, dtype=F64)
    tau = 0.4
    xt = (1 - tau) * x0 + tau * eps
    assert torch.allclose(gm.velocity(xt, tau).mean(0), (eps - x0).mean(0), atol=0.05)


def test_euler_on_the_exact_velocity_reproduces_the_mixture():
    gm = gm2()
    g = torch.Generator().manual_seed(2)
    n, steps = 6000, 200
    x = torch.randn(n, 2, generator=g, dtype=F64)
    taus = torch.linspace(1, 0, steps + 1, dtype=F64)
    for t, s in zip(taus[:-1], taus[1:]):
        x = x + float(s - t) * gm.velocity(x, float(t))
    comp = gm.class_log_prob(x, torch.ones(n, dtype=F64), torch.zeros(n, dtype=F64)).argmax(1)
    for k in range(gm.K):
        sel = x[comp == k]
        assert abs(len(sel) / n - float(gm.weights[k])) < 0.02
        assert torch.allclose(sel.mean(0), gm.means[k], atol=0.1)
        assert torch.allclose(torch.cov(sel.T), gm.covs[k], atol=0.1)


# ----------------------------------------------------------------------------- time sampling
def test_logit_normal_time_sampling_matches_its_density():
    from scipy import stats

    for loc, scale in ((0.0, 1.0), (0.5, 0.6)):
        t = logit_normal_t(loc, scale)(20000, generator=torch.Generator().manual_seed(3))
        assert ((t > 0) & (t < 1)).all()
        cdf = lambda u: stats.norm.cdf((torch.logit(torch.as_tensor(u, dtype=F64)).numpy() - loc) / scale)
        assert stats.kstest(t.numpy(), cdf).pvalue > 1e-3
        grid = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=F64)
        assert float(torch.trapezoid(logit_normal_density(grid, loc, scale), grid)) == pytest.approx(1.0, abs=1e-3)
        hist = torch.histc(t, bins=10, min=0, max=1) / (len(t) * 0.1)
        mids = torch.arange(10, dtype=F64) / 10 + 0.05
        assert torch.allclose(hist.to(F64), logit_normal_density(mids, loc, scale), atol=0.08)


def test_mode_time_sampling_matches_its_density():
    t = mode_t(1.29)(20000, generator=torch.Generator().manual_seed(4))
    assert (t >= 0).all() and (t <= 1).all()
    edges = torch.linspace(0, 1, 11, dtype=F64)
    hist = torch.histc(t, bins=10, min=0, max=1) / (len(t) * 0.1)
    fine = torch.linspace(0, 1, 2001, dtype=F64)
    dens = mode_density(fine[1:-1], 1.29)
    assert float(torch.trapezoid(dens, fine[1:-1])) == pytest.approx(1.0, abs=2e-3)
    for i in range(10):
        sel = (fine[1:-1] >= edges[i]) & (fine[1:-1] < edges[i + 1])
        assert float(hist[i]) == pytest.approx(float(dens[sel].mean()), abs=0.06)
    t0 = mode_t(0.0)(20000, generator=torch.Generator().manual_seed(4))   # scale 0: uniform
    assert abs(float(t0.mean()) - 0.5) < 0.01
    with pytest.raises(ValueError, match="mode_scale"):
        mode_t(5.0)


# ----------------------------------------------------------------------------- samplers
def test_flow_euler_is_ddim_and_dpm_solver_runs_on_flow_models():
    gm = gm2()
    sch = FlowSchedule()
    den = gm.denoiser(sch)
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(3000, 2, generator=g, dtype=F64)
    ref = gm.sample(3000, generator=g)
    grid = time_grid(sch, 12, "uniform")
    kw = dict(schedule=sch, space=SPACE)
    e = SAMPLERS["flow_euler"](den, x1.clone(), grid, **kw)
    d = SAMPLERS["ddim"](den, x1.clone(), grid, **kw)
    assert torch.allclose(e, d, atol=1e-10)
    truth = SAMPLERS["flow_rk45"](den, x1.clone(), time_grid(sch, 2, "uniform"), **kw)
    floor = energy_distance(gm.sample(3000, generator=g), ref)
    assert energy_distance(truth, ref) < 3 * floor + 2e-3
    for name in ("dpmpp_2m", "dpmpp_3m", "flow_heun", "flow_midpoint"):
        y = SAMPLERS[name](den, x1.clone(), grid, **kw)
        assert torch.isfinite(y).all(), name
        # second-order solvers land closer to the exact ODE solution than Euler at the same steps
        assert (y - truth).norm(dim=1).mean() < (e - truth).norm(dim=1).mean(), name
    # shifted schedules and the VP schedule: the same samplers, no path questions asked
    for s2 in (FlowSchedule(shift=3.0), FlowSchedule("cosine"), LinearBetaSchedule(num_steps=None)):
        spacing = "uniform" if isinstance(s2, FlowSchedule) else "trailing"
        y = SAMPLERS["flow_heun"](gm.denoiser(s2), x1.clone(), time_grid(s2, 25, spacing), schedule=s2, space=SPACE)
        assert energy_distance(y, ref) < 3 * floor + 5e-3


def test_flow_solvers_converge_at_their_order():
    gm = gm2()
    sch = FlowSchedule()
    den = gm.denoiser(sch)
    x1 = torch.randn(500, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    kw = dict(schedule=sch, space=SPACE)
    # the reference stops at t_min and denoises, like every solver's last step does to sigma = 0
    truth = SAMPLERS["flow_rk45"](den, x1.clone(), time_grid(sch, 2, "uniform"), rtol=1e-9, atol=1e-9, **kw)

    def err(name, n):
        grid = torch.linspace(1, 1e-3, n + 1, dtype=F64)
        y = SAMPLERS[name](den, x1.clone(), torch.cat([grid, torch.zeros(1, dtype=F64)]), **kw)
        return float((y - truth).norm(dim=1).mean())
    assert err("flow_euler", 80) / err("flow_euler", 160) == pytest.approx(2.0, rel=0.25)
    for name in ("flow_heun", "flow_midpoint"):
        assert err(name, 40) / err(name, 80) > 3.0, name


def test_flow_sde_samples_the_mixture():
    gm = gm2()
    sch = FlowSchedule()
    g = torch.Generator().manual_seed(7)
    x1 = torch.randn(3000, 2, generator=g, dtype=F64)
    ref = gm.sample(3000, generator=g)
    floor = energy_distance(gm.sample(3000, generator=g), ref)
    y = SAMPLERS["flow_sde"](gm.denoiser(sch), x1, time_grid(sch, 200, "uniform"), schedule=sch, space=SPACE,
                             generator=torch.Generator().manual_seed(8), noise=1.0)
    assert energy_distance(y, ref) < 3 * floor + 3e-3
    # noise = 0 is the ODE (Euler)
    z = SAMPLERS["flow_sde"](gm.denoiser(sch), x1[:10], time_grid(sch, 7, "uniform"), schedule=sch, space=SPACE, noise=0.0)
    e = SAMPLERS["flow_euler"](gm.denoiser(sch), x1[:10], time_grid(sch, 7, "uniform"), schedule=sch, space=SPACE)
    assert torch.allclose(z, e, atol=1e-12)


def test_samplers_that_divide_by_alpha_refuse_pure_noise_clearly():
    gm = gm2()
    sch = FlowSchedule()
    x = torch.randn(4, 2, dtype=F64)
    for name in ("ode_euler", "ode_heun", "edm_heun", "euler_maruyama", "pc", "rk45"):
        with pytest.raises(ValueError, match="alpha"):
            SAMPLERS[name](gm.denoiser(sch), x, time_grid(sch, 3, "uniform"), schedule=sch, space=SPACE)
    with pytest.raises(ValueError, match="karras"):
        time_grid(sch, 5, "karras")


# ----------------------------------------------------------------------------- likelihood
def test_pf_ode_likelihood_on_the_linear_path_matches_the_exact_density():
    from diffuse.core.process.likelihood import log_likelihood

    gm = gm2()
    sch = FlowSchedule()
    x0 = gm.sample(6, generator=torch.Generator().manual_seed(9))
    out = log_likelihood(gm.denoiser(sch), x0, sch, SPACE, t_min=1e-4, rtol=1e-6, atol=1e-6)
    a, s = sch.alpha_sigma(torch.tensor(1e-4, dtype=F64))
    exact = gm.log_prob(x0, a, s)
    assert torch.allclose(-out["nll_nats"], exact, atol=2e-3)


# ----------------------------------------------------------------------------- training
class TinyNet(torch.nn.Module):
    def __init__(self, d=2, h=64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, h), torch.nn.SiLU(), torch.nn.Linear(h, h),
                                       torch.nn.SiLU(), torch.nn.Linear(h, d))

    def forward(self, x, noise, cond=None, space=None):
        return self.net(torch.cat([x, noise[:, None] / 1000.0], 1))


def _train(diff, den, data, steps, noise=None, seed=0, lr=3e-3):
    from diffuse.core.data.domain import Batch

    opt = torch.optim.Adam(den.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for i in range(steps):
        idx = torch.randint(0, len(data), (256,), generator=g)
        extras = {"noise": noise[idx]} if noise is not None else {}
        loss = diff.training_losses(den, Batch(data[idx], SPACE, None, extras), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_flow_config_and_training_mode():
    cfg = resolve(DiffusionConfig(training="flow", shift=3.0, time_sampler="mode"))
    assert cfg.schedule == {"kind": "flow", "path": "linear", "shift": 3.0} and cfg.parameterization == "flow"
    cfg.validate()
    diff = Diffusion(cfg)
    # a preset fills what is left open and never overrides what was given: a VP schedule or another
    # parameterization with the flow preset is one clear error, not a silent replacement
    with pytest.raises(ConfigError, match="runs on a flow path"):
        Diffusion(DiffusionConfig(training="flow", schedule={"kind": "polynomial", "num_steps": 1000}))
    with pytest.raises(ConfigError, match="flow parameterization and a flow schedule go together"):
        Diffusion(DiffusionConfig(training="flow", parameterization="eps"))
    assert isinstance(diff.schedule, FlowSchedule) and diff.schedule.shift == 3.0
    assert isinstance(diff.param, FlowParam)
    with pytest.raises(ValueError, match="shift"):
        resolve(DiffusionConfig(training="flow", schedule={"kind": "flow", "shift": 2.0}, shift=3.0))
    with pytest.raises(ValueError, match="time_sampler"):
        Diffusion(DiffusionConfig(training="flow", time_sampler="nope"))
    with pytest.raises(ValueError, match="flow schedule"):
        Diffusion(DiffusionConfig(parameterization="flow"))
    # the training target is the velocity eps - x0 on the linear path
    c = DiffusionConfig(training="flow", time_sampler="uniform")
    assert Diffusion(c).loss.param.target(torch.ones(1), torch.zeros(1), torch.ones(1), torch.zeros(1)) == -1


def test_flow_training_lowers_the_loss_and_samples_near_the_data():
    torch.manual_seed(0)
    gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]),
                         0.1 * torch.eye(2).repeat(2, 1, 1))
    data = gm.sample(4000, generator=torch.Generator().manual_seed(0)).float()
    diff = Diffusion(DiffusionConfig(training="flow"))
    den = diff.denoiser(TinyNet())
    losses = _train(diff, den, data, 600)
    assert sum(losses[-50:]) / 50 < 0.7 * sum(losses[:20]) / 20
    x1 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = SAMPLERS["flow_heun"](den.bind(SPACE), x1, time_grid(diff.schedule, 20, "uniform"),
                                  schedule=diff.schedule, space=SPACE)
    ref = gm.sample(1000, generator=torch.Generator().manual_seed(2)).float()
    assert energy_distance(y, ref) < 0.1
    assert (y[:, 0].abs() - 2).abs().median() < 0.4


def test_reflow_straightens_one_step_samples():
    """Rectified flow's second stage (Liu et al. 2023): pairs (noise, ODE sample) from a trained
    flow, retrained on that coupling, give better 1-step samples."""
    from diffuse.core.training.reflow import ode_pairs

    torch.manual_seed(0)
    gm = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-2.0, 0.0], [2.0, 0.0]]),
                         0.1 * torch.eye(2).repeat(2, 1, 1))
    data = gm.sample(4000, generator=torch.Generator().manual_seed(0)).float()
    diff = Diffusion(DiffusionConfig(training="flow", time_sampler="uniform"))
    den = diff.denoiser(TinyNet())
    _train(diff, den, data, 600)
    noise, samples = ode_pairs(den.bind(SPACE), diff.schedule, SPACE, torch.zeros(4000, 2),
                               steps=20, generator=torch.Generator().manual_seed(3))
    assert noise.shape == samples.shape == (4000, 2)
    ref = gm.sample(2000, generator=torch.Generator().manual_seed(4)).float()
    x1 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))

    def one_step(model):
        with torch.no_grad():
            return SAMPLERS["flow_euler"](model.bind(SPACE), x1.clone(), time_grid(diff.schedule, 1, "uniform"),
                                          schedule=diff.schedule, space=SPACE)
    before = energy_distance(one_step(den), ref)
    _train(diff, den, samples, 400, noise=noise, seed=1, lr=1e-3)   # reflow: the coupling replaces independent noise
    after = energy_distance(one_step(den), ref)
    assert after < 0.5 * before


# ----------------------------------------------------------------------------- molecules: equivariant flow
def test_molecule_flow_samples_rotate_with_the_noise_and_keep_zero_centre():
    """Equivariant flow matching on the GraphSpace: positions and atom-type features both flow,
    the centre of mass stays zero, and rotating (or reflecting) the noise rotates the samples."""
    from diffuse.core.process.denoiser import Denoiser
    from diffuse.core.data.graph import GraphSpace
    from diffuse.core.sampling.common import prior_sample
    from diffuse.domains.molecules import EGNN

    torch.manual_seed(0)
    net = EGNN(6, hidden=16, layers=2).double()
    for block in net.blocks:                   # non-trivial coordinate updates (as test_molecules_egnn)
        torch.nn.init.normal_(block[1].out.weight, std=0.3)
    sch = FlowSchedule()
    den = Denoiser(net.eval(), sch, FlowParam())
    counts = [5, 8, 3]
    sp = GraphSpace(torch.repeat_interleave(torch.arange(3), torch.tensor(counts)), 3)
    like = torch.zeros(sum(counts), 9, dtype=F64)
    x1 = sp.project(prior_sample(sch, sp, like, generator=torch.Generator().manual_seed(1)))
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=g))
    x1r = x1.clone()
    x1r[:, :3] = x1[:, :3] @ q.T
    for name in ("flow_heun", "flow_midpoint", "dpmpp_2m", "flow_sde"):
        means = []
        run = lambda x: SAMPLERS[name](den.bind(sp), x.clone(), time_grid(sch, 6, "uniform"), schedule=sch, space=sp,
                                       generator=torch.Generator().manual_seed(3),
                                       callback=lambda info: means.append(float(sp.graph_mean(info["x"][:, :3]).abs().max())))
        with torch.no_grad():
            y, yr = run(x1), run(x1r)
        assert max(means) < 1e-10
        assert (y[:, 3:] - x1[:, 3:]).abs().max() > 1e-2                 # atom-type features flowed too
        if name == "flow_sde":     # equivariant in law only: its fresh noise is not rotated
            continue
        assert torch.allclose(yr[:, :3], y[:, :3] @ q.T, atol=1e-8), name
        assert torch.allclose(yr[:, 3:], y[:, 3:], atol=1e-8), name
    # and the flow training loss is rotation invariant for the same noise (the batch's coupling)
    from diffuse.core.data.domain import Batch
    diff = Diffusion(DiffusionConfig(training="flow"))
    den = diff.denoiser(net)
    x0 = sp.project(torch.randn(sum(counts), 9, dtype=F64, generator=g))
    eps = sp.noise(x0, torch.Generator().manual_seed(4))
    rot = lambda z: torch.cat([z[:, :3] @ q.T, z[:, 3:]], 1)
    l1 = diff.training_losses(den, Batch(x0, sp, None, {"noise": eps}), torch.Generator().manual_seed(5))
    l2 = diff.training_losses(den, Batch(rot(x0), sp, None, {"noise": rot(eps)}), torch.Generator().manual_seed(5))
    assert torch.allclose(l1, l2, atol=1e-10)


# ----------------------------------------------------------------------------- end to end: CLI train + reflow
def test_cli_flow_training_and_reflow(tmp_path):
    import json
    from click.testing import CliRunner

    from diffuse import api
    from diffuse.cli.main import main

    runner = CliRunner()
    base, re_, vp = tmp_path / "base", tmp_path / "re", tmp_path / "vp"
    common = ["--domain", "molecules", "--steps", "2", "--batch-size", "8", "--eval-samples", "0", "--no-progress"]
    r = runner.invoke(main, ["train", *common, "--training", "flow", "--out", str(base)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((base / "config.json").read_text())["diffusion"]
    assert cfg["schedule"]["kind"] == "flow" and cfg["parameterization"] == "flow" and cfg["training"] == "flow"
    r = runner.invoke(main, ["reflow", "-c", str(base), "--out", str(re_), "--pairs", "6", "--steps", "2",
                             "--train-steps", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads((re_ / "reflow.json").read_text())["pairs"] == 6
    samples = api.load(re_, device="cpu").sample(3, sampler="flow_euler", steps=1)
    assert torch.isfinite(samples.x).all()
    # user mistakes: one line, exit 2, nothing written
    r = runner.invoke(main, ["train", *common, "--out", str(vp)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["reflow", "-c", str(vp), "--out", str(tmp_path / "no")])
    assert r.exit_code == 2 and "needs a flow model" in r.output and not (tmp_path / "no").exists()
    r = runner.invoke(main, ["train", *common, "--training", "flow", "--schedule", "cosine", "--out", str(tmp_path / "no")])
    assert r.exit_code == 2 and "leave out --schedule" in r.output and not (tmp_path / "no").exists()
    r = runner.invoke(main, ["reflow", "-c", str(base), "--out", str(tmp_path / "no"), "--sampler", "flow_sde"])
    assert r.exit_code == 2 and "deterministic" in r.output and not (tmp_path / "no").exists()
