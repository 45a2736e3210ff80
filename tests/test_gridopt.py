"""Per-model optimised grids (core.gridopt, DiffusionModel.optimize_grid, `diffuse optimize-grid`):
never worse than the start on exact Gaussian-mixture problems, valid grids, storage round trip,
`sample` picking the stored grid only when sampler and steps match, and CLI errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from click.testing import CliRunner

from diffuse import api
from diffuse.cli.main import main
from diffuse.core import SAMPLERS, DenseSpace, LinearBetaSchedule, CosineSchedule, SigmaSchedule, time_grid
from diffuse.core.process.gaussian import GaussianMixture
from diffuse.core.sampling.generate import generate, sampling_grid
from diffuse.core.sampling.gridopt import (GRIDS_FILE, GridResult, check_grid, grid_error, load_grids, optimize_grid,
                                           save_grid, snap_grid, stored_grid)

from toy import points_domain

F64 = torch.float64
SPACE = DenseSpace()


def _problem(seed=3, n=128, d=3, noise_seed=1, schedule=None):
    sch = schedule or LinearBetaSchedule(num_steps=1000)
    gm = GaussianMixture.random(k=3, d=d, seed=seed)
    x = torch.randn(n, d, dtype=F64, generator=torch.Generator().manual_seed(noise_seed))
    start = sampling_grid(sch, "ddim", 5, None)
    return gm, sch, x * float(torch.sqrt(sum(v ** 2 for v in sch.alpha_sigma(start[0])))), start


def _exact_flow(den, sch, x):
    """The probability-flow ODE solved tightly (rk45, rtol 1e-9): a reference nobody tuned."""
    return SAMPLERS["rk45"](den, x.clone(), time_grid(sch, 2, "logsnr", t_min=1e-6), schedule=sch, space=SPACE,
                            rtol=1e-9, atol=1e-9)


def _assert_valid(grid, start, T=None):
    assert grid.dtype == F64 and grid.shape == start.shape
    assert bool((grid[1:] < grid[:-1]).all())
    assert float(grid[0]) == float(start[0]) and float(grid[-1]) == float(start[-1])
    if T:
        k = grid[:-1] * T
        assert torch.equal(k, k.round()) and float(k.min()) >= 1


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m"])
def test_never_worse_than_start_and_closer_to_the_exact_flow(sampler):
    gm, sch, x, _ = _problem()
    den = gm.denoiser(sch)
    start = sampling_grid(sch, sampler, 5, None)
    res = optimize_grid([(den, x, SPACE)], sch, start, sampler=sampler, max_evals=60, ref_steps=200)
    assert res.objective <= res.start_objective
    assert res.objective == min(res.history) and res.start_objective == res.history[0]
    _assert_valid(res.grid, start, T=1000)
    assert res.evaluations <= 60
    # against an independent truth: the exact probability-flow solution of the same noise
    flow = _exact_flow(den, sch, x)
    run = lambda g: SAMPLERS[sampler](den, x.clone(), g, schedule=sch, space=SPACE)
    e_start = grid_error([run(start)], [flow], [(den, x, SPACE)])
    e_opt = grid_error([run(res.grid)], [flow], [(den, x, SPACE)])
    assert e_opt < e_start
    # the reported objective is the error of the returned grid (up to the reference's own error)
    assert abs(e_opt - res.objective) < 0.1 * res.objective


@pytest.mark.parametrize("sch", [CosineSchedule(num_steps=None), SigmaSchedule()], ids=["vp-continuous", "ve-edm"])
def test_deterministic_and_continuous_schedule(sch):
    gm, _, x, _ = _problem(seed=4, n=64, schedule=sch)
    den = gm.denoiser(sch)
    start = sampling_grid(sch, "ddim", 4, None)
    a = optimize_grid([(den, x, SPACE)], sch, start, sampler="ddim", max_evals=25, ref_steps=100)
    b = optimize_grid([(den, x, SPACE)], sch, start, sampler="ddim", max_evals=25, ref_steps=100)
    assert torch.equal(a.grid, b.grid) and a.history == b.history
    assert a.objective <= a.start_objective
    _assert_valid(a.grid, start)
    assert float(a.grid[-2]) >= min(sch.t_min, float(start[-2]))


def test_stochastic_sampler_and_bad_grids_refused():
    gm, sch, x, start = _problem(n=16)
    with pytest.raises(ValueError, match="draws fresh noise"):
        optimize_grid([(gm.denoiser(sch), x, SPACE)], sch, start, sampler="ddpm", max_evals=3)
    with pytest.raises(ValueError, match="no free time"):
        optimize_grid([(gm.denoiser(sch), x, SPACE)], sch, start[[0, -1]], sampler="ddim")
    for bad in ([1.0, 0.5, 0.5, 0.0], [1.0, 0.2, 0.5, 0.0], [1.0, float("nan"), 0.0], [1.5, 0.5, 0.0], [[1.0, 0.0]]):
        with pytest.raises(ValueError):
            check_grid(bad)
    with pytest.raises(ValueError, match="3 steps, expected 4"):
        check_grid([1.0, 0.5, 0.2, 0.0], 4)


def test_snap_grid_distinct_trained_steps():
    g = torch.tensor([1.0, 0.9996, 0.9994, 0.0021, 0.0004, 0.0], dtype=F64)
    s = snap_grid(g, 1000)
    assert torch.equal(s * 1000, (s * 1000).round()) and bool((s[1:] < s[:-1]).all())
    assert s.tolist()[0] == 1.0 and s.tolist()[-2] == 0.001 and s.tolist()[-1] == 0.0


def test_storage_round_trip(tmp_path, caplog):
    sch = LinearBetaSchedule(num_steps=1000)
    grid = torch.tensor([1.0, 0.613, 0.251, 0.057, 0.0], dtype=F64)
    res = GridResult("dpmpp_2m", 4, grid, sampling_grid(sch, "dpmpp_2m", 4, None), 0.1, 0.2, 9)
    save_grid(tmp_path, res, sch, checkpoint_step=20, weights="ema")
    other = GridResult("ddim", 4, grid.flip(0).flip(0), grid, 0.3, 0.4, 5)
    save_grid(tmp_path, other, sch, checkpoint_step=20, weights="ema")
    assert len(load_grids(tmp_path)) == 2
    got, entry = stored_grid(tmp_path, "dpmpp_2m", 4, sch, checkpoint_step=20, weights="ema")
    assert torch.equal(got, grid) and entry["objective"] == 0.1 and entry["evaluations"] == 9
    assert stored_grid(tmp_path, "dpmpp_2m", 5, sch) is None                       # other steps
    assert stored_grid(tmp_path, "edm_heun", 4, sch) is None                       # other sampler
    assert stored_grid(tmp_path, "dpmpp_2m", 4, LinearBetaSchedule(num_steps=500)) is None   # other schedule
    with caplog.at_level(logging.WARNING):
        assert stored_grid(tmp_path, "dpmpp_2m", 4, sch, checkpoint_step=40, weights="ema") is None
    assert "optimised for checkpoint_step 20" in caplog.text
    # a corrupt file or a corrupt entry is ignored (sampling never depends on it)
    data = json.loads((tmp_path / GRIDS_FILE).read_text())
    key = next(k for k in data["grids"] if k.startswith("dpmpp_2m"))
    data["grids"][key]["grid"] = [1.0, 0.2, 0.5, 0.1, 0.0]
    (tmp_path / GRIDS_FILE).write_text(json.dumps(data))
    assert stored_grid(tmp_path, "dpmpp_2m", 4, sch, checkpoint_step=20, weights="ema") is None
    (tmp_path / GRIDS_FILE).write_text("{not json")
    assert load_grids(tmp_path) == {}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())            # no temporary left


# ------------------------------------------------------------------- a trained model, API and CLI
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    points_domain()
    out = tmp_path_factory.mktemp("gridopt") / "run"
    res = CliRunner().invoke(main, ["train", "--domain", "points2d", "--steps", "20", "--out", str(out),
                                    "--batch-size", "64", "--device", "cpu", "--no-progress", "--eval-samples", "0"])
    assert res.exit_code == 0, res.output
    return out


def test_cli_optimize_then_sample_uses_it_only_when_matching(run_dir, caplog):
    res = CliRunner().invoke(main, ["optimize-grid", "-c", str(run_dir), "--nfe", "4", "--sampler", "dpmpp_2m",
                                    "--num", "32", "--max-evals", "12", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "optimised grid:" in res.output and "default grid:" in res.output
    entry = next(iter(load_grids(run_dir).values()))
    assert entry["sampler"] == "dpmpp_2m" and entry["nfe"] == 4 and entry["weights"] == "ema"
    assert entry["objective"] <= entry["start_objective"] and entry["checkpoint_step"] == 20
    # plant a clearly different grid so that the hook's effect is visible
    model = api.load(run_dir, device="cpu")
    sch = model.diffusion.schedule
    planted = torch.tensor([1.0, 0.7, 0.3, 0.05, 0.0], dtype=F64)
    save_grid(run_dir, GridResult("dpmpp_2m", 4, planted, planted, 0.1, 0.2, 1), sch, checkpoint_step=20,
              weights="ema")
    with caplog.at_level(logging.WARNING):
        used = model.sample(8, sampler="dpmpp_2m", steps=4, seed=3)
    assert "using the optimised dpmpp_2m grid for 4 steps" in caplog.text
    explicit = generate(model.denoiser, model.domain, 8, sampler="dpmpp_2m", steps=4, seed=3, grid=planted)
    default = generate(model.denoiser, model.domain, 8, sampler="dpmpp_2m", steps=4, seed=3)
    assert torch.equal(used.x, explicit.x) and not torch.equal(used.x, default.x)
    # --spacing overrides; other steps, another sampler or other weights: the default grid
    spaced = model.sample(8, sampler="dpmpp_2m", steps=4, seed=3, spacing="trailing")
    assert torch.equal(spaced.x, generate(model.denoiser, model.domain, 8, sampler="dpmpp_2m", steps=4, seed=3,
                                          spacing="trailing").x)
    assert model.stored_grid("dpmpp_2m", 5) is None and model.stored_grid("ddim", 4) is None
    assert api.load(run_dir, device="cpu", ema=False).stored_grid("dpmpp_2m", 4) is None
    assert model.untrained().stored_grid("dpmpp_2m", 4) is None


@pytest.mark.parametrize("args, match", [
    (["--nfe", "1"], "--nfe must be 2 or more"),
    (["--nfe", "4", "--sampler", "nope"], "unknown sampler 'nope'"),
    (["--nfe", "4", "--sampler", "ddpm"], "draws fresh noise"),
    (["--nfe", "4", "--num", "0"], "must be positive"),
    (["--nfe", "4", "--device", "tpu"], "device"),
    (["--nfe", "5000"], "trained with T="),
])
def test_cli_errors(run_dir, args, match):
    before = sorted(p.name for p in run_dir.iterdir())
    res = CliRunner().invoke(main, ["optimize-grid", "-c", str(run_dir), "--num", "8", *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and match in res.output, res.output
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_cli_missing_run(tmp_path):
    res = CliRunner().invoke(main, ["optimize-grid", "-c", str(tmp_path / "none"), "--nfe", "4"])
    assert res.exit_code == 2 and "does not exist" in res.output
