"""Robust few-step solvers against truths nobody here chose: closed-form Gaussian PF-ODE solutions
(orders of convergence), exact Gaussian-mixture denoisers (every sampler x every grid at 5
evaluations), diffusers' own schedulers (when installed), and table / timestep round trips."""

import logging
import math

import pytest
import torch

from diffuse.core import (SAMPLERS, SPACINGS, CosineSchedule, DenseSpace, FlowSchedule, LinearBetaSchedule, SigmaSchedule,
                          TableSchedule, external_denoiser, jump_logsnr_grid, make_schedule, time_grid)
from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.sampling.grids import AUTO_MIN_STEPS, JUMP, JUMP_FEW
from diffuse.core.sampling.registry import check_sampler_options

F64 = torch.float64
SPACE = DenseSpace()
pytestmark = pytest.mark.usefixtures("one_thread")

MU = torch.tensor([[1.0, -0.5]], dtype=F64)
COV = torch.tensor([[[0.5, 0.2], [0.2, 0.3]]], dtype=F64)
GAUSS = GaussianMixture(torch.ones(1), MU, COV)


def exact_pf_ode(x1, sch, t_end):
    """Closed-form PF-ODE solution for the Gaussian N(MU, COV) (core.gaussian)."""
    return GaussianMixture(torch.ones(1, dtype=F64), MU, COV).pf_ode_solution(x1, sch, t_end)


