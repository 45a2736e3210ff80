"""Few-step models, the parts: discretisation and curriculum, the boundary condition, the teacher's
ODE step against the closed-form flow map, the landing targets of shortcut and progressive
distillation, the samplers, equivariance of the consistency function, and the objective records."""

from __future__ import annotations

import math

import pytest
import torch

from diffuse.core.data.space import DenseSpace
from diffuse.core.errors import ConfigError, NotSupportedError, UnknownNameError
from diffuse.core.process.consistency import (ConsistencyConfig, ConsistencyObjective, consistency_levels,
                                              curriculum_levels, level_weights, pseudo_huber, teacher_step)
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.process.flowmap import FlowMapDenoiser, time_pair
from diffuse.core.process.gaussian import GaussianMixture
from diffuse.core.process.objectives import (OBJECTIVES, build_objective, few_step_sampling, make_denoiser,
                                             model_options, objective_options, objective_section)
from diffuse.core.process.parameterization import Prediction
from diffuse.core.process.progressive import ProgressiveConfig, ProgressiveObjective, student_grid
from diffuse.core.process.schedules import build_schedule
from diffuse.core.process.shortcut import landing_target
from diffuse.core.sampling.registry import SAMPLERS, default_spacing

from fewstep_toy import TimeMLP

F64 = torch.float64
SPACE = DenseSpace()
SCHEDULES = [{"kind": "linear"}, {"kind": "cosine"}, {"kind": "sigma"}, {"kind": "flow", "path": "linear"},
             {"kind": "polynomial", "num_steps": 1000, "power": 2.0, "precision": 1e-5}]

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- discretisation
@pytest.mark.parametrize("kind", SCHEDULES, ids=lambda k: k["kind"])
def test_levels_run_from_zero_to_the_start_of_sampling(kind):
    schedule = build_schedule(kind)
    t, s = consistency_levels(schedule, 18)
    assert t.shape == s.shape == (19,)
    assert t[0] == 0 and t[-1] == schedule.t_max and s[0] == 0
    assert bool((t[1:] > t[:-1]).all()) and bool((s[1:] > s[:-1]).all())
    assert bool(torch.isfinite(s).all())                   # a flow path's infinite top level is capped
    a, sig = schedule.alpha_sigma(t[1:-1])
    assert torch.allclose(sig / a, s[1:-1], rtol=1e-6)     # the interior levels are the times' noise levels
    # Karras spacing (rho = 7) of the capped levels: equal steps of s^(1/7) below the top
    roots = s[1:-1] ** (1 / 7)
    assert torch.allclose(roots.diff(), roots.diff()[:1].expand(len(roots) - 1), rtol=1e-6)
    w = level_weights(s, -1.1, 2.0)
    assert w.shape == (18,) and abs(float(w.sum()) - 1) < 1e-12 and bool((w > 0).all())


def test_ict_curriculum_doubles_from_s0_to_s1():
    # K = 1000, s0 = 10, s1 = 160: K' = floor(1000 / (log2(16) + 1)) = 200
    assert [curriculum_levels(k, 1000, 10, 160) for k in (0, 199, 200, 400, 600, 800, 999)] == [10, 10, 20, 40, 80,
                                                                                               160, 160]
    assert curriculum_levels(5, 10, 18, 18) == 18


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far():
    e = torch.tensor([1e-10, 1.0], dtype=F64)
    c = 0.00054
    out = pseudo_huber(e, c)
    assert abs(float(out[0]) / (1e-10 / (2 * c)) - 1) < 1e-3        # e / 2c for e << c^2
    assert abs(float(out[1]) - (1.0 - c)) < 1e-6                  # sqrt(e) - c for e >> c^2
    assert torch.equal(pseudo_huber(e, 0.0), e)


# ----------------------------------------------------------------------------- boundary condition
@pytest.mark.parametrize("param,kind", [("eps", {"kind": "linear"}), ("v", {"kind": "cosine"}),
                                        ("edm", {"kind": "sigma"}), ("flow", {"kind": "flow"})])
