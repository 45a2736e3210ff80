"""The trainer and the Python API, on the README's toy domain (fast, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import diffuse.api as api
from diffuse.core.errors import CheckpointError
from diffuse.core.training.checkpoint import load_checkpoint
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.training.optim import lr_lambda as _lr_lambda
from diffuse.core.config import TrainConfig

from toy import points_domain

FAST = dict(batch_size=64, warmup_steps=5, eval_samples=64, log_every=5, checkpoint_every=0, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _register():
    points_domain()


def _weights(run_dir):
    return load_file(str(run_dir / "checkpoint" / "model.safetensors")), load_file(str(run_dir / "checkpoint" / "ema.safetensors"))


def test_resume_is_exact(tmp_path):
    """N steps, stop, resume for N more == 2N steps in one go (weights, EMA and optimizer)."""
    n = 12
    api.train("points2d", out=tmp_path / "full", steps=2 * n, progress=False, final_eval=False, **FAST)
    api.train("points2d", out=tmp_path / "half", steps=2 * n, progress=False, final_eval=False, stop_at=n, **FAST)
    assert load_checkpoint(tmp_path / "half")["meta"]["step"] == n
    api.train("points2d", resume=tmp_path / "half", progress=False)
    (m_full, e_full), (m_half, e_half) = _weights(tmp_path / "full"), _weights(tmp_path / "half")
    assert m_full.keys() == m_half.keys()
    for k in m_full:
        assert torch.equal(m_full[k], m_half[k]), k
        assert torch.equal(e_full[k], e_half[k]), k
    # and it did move: resumed weights differ from the paused ones
    log = [json.loads(line) for line in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r][-1] == 2 * n


def test_training_lowers_loss_and_beats_untrained(tmp_path):
    res = api.train("points2d", out=tmp_path / "run", steps=150, progress=False, **{**FAST, "eval_samples": 400})
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    model = api.load(tmp_path / "run")
    trained = model.evaluate(400, steps=30)["energy_distance"]
    untrained = api.build("points2d", model.data_info, device="cpu")
    untrained.config.train = model.config.train
    baseline = untrained.domain.metrics(untrained.sample(400, steps=30), model.reference_data())
    assert trained < 0.5 * baseline["energy_distance"]
    assert (res.sample_dir / "points.csv").is_file()


def test_sampling_is_batch_size_independent(tmp_path):
    api.train("points2d", out=tmp_path / "run", steps=5, progress=False, final_eval=False, **FAST)
    model = api.load(tmp_path / "run")
    for sampler, opts in [("ddim", {"eta": 0.5}), ("ddpm", {})]:
        a = model.sample(10, sampler=sampler, steps=20, seed=3, batch_size=10, **opts).x
        b = model.sample(10, sampler=sampler, steps=20, seed=3, batch_size=3, **opts).x
        c = model.sample(10, sampler=sampler, steps=20, seed=4, batch_size=10, **opts).x
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(a, c)


def test_lr_schedule_warmup_then_cosine():
    f = _lr_lambda(TrainConfig(steps=110, warmup_steps=10, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)


def test_checkpoint_is_never_half_written(tmp_path):
    api.train("points2d", out=tmp_path / "run", steps=4, progress=False, final_eval=False, **FAST)
    # a kill between the two renames leaves checkpoint.old: it is still loadable
    (tmp_path / "run" / "checkpoint").rename(tmp_path / "run" / "checkpoint.old")
    assert api.load(tmp_path / "run").config.domain == "points2d"
    (tmp_path / "run" / "checkpoint.old").rename(tmp_path / "run" / "checkpoint")
    f = tmp_path / "run" / "checkpoint" / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        api.load(tmp_path / "run")


def test_bad_options_are_clear(tmp_path):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        api.make_config("points2d", steps=0)
    with pytest.raises(ValueError, match="unknown train option"):
        api.make_config("points2d", config={"train": {"stepz": 3}})
    with pytest.raises(ValueError, match="unknown domain"):
        api.make_config("nope")


def test_periodic_sampling_and_evaluation(tmp_path):
    # eval_budget null: every evaluation as configured (by default a 10-step run's periodic ones
    # would be skipped as costing more than their share of the training time; test_eval_budget.py)
    api.train("points2d", out=tmp_path / "run", steps=10, progress=False, config={"train": {"eval_budget": None}},
              **{**FAST, "sample_every": 4, "eval_samples": 32, "eval_steps": 5})
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [4, 8, 10]
    assert all(math.isfinite(r["energy_distance"]) for r in evals)
    for tag in ("step_000004", "step_000008", "final"):
        assert len((tmp_path / "run" / "samples" / tag / "points.csv").read_text().splitlines()) == 32


def test_gradient_accumulation_sees_every_micro_batch(tmp_path):
    """grad_accum=2 with batch B reads the same samples per step as one batch of 2B (data order)."""
    from diffuse.core.training.trainer import Trainer

    cfgs = [api.make_config("points2d", steps=3, batch_size=8, grad_accum=2, device="cpu"),
            api.make_config("points2d", steps=3, batch_size=16, grad_accum=1, device="cpu")]
    seen = []
    for cfg in cfgs:
        dom = api.get_domain("points2d")
        data = dom.load_data(None, {})
        dom = dom.bind(data.info())
        trainer = Trainer(tmp_path, cfg, dom, Diffusion(cfg.diffusion),
                          Diffusion(cfg.diffusion).denoiser(dom.build_backbone(cfg.model)),
                          data, progress=False)
        step1 = [trainer.batches.indices((1 * cfg.train.grad_accum + m) * cfg.train.batch_size, cfg.train.batch_size)
                 for m in range(cfg.train.grad_accum)]
        seen.append(torch.cat(step1))
    assert torch.equal(seen[0], seen[1])