# ----------------------------------------------------------------------------- orders
@pytest.mark.parametrize("sch", [LinearBetaSchedule(num_steps=None), SigmaSchedule()], ids=["vp", "edm"])
@pytest.mark.parametrize("options,order", [({"order": 1}, 2.0), ({"order": 2}, 3.0), ({"order": 2, "corrector": False}, 2.0)])
def test_unipc_order_of_convergence(sch, options, order):
    """UniP-p with the UniC corrector converges with order p + 1 (Zhao et al. 2023, theorem 3.2),
    the bare predictor with order p: halving the log-SNR step divides the error to the closed-form
    PF-ODE solution by 2^order."""
    scale = 80.0 if isinstance(sch, SigmaSchedule) else 1.0
    x1 = scale * torch.randn(128, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    errs = []
    for n in (32, 64):
        grid = time_grid(sch, n, "logsnr", final=None)
        y = SAMPLERS["unipc"](GAUSS.denoiser(sch), x1.clone(), grid, schedule=sch, space=SPACE, **options)
        errs.append(float((y - exact_pf_ode(x1, sch, grid[-1])).norm(dim=1).max()))
    p = math.log2(errs[0] / errs[1])
    assert order - 0.25 < p < order + 0.5, (errs, p)


def test_unipc_order_3_beats_order_2_on_fine_grids():
    sch = LinearBetaSchedule(num_steps=None)
    x1 = torch.randn(128, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    grid = time_grid(sch, 64, "logsnr", final=None)
    err = {k: float((SAMPLERS["unipc"](GAUSS.denoiser(sch), x1.clone(), grid, schedule=sch, space=SPACE, order=k)
                     - exact_pf_ode(x1, sch, grid[-1])).norm(dim=1).max()) for k in (2, 3)}
    assert err[3] < err[2] / 5, err


def test_dpmpp_2m_sde_reproduces_the_gaussian():
    """The SDE variant samples the data law: mean mu and covariance S from N(0, I)."""
    sch = LinearBetaSchedule(num_steps=None)
    n = 4000
    x = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    y = SAMPLERS["dpmpp_2m_sde"](GAUSS.denoiser(sch), x, time_grid(sch, 30, "logsnr"), schedule=sch, space=SPACE,
                                 generator=torch.Generator().manual_seed(3))
    assert (y.mean(0) - MU[0]).abs().max() < 5 * math.sqrt(0.5 / n)
    torch.testing.assert_close(torch.cov(y.T), COV[0], rtol=0, atol=0.04)


# ----------------------------------------------------------------------------- every sampler x every grid
#: what each sampler is held to at 5 evaluations: its own first-order counterpart on the same grid
#: with the same number of steps (Heun-type: 3 steps, 5 evaluations), or DDIM for the multistep
#: solvers; None: only finite (Euler / Euler-Maruyama in t are not few-step methods on any grid)
HEUN = {"ode_heun": "ode_euler", "edm_heun": "ddim", "flow_heun": "flow_euler", "flow_midpoint": "flow_euler"}
VP_SAMPLERS = ["ddpm", "ddim", "euler_maruyama", "pc", "ode_euler", "ode_heun", "edm_heun", "dpmpp_2m", "dpmpp_3m",
               "dpmpp_2m_sde", "unipc"]
FLOW_SAMPLERS = ["flow_euler", "flow_heun", "flow_midpoint", "flow_sde", "ddim", "dpmpp_2m", "dpmpp_3m", "unipc"]
FINITE_ONLY = {"euler_maruyama", "pc", "ode_euler", "flow_euler"}


@pytest.fixture(scope="module")
def small_problem():
    gm = GaussianMixture.random(k=3, d=2, seed=0)
    ref = gm.sample(600, torch.Generator().manual_seed(12))
    noise = torch.randn(600, 2, dtype=F64, generator=torch.Generator().manual_seed(11))
    return gm, ref, noise, energy_distance(noise, ref)


@pytest.mark.parametrize("kind", ["linear", "edm", "flow"])
def test_every_sampler_on_every_grid_at_5_nfe_is_finite_and_near_the_data(small_problem, kind, caplog):
    """5 evaluations on every grid `--spacing` offers, on the exact mixture: every sampler finite;
    the multistep solvers within 3x DDIM's energy distance to the data on the same grid, the
    Heun-type ones within 3x their own Euler step on the same 3-step grid (either way, or a
    tenth of the starting noise's distance). Before the fixes DPM-Solver++(3M) on linspace
    grids and edm_heun / ode_heun on log-SNR grids ended tens to thousands of times farther."""
    gm, ref, noise, noise_dist = small_problem
    sch = {"linear": LinearBetaSchedule(), "edm": SigmaSchedule(), "flow": FlowSchedule()}[kind]
    names = FLOW_SAMPLERS if kind == "flow" else VP_SAMPLERS
    den = gm.denoiser(sch)
    a, s = sch.alpha_sigma(torch.tensor(1.0, dtype=F64))
    x = float(torch.sqrt(a * a + s * s)) * noise
    bad, ran = [], 0
    caplog.set_level(logging.ERROR)

    def dist(name, steps, spacing):
        y = SAMPLERS[name](den, x.clone(), time_grid(sch, steps, spacing), schedule=sch, space=SPACE,
                           generator=torch.Generator().manual_seed(5))
        return energy_distance(y, ref) if bool(torch.isfinite(y).all()) else math.inf

    for spacing in SPACINGS:
        try:
            time_grid(sch, 5, spacing)
        except ValueError as err:          # a grid the schedule refuses (karras / logsnr from alpha = 0)
            assert "alpha" in str(err), err
            continue
        base = {5: dist("ddim", 5, spacing)}
        for name in names:
            steps = 3 if name in HEUN else 5
            d = dist(name, steps, spacing)
            ran += 1
            if name in FINITE_ONLY:
                ok = math.isfinite(d)
            else:
                ref_d = dist(HEUN[name], 3, spacing) if name in HEUN else base[5]
                ok = d < max(3 * ref_d, 0.1 * noise_dist)
            if not ok:
                bad.append((name, spacing, d, d / noise_dist))
    assert not bad, bad
    assert ran >= len(names) * 4


# ----------------------------------------------------------------------------- Heun fallback
def test_heun_falls_back_to_euler_with_one_log_line_and_not_on_fine_grids(caplog):
    gm = GaussianMixture.random(k=3, d=2, seed=0)
    sch = LinearBetaSchedule()
    den = gm.denoiser(sch)
    x = torch.randn(300, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    for name in ("edm_heun", "ode_heun"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="diffuse.core.sampling.ode"):
            y = SAMPLERS[name](den, x.clone(), time_grid(sch, 3, "logsnr"), schedule=sch, space=SPACE)
        lines = [r for r in caplog.records if "Heun correction" in r.getMessage()]
        assert len(lines) == 1 and name in lines[0].getMessage() and bool(torch.isfinite(y).all())
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="diffuse.core.sampling.ode"):
            SAMPLERS[name](GAUSS.denoiser(sch), x.clone(), time_grid(sch, 100, "logsnr", final=None),
                           schedule=sch, space=SPACE)
        assert not [r for r in caplog.records if "Heun correction" in r.getMessage()]


# ----------------------------------------------------------------------------- grids
def test_jump_logsnr_grid_first_step_is_jump_times_the_others_and_refines():
    disc = time_grid(LinearBetaSchedule(), 20, "jump_logsnr")          # discrete: the model's own timesteps
    n = disc[:-1] * 1000
    assert bool((n == n.round()).all()) and bool((n[1:] < n[:-1]).all()) and float(n[0]) == 1000 and float(n[-1]) == 1
    sch = LinearBetaSchedule(num_steps=None)
    for steps in (4, 10, 40):
        g = time_grid(sch, steps, "jump_logsnr")
        lam = sch.log_snr(g[:-1])
        h = lam[1:] - lam[:-1]
        assert len(g) == steps + 1 and float(g[0]) == 1.0 and float(g[-2]) == pytest.approx(1 / 1000)
        torch.testing.assert_close(h[0] / h[1:], torch.full_like(h[1:], JUMP), rtol=1e-6, atol=0)
        torch.testing.assert_close(jump_logsnr_grid(sch, steps), g)
    assert "jump_logsnr" in SPACINGS


def test_auto_few_step_grid_is_log_snr_uniform_with_a_long_first_step_down_to_trailings_end():
    """Below AUTO_MIN_STEPS on a VP schedule ``auto`` spaces its points uniformly in log-SNR, the
    first step JUMP_FEW times the others, from t_max to the last point of the trailing grid of the
    T-step chain (t_min + (t_max - t_min) / steps on a continuous schedule); on the T-step chain
    the points are the model's own timesteps."""
    sch = LinearBetaSchedule(num_steps=None)
    for steps in range(2, AUTO_MIN_STEPS):
        g = time_grid(sch, steps, "auto")
        assert len(g) == steps + 1 and float(g[-1]) == 0.0 and float(g[0]) == 1.0
        assert float(g[-2]) == pytest.approx(sch.t_min + (1 - sch.t_min) / steps)   # where trailing ends on a chain
        h = sch.log_snr(g[:-1]).diff()
        assert bool((h > 0).all())
        if steps > 2:
            torch.testing.assert_close(h[0] / h[1:], torch.full_like(h[1:], JUMP_FEW), rtol=1e-6, atol=0)
    disc = LinearBetaSchedule()
    for steps in range(2, AUTO_MIN_STEPS):
        g, trail = time_grid(disc, steps, "auto"), time_grid(disc, steps, "trailing")
        n = g[:-1] * 1000
        assert bool((n == n.round()).all()) and bool((n[1:] < n[:-1]).all())
        assert float(g[0]) == 1.0 and float(g[-2]) == float(trail[-2]) and float(g[-1]) == 0.0
    # an explicit range is honoured as given (no few-step end, no rounding)
    torch.testing.assert_close(time_grid(disc, 5, "auto", t_min=0.01), time_grid(disc, 5, "jump_logsnr", t_min=0.01))


def test_cli_offers_every_spacing():
    from diffuse.cli.main import sample
    choices = next(p for p in sample.params if p.name == "spacing").type.choices
    assert tuple(choices) == SPACINGS


def test_unipc_options_are_checked():
    check_sampler_options("unipc", {"order": 3, "corrector": False, "lower_order_final": True})
    for bad in ({"order": 4}, {"order": 0}, {"order": 2.5}, {"corrector": 1}):
        with pytest.raises(ValueError):
            check_sampler_options("unipc", bad)


# ----------------------------------------------------------------------------- table schedule
def test_table_schedule_round_trip_is_the_linear_beta_chain():
    lin = LinearBetaSchedule()
    tab = TableSchedule(lin.alphas_cumprod)
    t = torch.cat([torch.arange(0, 1001, dtype=F64) / 1000, torch.rand(200, dtype=F64, generator=torch.Generator().manual_seed(0))])
    for u, v in zip(tab.alpha_sigma(t), lin.alpha_sigma(t)):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)
    lam = lin.log_snr(t[1:1000])
    torch.testing.assert_close(tab.t_from_log_snr(lam), t[1:1000], rtol=0, atol=1e-9)
    torch.testing.assert_close(time_grid(tab, 10, "karras"), time_grid(lin, 10, "karras"))
    again = make_schedule(tab.config())
    torch.testing.assert_close(again.alphas_cumprod, lin.alphas_cumprod, rtol=1e-15, atol=0)
    assert tab.num_steps == 1000 and tab.variance_preserving


@pytest.mark.parametrize("table", [[], [0.9, 0.95], [1.0, 0.5], [0.9, 0.0], [0.9, float("nan")]])
def test_table_schedule_rejects_bad_tables(table):
    with pytest.raises(ValueError):
        TableSchedule(table)


# ----------------------------------------------------------------------------- external models
def _diffusers_like(gm, alphas_cumprod, prediction):
    """An exact 'UNet' in diffusers' convention: called as model(x, k) with k the 0-based index into
    its own alphas_cumprod (fractional k: log alpha_bar interpolated, as DPM-Solver's wrapper)."""
    log_ac = torch.cat([torch.zeros(1, dtype=F64), torch.log(alphas_cumprod)])

    def model(x, k):
        pos = k.to(F64) + 1.0
        lo = pos.floor().clamp(max=len(log_ac) - 2).long()
        lab = log_ac[lo] * (1 - (pos - lo)) + log_ac[lo + 1] * (pos - lo)
        a, s = torch.exp(0.5 * lab), torch.sqrt(-torch.expm1(lab))
        x0, score = gm.denoise_at(x, a, s)
        eps = -s[:, None] * score
        out = {"eps": eps, "x0": x0, "v": a[:, None] * eps - s[:, None] * x0}[prediction]
        return (out,)                     # a tuple, as diffusers' return_dict=False
    return model


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("spacing", ["trailing", "logsnr"])
def test_external_model_in_diffusers_convention_gives_the_native_samples(prediction, spacing):
    gm = GaussianMixture.random(k=3, d=2, seed=0)
    lin = LinearBetaSchedule()
    tab = TableSchedule(lin.alphas_cumprod)
    den = external_denoiser(_diffusers_like(gm, lin.alphas_cumprod, prediction), tab, prediction=prediction,
                            timesteps="index")
    x = torch.randn(200, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    for name in ("ddim", "dpmpp_2m", "unipc"):
        ours = SAMPLERS[name](gm.denoiser(lin), x.clone(), time_grid(lin, 8, spacing), schedule=lin, space=SPACE)
        theirs = SAMPLERS[name](den, x.clone(), time_grid(tab, 8, spacing), schedule=tab, space=SPACE)
        torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-9)


def test_external_denoiser_rejects_unknown_conventions():
    with pytest.raises(ValueError, match="prediction"):
        external_denoiser(lambda x, k: x, LinearBetaSchedule(), prediction="score")
    with pytest.raises(ValueError, match="timestep"):
        external_denoiser(lambda x, k: x, LinearBetaSchedule(), timesteps="sigma")
    with pytest.raises(ValueError, match="discrete"):
        external_denoiser(lambda x, k: x, LinearBetaSchedule(num_steps=None), timesteps="index")


# ----------------------------------------------------------------------------- diffusers as the truth
def _run_diffusers(sched, model, x, steps):
    sched.set_timesteps(steps)
    y = x.clone()
    for k in sched.timesteps:
        eps = model(y, torch.full((y.shape[0],), int(k)))[0]
        y = sched.step(eps, k, y).prev_sample
    return y


@pytest.mark.parametrize("steps", [5, 10, 20])
def test_unipc_and_ddim_equal_diffusers_schedulers_on_their_grid(steps):
    """Our UniPC (bh2, order 2) and DDIM driving a diffusers-convention model through
    external_denoiser give diffusers' own UniPCMultistepScheduler / DDIMScheduler samples."""
    diffusers = pytest.importorskip("diffusers")
    gm = GaussianMixture.random(k=3, d=2, seed=0)
    lin = LinearBetaSchedule()
    model = _diffusers_like(gm, lin.alphas_cumprod, "eps")
    den = external_denoiser(model, TableSchedule(lin.alphas_cumprod))
    x = torch.randn(200, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    grid = time_grid(lin, steps, "trailing")
    base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", timestep_spacing="trailing")
    uni = diffusers.UniPCMultistepScheduler(**base, solver_order=2)
    torch.testing.assert_close(SAMPLERS["unipc"](den, x.clone(), grid, schedule=lin, space=SPACE),
                               _run_diffusers(uni, model, x, steps).to(F64), rtol=1e-4, atol=1e-4)
    ddim = diffusers.DDIMScheduler(**base, clip_sample=False, set_alpha_to_one=True)
    torch.testing.assert_close(SAMPLERS["ddim"](den, x.clone(), grid, schedule=lin, space=SPACE),
                               _run_diffusers(ddim, model, x, steps).to(F64), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- Denoiser fast path
@pytest.mark.parametrize("pname", ["eps", "x0", "v", "edm", "flow"])
def test_denoiser_one_time_fast_path_equals_the_per_sample_path(pname):
    """A batch at one time (every sampler step) takes the cached-numbers path; it must give what the
    per-sample path gives (forced here by one sample at another time), and a swapped schedule
    must not reuse the cached numbers."""
    from diffuse.core import Denoiser, make_parameterization
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, c_noise, cond=None, space=None):
            return self.net(x) * (1 + c_noise[:, None])

    sch = FlowSchedule() if pname == "flow" else LinearBetaSchedule()
    kw = {"path": "linear"} if pname == "flow" else {}
    den = Denoiser(Backbone(), sch, make_parameterization(pname, **kw))
    x = torch.randn(6, 3)
    t = torch.full((6,), 0.37, dtype=F64)
    mixed = torch.cat([t[:5], torch.tensor([0.9], dtype=F64)])
    with torch.no_grad():
        fast, slow = den(x, t, space=SPACE), den(x, mixed, space=SPACE)
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a[:5], b[:5], rtol=1e-5, atol=1e-6)
        if pname != "flow":
            den.schedule = CosineSchedule()
            again, ref = den(x, t, space=SPACE), den(x, mixed, space=SPACE)
            for a, b in zip(again, ref):
                torch.testing.assert_close(a[:5], b[:5], rtol=1e-5, atol=1e-6)
            assert not (torch.allclose(again.x0, fast.x0) and torch.allclose(again.eps, fast.eps))


def test_auto_spacing_and_the_default_grids():
    from diffuse.core.sampling.generate import sampling_grid
    from diffuse.core.sampling.grids import AUTO_MIN_STEPS
    from diffuse.core.sampling.registry import default_spacing
    lin = LinearBetaSchedule()
    for steps in (AUTO_MIN_STEPS, 20, 50):
        torch.testing.assert_close(time_grid(lin, steps, "auto"), time_grid(lin, steps, "jump_logsnr"))
    edm = SigmaSchedule()                  # EDM: log-SNR from sigma_max to 2.5 sigma_min, first step 1.5x
    g = time_grid(edm, 12, "auto")
    lam = -2 * torch.log(edm.sigma(g[:-1]))
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d[0] / d[1], torch.tensor(1.5, dtype=F64))
    torch.testing.assert_close(d[1:], d[1:2].expand(10))
    torch.testing.assert_close(edm.sigma(g[[0, -2, -1]]), torch.tensor([80.0, 0.005, 0.0], dtype=F64))
    torch.testing.assert_close(time_grid(FlowSchedule(), 12, "auto"), time_grid(FlowSchedule(), 12, "uniform"))
    from diffuse.core.sampling.registry import SAMPLERS
    auto = {n for n, r in SAMPLERS.items() if r.vp_grid == "auto"}
    few_step = {n for n, r in SAMPLERS.items() if r.vp_grid == "few_step_auto"}
    for name in ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "ddpm", "ode_heun", "edm_heun"):
        assert default_spacing(lin, name) == ("auto" if name in auto else
                                              "trailing" if name in few_step else SAMPLERS[name].vp_grid)
    # generate() / `diffuse sample` without --spacing (the TUNE choices of benchmarks/bench_grids.py):
    # UniPC, DPM-Solver++(2M / 3M) and ode_heun on auto; DDIM on auto's few-step grid below
    # AUTO_MIN_STEPS steps and on trailing from there on; edm_heun on leading
    assert {"unipc", "dpmpp_2m", "dpmpp_3m"} <= auto and few_step == {"ddim"}
    assert SAMPLERS["edm_heun"].vp_grid == "leading"
    for steps in (5, AUTO_MIN_STEPS - 1, AUTO_MIN_STEPS, 10, 20):
        few = steps < AUTO_MIN_STEPS
        for name in ("unipc", "dpmpp_3m"):
            torch.testing.assert_close(sampling_grid(lin, name, steps, None), time_grid(lin, steps, "auto"))
        torch.testing.assert_close(sampling_grid(lin, "ddim", steps, None), time_grid(lin, steps, "auto" if few else "trailing"))
        torch.testing.assert_close(sampling_grid(lin, "edm_heun", steps, None), time_grid(lin, steps, "leading"))
        torch.testing.assert_close(sampling_grid(lin, "ddpm", steps, None), time_grid(lin, steps, "trailing"))
        torch.testing.assert_close(sampling_grid(lin, "unipc", steps, "trailing"), time_grid(lin, steps, "trailing"))
    # EDM / VE sigmas: karras for every sampler (auto, chosen on the exact problems, is opt-in there:
    # a trained EDM image model preferred karras), flow paths their own uniform grid
    for name in ("unipc", "dpmpp_2m", "dpmpp_3m", "ddim", "edm_heun", "ode_heun"):
        assert default_spacing(SigmaSchedule(), name) == "karras"
    assert default_spacing(FlowSchedule(), "ddim") == "uniform"
    # DDPM's default is still exactly the T-step chain
    torch.testing.assert_close(sampling_grid(lin, "ddpm", None, None), torch.arange(1000, -1, -1, dtype=F64) / 1000)