def test_the_consistency_function_is_the_identity_as_the_noise_vanishes(param, kind):
    """f(x, t) = c_skip x + c_out F -> x as sigma -> 0 for any network output (the boundary condition)."""
    torch.manual_seed(0)
    diff = Diffusion({"parameterization": param, "schedule": kind, "training": "flow" if param == "flow" else "ddpm"})
    den = make_denoiser(None, diff, TimeMLP(dim=3, width=16))
    x = torch.randn(5, 3)
    t = diff.schedule.t_from_sigma_ratio(torch.full((5,), 1e-7, dtype=F64)) if param != "flow" else \
        torch.full((5,), 1e-7, dtype=F64)
    with torch.no_grad():
        f = den(x, t, space=SPACE).x0
    a, sig = diff.schedule.alpha_sigma(t)
    level = float((sig / a).max())                      # VE's lowest level is sigma_min = 0.002 (then 0)
    assert level < 3e-3
    assert (f - x).abs().max() < 1e-4 + 0.2 * level


def test_x0_prediction_cannot_be_a_consistency_model():
    diff = Diffusion({"parameterization": "x0", "schedule": {"kind": "linear"}})
    with pytest.raises(ConfigError, match="x0-prediction"):
        ConsistencyObjective(diff, ConsistencyConfig(levels=4))


# ----------------------------------------------------------------------------- the teacher's ODE step
def test_teacher_step_against_the_closed_form_flow_map():
    """One Heun step of the exact denoiser of a Gaussian is close to the exact probability-flow map
    (second order: its error falls ~8x when the step halves; DDIM's ~4x)."""
    g = GaussianMixture.random(k=1, d=3, seed=2, spread=1.0, scale=0.7)
    schedule = build_schedule({"kind": "linear"})
    teacher = g.denoiser(schedule)
    x1 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64) * 1.2
    t0 = 0.5
    errors = {}
    for solver in ("ddim", "heun"):
        for h in (0.04, 0.02):
            t = torch.full((64,), t0, dtype=F64)
            r = torch.full((64,), t0 - h, dtype=F64)
            x_r, _ = teacher_step(teacher, schedule, SPACE, x1, t, r, solver)
            exact = g.pf_ode_solution(x1, schedule, t_end=t0 - h, t_start=t0)
            errors[solver, h] = float((x_r - exact).norm(dim=1).mean())
    assert errors["heun", 0.04] < errors["ddim", 0.04] / 3
    assert errors["ddim", 0.04] / errors["ddim", 0.02] > 3.0
    assert errors["heun", 0.04] / errors["heun", 0.02] > 6.0


# ----------------------------------------------------------------------------- landing targets
def test_shortcut_target_is_the_mean_of_the_two_small_velocities_on_the_linear_path():
    diff = Diffusion({"training": "flow"})
    x_t = torch.randn(6, 2, dtype=F64)
    t = torch.full((6,), 0.75, dtype=F64)
    s = torch.full((6,), 0.25, dtype=F64)
    u1, u2 = torch.randn(6, 2, dtype=F64), torch.randn(6, 2, dtype=F64)
    x_end = x_t - 0.25 * u1 - 0.25 * u2
    F = landing_target(diff.param, diff.schedule, SPACE, x_t, t, s, x_end)
    assert torch.allclose(F, 0.5 * (u1 + u2), atol=1e-12)


@pytest.mark.parametrize("param", ["eps", "v", "edm"])
def test_progressive_target_lands_the_student_on_the_teachers_two_steps(param):
    """The student's one DDIM step with x~_0 from its target reaches the teacher's x_s (algebra)."""
    diff = Diffusion({"parameterization": param, "schedule": {"kind": "linear"}})
    g = GaussianMixture.random(k=2, d=2, seed=1, spread=1.0, scale=0.5)
    obj = ProgressiveObjective(diff, ProgressiveConfig(student_steps=4), g.conditional_model(diff.schedule))
    grid = obj.grid
    assert torch.allclose(grid[::2], student_grid(diff.schedule, 4, "trailing")[0][::2])
    x0 = g.sample(32, torch.Generator().manual_seed(0))
    # the target of one student step, reconstructed: a DDIM step with the prediction F* lands on x_s
    t, m, s = grid[2].expand(32), grid[3].expand(32), grid[4].expand(32)
    a_t, s_t = diff.schedule.alpha_sigma(t)
    x_t = a_t[:, None] * x0 + s_t[:, None] * torch.randn(32, 2, dtype=F64)
    den = g.denoiser(diff.schedule)
    p = den(x_t, t)
    a_m, s_m = diff.schedule.alpha_sigma(m)
    x_m = a_m[:, None] * p.x0 + s_m[:, None] * p.eps
    p2 = den(x_m, m)
    a_s, s_s = diff.schedule.alpha_sigma(s)
    x_s = a_s[:, None] * p2.x0 + s_s[:, None] * p2.eps
    F = landing_target(diff.param, diff.schedule, SPACE, x_t, t, s, x_s)
    pred = diff.param.to_prediction(F, x_t, a_t[:, None], s_t[:, None])
    assert torch.allclose(a_s[:, None] * pred.x0 + s_s[:, None] * pred.eps, x_s, atol=1e-8)


