"""Few-step models, trained: consistency distillation with the exact denoiser as teacher approaches
the exact probability-flow map (its error falls as training grows; one step reaches a stated share
of the teacher's quality), and the whole path through the Trainer, ``diffuse distill``, resume,
``diffuse sample`` and the ``--training ct`` / ``shortcut`` presets."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from diffuse.core.data.space import DenseSpace
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.process.gaussian import energy_distance
from diffuse.core.process.objectives import build_objective, make_denoiser
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.core.sampling.registry import SAMPLERS

from fewstep_toy import TimeMLP, mixture, train
from tiny import TINY_UNET, train_tiny_image

F64 = torch.float64
SPACE = DenseSpace()


@pytest.fixture(scope="module")
def exact_problem():
    """A 3-component mixture in 2-D on the DDPM linear schedule, its exact 1-step... 50-step answers."""
    torch.set_num_threads(1)
    gm = mixture(0, k=3)
    diff = Diffusion({"parameterization": "edm", "schedule": {"kind": "linear"}, "training": "continuous",
                      "sigma_data": 1.0})
    n = 512
    x_T = prior_sample(diff.schedule, SPACE, torch.zeros(n, 2, dtype=F64), 1.0, torch.Generator().manual_seed(123))
    exact_den = gm.denoiser(diff.schedule)
    exact = SAMPLERS["dpmpp_3m"].fn(exact_den, x_T, time_grid(diff.schedule, 200, "logsnr"), schedule=diff.schedule,
                                    space=SPACE)
    truth = gm.sample(2000, torch.Generator().manual_seed(7))
    teacher_ed = {nfe: energy_distance(SAMPLERS["ddim"].fn(exact_den, x_T, time_grid(diff.schedule, nfe, "auto"),
                                                            schedule=diff.schedule, space=SPACE), truth)
                  for nfe in (1, 2, 50)}
    return gm, diff, x_T, exact, truth, teacher_ed


def _one_step(model, diff, x_T):
    with torch.no_grad():
        return model(x_T.float(), torch.full((len(x_T),), diff.schedule.t_max, dtype=F64), space=SPACE).x0.double()


def test_consistency_distillation_approaches_the_exact_flow_map(exact_problem):
    """The exact denoiser as teacher: the one-step map's error against the exact ODE map falls as
    training grows (80 -> 320 steps) and ends well below one DDIM step's; one evaluation of the
    distilled model is closer to the data (energy distance) than the teacher's DDIM at 2
    evaluations and has at most 0.35 of the teacher's 1-step distance. (The full study, on
    held-out mixtures: ``benchmarks/bench_fewstep.py exact``, docs/guides/few-step.md.)"""
    gm, diff, x_T, exact, truth, teacher_ed = exact_problem
    errors, eds = {}, {}
    for steps in (80, 320):
        torch.manual_seed(0)
        model = make_denoiser(None, diff, TimeMLP(width=64))
        objective = build_objective({"name": "cd", "levels": 12}, diff, gm.conditional_model(diff.schedule), steps)
        model = train(objective, model, gm, steps, batch=128, lr=3e-3)
        one = _one_step(model, diff, x_T)
        errors[steps] = float(((one - exact) ** 2).sum(1).mean().sqrt())
        eds[steps] = energy_distance(one, truth)
    ddim1 = SAMPLERS["ddim"].fn(gm.denoiser(diff.schedule), x_T, time_grid(diff.schedule, 1, "auto"),
                                schedule=diff.schedule, space=SPACE)
    ddim1_error = float(((ddim1 - exact) ** 2).sum(1).mean().sqrt())
    assert errors[320] < 0.75 * errors[80], errors
    assert errors[320] < 0.7 * ddim1_error, (errors, ddim1_error)
    # one step of the distilled model: better than the teacher's 2-step DDIM, a fraction of its 1-step distance
    assert eds[320] < teacher_ed[2], (eds, teacher_ed)
    assert eds[320] < 0.35 * teacher_ed[1], (eds, teacher_ed)


# ----------------------------------------------------------------------------- through the Trainer
def test_consistency_training_follows_the_runs_step_and_resumes_exactly(tmp_path):
    """``--training ct`` (the preset selects the objective): iCT's curriculum changes N at steps 8
    and 16 of 24; a run stopped at 12 and resumed ends with the weights of one run of 24 steps (the
    objective reads the trainer's step, also after a resume), and samples with 2 consistency steps."""
    import diffuse.api as api
    from diffuse.core.training.checkpoint import load_checkpoint
    from toy import points_domain

    points_domain()
    fast = dict(batch_size=32, warmup_steps=2, log_every=4, checkpoint_every=0, device="cpu", final_eval=False)
    cfg = {"objective": {"name": "ct", "levels": 8, "levels_start": 2}}
    api.train("points2d", out=tmp_path / "full", steps=24, progress=False, config=cfg, diffusion={"training": "ct"},
              **fast)
    api.train("points2d", out=tmp_path / "half", steps=24, progress=False, config=cfg, diffusion={"training": "ct"},
              stop_at=12, **fast)
    api.train("points2d", resume=tmp_path / "half", progress=False)
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "half")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the curriculum did move: N fixed at its start value trains other weights
    fixed = {"objective": {"name": "ct", "levels": 2, "levels_start": 2}}
    api.train("points2d", out=tmp_path / "fixed", steps=24, progress=False, config=fixed,
              diffusion={"training": "ct"}, **fast)
    c = load_checkpoint(tmp_path / "fixed")
    assert not all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["objective"]["name"] == "ct" and saved["diffusion"]["parameterization"] == "edm"
    model = api.load(tmp_path / "full", device="cpu")
    assert model.default_sampling() == ("consistency", 2)
    assert model.sample(8, seed=1).x.shape == (8, 2)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny label-conditional image model (2 training steps): the teacher of the CLI tests."""
    root = tmp_path_factory.mktemp("fewstep")
    return train_tiny_image(root, "teacher", ["--condition", "label"])


def _cli(*args):
    from diffuse.cli.main import main

    return CliRunner().invoke(main, list(map(str, args)))


def _quiet_config(root):
    path = root / "distill.json"
    path.write_text(json.dumps({"train": {"final_eval": False}}))
    return path


def test_distill_cli_writes_a_few_step_run_that_samples_and_resumes(teacher, tmp_path):
    import diffuse.api as api

    out = tmp_path / "cd"
    res = _cli("distill", "-c", teacher, "--out", out, "--train-steps", 2, "--batch-size", 4, "--device", "cpu",
               "--config", _quiet_config(tmp_path), "--steps", 1, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "distilled (cd) 2 steps" in res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["version"] == 3 and cfg["objective"]["name"] == "cd" and cfg["objective"]["sample_steps"] == 1
    assert cfg["objective"]["teacher"]["run"] == str(teacher.resolve()) and len(cfg["objective"]["teacher"]["sha256"]) == 64
    assert cfg["init"] == cfg["objective"]["teacher"] and cfg["model"] == json.loads((teacher / "config.json").read_text())["model"]
    model = api.load(out, device="cpu")
    assert model.default_sampling() == ("consistency", 1)
    assert model.sample(3, cond={"label": 4}).x.shape == (3, 1, 28, 28)
    res = _cli("sample", "--checkpoint", out, "--num", 2, "--out", tmp_path / "s")
    assert res.exit_code == 0, res.output
    # resume (a constant learning rate lets the total grow): the teacher is loaded again, checked unchanged
    res = _cli("train", "--resume", out, "--steps", 3, "--no-progress")
    assert res.exit_code == 0, res.output
    cfg["objective"]["teacher"]["sha256"] = "0" * 64
    (out / "config.json").write_text(json.dumps(cfg))
    res = _cli("train", "--resume", out, "--steps", 4, "--no-progress")
    assert res.exit_code == 2 and "has changed since this run started" in res.output


def test_progressive_distillation_runs_rounds_that_halve_the_steps(teacher, tmp_path):
    out = tmp_path / "pd"
    res = _cli("distill", "-c", teacher, "--out", out, "--method", "progressive", "--start-steps", 2, "--steps", 1,
               "--train-steps", 1, "--batch-size", 4, "--device", "cpu", "--config", _quiet_config(tmp_path),
               "--no-progress")
    assert res.exit_code == 0, res.output
    first = json.loads((out / "rounds" / "2-steps" / "config.json").read_text())["objective"]
    last = json.loads((out / "config.json").read_text())["objective"]
    assert first["student_steps"] == 2 and first["teacher"]["run"] == str(teacher.resolve())
    assert last["student_steps"] == 1 and last["teacher"]["run"] == str((out / "rounds" / "2-steps").resolve())
    import diffuse.api as api

    model = api.load(out, device="cpu")
    assert model.default_sampling() == ("ddim", 1) and model.spacing_used("ddim", 1) == "trailing"


def test_distill_refuses_what_it_cannot_do_in_one_line(teacher, tmp_path):
    cases = [
        (["-c", teacher, "--pretrained", "image"], "give one"),
        (["-c", teacher, "--method", "progressive", "--start-steps", 3], "powers of two"),
        (["-c", teacher, "--method", "ct", "--guidance-scale", 2], "needs a teacher's evaluations"),
        (["-c", tmp_path / "missing"], "does not exist"),
    ]
    for extra, message in cases:
        res = _cli("distill", "--out", tmp_path / "x", "--device", "cpu", *extra)
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
        assert not (tmp_path / "x").exists()
    res = _cli("distill", "-c", teacher, "--out", teacher, "--device", "cpu")
    assert res.exit_code == 2 and "already holds a run" in res.output


def test_a_training_config_cannot_name_a_distillation(tmp_path):
    import diffuse.api as api
    from diffuse.core.errors import ConfigError

    with pytest.raises(ConfigError, match="diffuse distill"):
        api.make_config("image", config={"objective": {"name": "cd"}})
    cfg = api.make_config("image", diffusion={"training": "shortcut"})
    assert cfg.objective["name"] == "shortcut" and cfg.model["time_inputs"] == 2
    assert cfg.diffusion.parameterization == "flow" and cfg.diffusion.schedule["kind"] == "flow"


def test_a_few_step_run_ends_with_its_evaluation(tmp_path):
    """The trainer's final evaluation samples a few-step model through its process (the objective
    is not the process: ``SamplesThroughDiffusion``), and writes its samples and metrics."""
    import diffuse.api as api
    from toy import points_domain

    points_domain()
    api.train("points2d", out=tmp_path / "run", steps=4, progress=False,
              config={"objective": {"name": "ct", "levels": 4, "levels_start": 2}}, diffusion={"training": "ct"}, batch_size=16, warmup_steps=1, checkpoint_every=0, device="cpu",
              eval_samples=8, eval_steps=2, eval_budget=None)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals and evals[-1]["num"] == 8 and (tmp_path / "run" / "samples" / "final").is_dir()