def test_jump_logsnr_skips_the_pure_noise_top_of_the_cosine_chain():
    """The cosine chain starts near log-SNR -20; the log-SNR steps of jump_logsnr / auto are
    measured from LOGSNR_TOP, so its first step lands exactly where a grid starting at -10.5
    would put it (the linear chain, which starts above -10.5, is unchanged)."""
    from diffuse.core.sampling.grids import LOGSNR_TOP
    cos, lin = CosineSchedule(num_steps=None), LinearBetaSchedule(num_steps=None)
    assert float(cos.log_snr(torch.tensor(1.0, dtype=F64))) < LOGSNR_TOP < float(lin.log_snr(torch.tensor(1.0, dtype=F64)))
    for steps in (5, 10):
        g = time_grid(cos, steps, "jump_logsnr")
        lam = cos.log_snr(g[1:-1])
        lo = float(cos.log_snr(torch.tensor(cos.t_min, dtype=F64)))
        d = (lo - LOGSNR_TOP) / (JUMP + steps - 2)
        expect = LOGSNR_TOP + (JUMP + torch.arange(steps - 1, dtype=F64)) * d
        torch.testing.assert_close(lam, expect, rtol=0, atol=1e-6)
        assert float(g[0]) == 1.0
    # the linear chain's grid is still uniform from its own top
    g = time_grid(lin, 10, "jump_logsnr")
    top = float(lin.log_snr(torch.tensor(1.0, dtype=F64)))
    lam = lin.log_snr(g[:-1])
    d = (float(lam[-1]) - top) / (JUMP + 8)
    torch.testing.assert_close(lam[1:], top + (JUMP + torch.arange(9, dtype=F64)) * d, rtol=0, atol=1e-6)