def test_progressive_grids_must_nest():
    schedule = build_schedule({"kind": "linear"})
    assert student_grid(schedule, 8, None)[1] == "trailing"
    assert student_grid(build_schedule({"kind": "flow"}), 8, None)[1] == "uniform"
    with pytest.raises(ConfigError, match="nest"):
        student_grid(schedule, 3, "linspace")


# ----------------------------------------------------------------------------- samplers
def test_one_consistency_step_is_the_map_and_more_steps_renoise():
    """1 step: x = f(x_T, T) exactly (deterministic); 2 steps: the second evaluation sees
    alpha x0 + sigma z at the grid's middle time."""
    schedule = build_schedule({"kind": "linear"})
    seen = []

    def f(x, t):
        seen.append((float(t[0]), x.clone()))
        return Prediction(torch.full_like(x, 0.5), torch.zeros_like(x))

    x = torch.randn(4, 2, dtype=F64)
    grid = torch.tensor([1.0, 0.0], dtype=F64)
    out = SAMPLERS["consistency"].fn(f, x, grid, schedule=schedule, space=SPACE)
    assert torch.equal(out, torch.full_like(x, 0.5))
    seen.clear()
    grid = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    g = torch.Generator().manual_seed(3)
    SAMPLERS["consistency"].fn(f, x, grid, schedule=schedule, space=SPACE, generator=g)
    a, s = schedule.alpha_sigma(torch.tensor(0.5, dtype=F64))
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    assert seen[1][0] == 0.5 and torch.allclose(seen[1][1], a * 0.5 + s * z)


def test_flowmap_sampler_on_a_one_time_model_is_ddim():
    """The Denoiser answers a (t, s) pair at t, so the flow-map sampler on an ordinary model is DDIM."""
    torch.manual_seed(0)
    diff = Diffusion({"parameterization": "v", "schedule": {"kind": "linear"}})
    den = make_denoiser(None, diff, TimeMLP(width=16)).eval()
    x = torch.randn(8, 2)
    grid = torch.tensor([1.0, 0.6, 0.3, 0.0], dtype=F64)
    bound = den.bind(SPACE)
    a = SAMPLERS["flowmap"].fn(bound, x, grid, schedule=diff.schedule, space=SPACE)
    b = SAMPLERS["ddim"].fn(bound, x, grid, schedule=diff.schedule, space=SPACE)
    assert torch.allclose(a, b, atol=1e-6)


def test_few_step_samplers_spread_their_evaluations_on_every_schedule():
    for kind in SCHEDULES:
        schedule = build_schedule(kind)
        assert default_spacing(schedule, "consistency", 2) == "uniform"
        assert default_spacing(schedule, "flowmap", 4) == "uniform"
    assert not SAMPLERS["consistency"].deterministic and SAMPLERS["flowmap"].deterministic


# ----------------------------------------------------------------------------- flow-map denoiser
def test_flow_map_denoiser_needs_two_noise_inputs_and_answers_zero_steps_as_one_time():
    diff = Diffusion({"training": "flow"})
    with pytest.raises(NotSupportedError, match="time_inputs=2"):
        FlowMapDenoiser(TimeMLP(width=8), diff.schedule, diff.param)
    torch.manual_seed(0)
    den = FlowMapDenoiser(TimeMLP(width=8, time_inputs=2), diff.schedule, diff.param)
    x, t = torch.randn(4, 2), torch.full((4,), 0.7, dtype=F64)
    with torch.no_grad():
        zero = den(x, t, space=SPACE)
        pair = den(x, time_pair(t, t), space=SPACE)
        step = den(x, time_pair(t, 0.2), space=SPACE)
    assert torch.equal(zero.x0, pair.x0)
    assert not torch.allclose(zero.x0, step.x0)
    assert den.noise_inputs(time_pair(t, 0.2), den.scalings(t)[2])[:, 1].allclose(torch.full((4,), 500.0))


# ----------------------------------------------------------------------------- equivariance
def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q


@pytest.mark.parametrize("time_inputs", [1, 2])
def test_consistency_function_of_an_egnn_is_equivariant_with_zero_centre_of_mass(time_inputs):
    from diffuse.core.data.graph import GraphSpace
    from diffuse.domains.molecules.egnn import EGNN

    torch.manual_seed(0)
    diff = Diffusion({"parameterization": "v", "schedule": {"kind": "linear"}})
    net = EGNN(5, hidden=16, layers=2, time_inputs=time_inputs)
    den = (FlowMapDenoiser if time_inputs == 2 else type(make_denoiser(None, diff, net)))(net, diff.schedule, diff.param)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    space = GraphSpace(batch, 2)
    x = space.noise(torch.zeros(7, 8))
    t = torch.tensor([0.9, 0.4], dtype=F64)
    t_in = time_pair(t, 0.1) if time_inputs == 2 else t
    R = _rotation(1)
    shift = torch.tensor([1.0, -2.0, 0.5])
    rotated = torch.cat([x[:, :3] @ R.T + shift, x[:, 3:]], 1)
    with torch.no_grad():
        f = den(x, t_in, space=space).x0
        f_rot = den(space.project(rotated), t_in, space=space).x0
    assert space.graph_mean(f[:, :3]).abs().max() < 1e-5
    assert torch.allclose(f_rot[:, :3], f[:, :3] @ R.T, atol=1e-4)
    assert torch.allclose(f_rot[:, 3:], f[:, 3:], atol=1e-4)


# ----------------------------------------------------------------------------- records
def test_objective_records_state_their_facts():
    for name, r in OBJECTIVES.items():
        assert r.name == name and r.paper and r.sampler in SAMPLERS
        assert r.time_inputs in (1, 2)
        record, options = objective_options({"name": name})
        assert record is r
        again = objective_options(objective_section(record, options))
        assert again[1] == options                                # the JSON section round-trips
    assert OBJECTIVES["cd"].teacher and OBJECTIVES["progressive"].teacher and not OBJECTIVES["ct"].teacher
    assert model_options({"name": "shortcut"}) == {"time_inputs": 2} and model_options(None) == {}
    assert few_step_sampling({"name": "cd", "sample_steps": 1}) == ("consistency", 1, None)
    assert few_step_sampling({"name": "shortcut"}) == ("flowmap", 4, None)
    schedule = build_schedule({"kind": "linear"})
    assert few_step_sampling({"name": "progressive", "student_steps": 8}, schedule) == ("ddim", 8, "trailing")
    assert few_step_sampling(None) is None


def test_objective_sections_are_checked():
    with pytest.raises(UnknownNameError, match="unknown objective"):
        objective_options({"name": "meanflow"})
    with pytest.raises(ConfigError, match="unknown objective option"):
        objective_options({"name": "cd", "levelz": 3})
    with pytest.raises(ConfigError, match="solver"):
        objective_options({"name": "cd", "solver": "rk4"})
    with pytest.raises(ConfigError, match="power of two"):
        objective_options({"name": "shortcut", "max_steps": 100})
    with pytest.raises(ConfigError, match="\"name\""):
        objective_options({"levels": 3})
    diff = Diffusion({"parameterization": "v"})
    with pytest.raises(ConfigError, match="teacher"):
        build_objective({"name": "cd"}, diff)
    assert build_objective(None, diff) is diff


def test_timestep_embedding_of_two_inputs_is_two_halves_side_by_side():
    from diffuse.domains.layers import timestep_embedding

    t = torch.tensor([3.0, 700.0])
    one = timestep_embedding(t, 32)
    assert one.shape == (2, 32)
    two = timestep_embedding(torch.stack([t, t / 2], 1), 32)
    assert torch.equal(two[:, :16], timestep_embedding(t, 16)) and torch.equal(two[:, 16:], timestep_embedding(t / 2, 16))
    odd = timestep_embedding(torch.stack([t, t], 1), 34)
    assert odd.shape == (2, 34) and bool((odd[:, 34 - 0 - 0:] == 0).all())
    assert math.isfinite(float(odd.sum()))
