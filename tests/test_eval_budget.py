"""Evaluation after (and during) training is bounded by a share of the training time, states its
cost first, and ``--eval-samples 0`` skips it. Sampler calls are counted, never timed."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

import diffuse.api as api
from diffuse.cli.main import main
from diffuse.core.process.denoiser import Denoiser
from diffuse.core.training.evalbudget import MIN_SAMPLES, MIN_STEPS, calls_per_step, plan

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"model": {"preset": "tiny"}}
SMOKE = dict(steps=3, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=0, device="cpu", seed=0)


def test_plan_keeps_an_affordable_evaluation_and_never_exceeds_the_configured_one():
    p = plan(64, 50, "ddim", per_sample_call=1e-4, budget=10.0)      # 64 * 50 * 1e-4 = 0.32 s
    assert (p.samples, p.steps, p.reduced) == (64, 50, False)
    assert math.isclose(p.seconds, 0.32)
    p = plan(64, 50, "ddim", per_sample_call=1.0, budget=None)       # no bound: as configured
    assert (p.samples, p.steps) == (64, 50) and p.within_budget()
    p = plan(8, 5, "ddim", per_sample_call=10.0, budget=1.0)        # below the minimum already
    assert (p.samples, p.steps) == (8, 5)


def test_plan_reduces_samples_first_then_steps_down_to_the_minimum():
    c = 1.4 / 64                                                    # the molecules: 1.4 s per call of 64
    p = plan(64, 500, "ddpm", c, budget=300.0)                      # 300 / (c * 500) = 27.4 samples
    assert (p.samples, p.steps) == (27, 500) and p.reduced and p.seconds <= 300.0
    p = plan(64, 500, "ddpm", c, budget=30.0)                       # 16 samples, then 30 / (c * 16) = 85.7 steps
    assert (p.samples, p.steps) == (MIN_SAMPLES, 85) and p.seconds <= 30.0
    p = plan(64, 500, "ddpm", c, budget=0.01)                       # the minimum, over budget
    assert (p.samples, p.steps) == (MIN_SAMPLES, MIN_STEPS) and not p.within_budget()
    p = plan(64, 50, "edm_heun", 0.01, budget=16.0)                 # two calls per step: 16 / (0.02 * 50) = 16
    assert calls_per_step("edm_heun") == 2 and (p.samples, p.steps) == (16, 50)
    assert "16 samples x 50 steps edm_heun" in p.describe()


class _Calls:
    """Counts the network calls made without gradients (evaluation: the cost probe and the sampler)."""

    def __init__(self, monkeypatch):
        self.n = 0
        forward = Denoiser.forward

        def counted(module, *args, **kwargs):
            if not module.training:
                self.n += 1
            return forward(module, *args, **kwargs)
        monkeypatch.setattr(Denoiser, "forward", counted)


def _evals(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("event") == "eval"]


def test_smoke_run_evaluation_is_scaled_down_to_its_budget(tmp_path, monkeypatch):
    """The issue's case: a few steps with the molecules defaults (64 samples x 500 DDPM steps),
    at a fixed cost of a call (5.76 s for 64 molecules: drug-sized ones on a loaded CPU)."""
    calls = _Calls(monkeypatch)
    monkeypatch.setattr("diffuse.core.training.trainer.seconds_per_sample_call", lambda *a, **k: 0.09)
    cfg = api.make_config("molecules", config=TINY, **SMOKE)
    assert (cfg.train.eval_samples, cfg.train.eval_steps, cfg.train.eval_sampler) == (64, 500, "ddpm")
    api.train("molecules", out=tmp_path / "run", config=TINY, progress=False, **SMOKE)
    (rec,) = _evals(tmp_path / "run")
    # a 3-step run trains for far less than 150 s, so the budget is the 30 s floor:
    # 16 samples, then floor(30 s / (16 * 0.09 s)) = 20 steps, one call each (one chunk of 16);
    # as configured it would be 64 x 500 x 0.09 s = 48 minutes
    assert rec["budget_seconds"] == 30.0
    assert (rec["num"], rec["steps"]) == (16, 20)
    assert calls.n == 20
    assert rec["estimated_seconds"] <= 30.0
    assert len(list((tmp_path / "run" / "samples" / "final").glob("*.sdf"))) >= 1


def test_minimum_evaluation_counts_its_calls_and_periodic_ones_skip(tmp_path, monkeypatch):
    calls = _Calls(monkeypatch)
    api.train("molecules", out=tmp_path / "run", config=TINY, progress=False,
              **{**SMOKE, "steps": 4, "sample_every": 2, "eval_budget": 1e-9, "eval_min_seconds": 0.0,
                 "eval_sampler": "ddim", "eval_steps": 40})
    (rec,) = _evals(tmp_path / "run")                               # the periodic one at step 2 was skipped
    assert rec["step"] == 4 and (rec["num"], rec["steps"]) == (MIN_SAMPLES, MIN_STEPS)
    # the final: 2 probe calls + 10 sampler steps; the skipped periodic one: its 2 probe calls only
    assert calls.n == 2 + (2 + MIN_STEPS)
    assert not (tmp_path / "run" / "samples" / "step_000002").exists()


def test_unbounded_budget_runs_the_configured_evaluation(tmp_path, monkeypatch):
    calls = _Calls(monkeypatch)
    # (a keyword None means "not given" in api.train; null in the config is "no bound")
    api.train("molecules", out=tmp_path / "run", config={**TINY, "train": {"eval_budget": None}}, progress=False,
              **{**SMOKE, "eval_samples": 20, "eval_sampler": "ddim", "eval_steps": 7})
    (rec,) = _evals(tmp_path / "run")
    assert (rec["num"], rec["steps"], rec["budget_seconds"]) == (20, 7, None)
    assert calls.n == 2 + 7


def test_cli_eval_samples_zero_skips_evaluation(tmp_path, monkeypatch):
    calls = _Calls(monkeypatch)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--domain", "molecules", "--config", str(cfg), "--steps", "2",
                                    "--batch-size", "8", "--device", "cpu", "--out", str(out),
                                    "--eval-samples", "0", "--sample-every", "1"])
    assert res.exit_code == 0, res.output
    assert "metrics:" not in res.output and "evaluation" not in res.output
    assert calls.n == 0 and _evals(out) == []
    assert not (out / "samples").exists() and not (out / "evaluation.json").exists()


def test_cli_states_the_cost_before_evaluating(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY, "train": {"eval_steps": 5, "eval_sampler": "ddim"}}))
    res = CliRunner().invoke(main, ["train", "--domain", "molecules", "--config", str(cfg), "--steps", "2",
                                    "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run"),
                                    "--eval-samples", "4"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("final evaluation:"))
    assert "4 samples x 5 steps ddim" in line and " s" in line
    assert res.output.index("final evaluation:") < res.output.index("metrics:")


@pytest.mark.parametrize("bad, message", [({"eval_budget": 0}, "train.eval_budget"),
                                          ({"eval_budget": -0.1}, "train.eval_budget"),
                                          ({"eval_min_seconds": -1}, "train.eval_min_seconds"),
                                          ({"eval_budget": "10%"}, "train.eval_budget")])
def test_budget_settings_are_validated(bad, message):
    with pytest.raises(ValueError, match=message):
        api.make_config("molecules", config={"train": bad})


def test_smiles_rdkit_cannot_embed_is_skipped_not_a_traceback(tmp_path):
    """The issue's suggested input, RDKit's NCI first_5K.smi, holds a zinc chelate (line 865) on
    which ETKDG raises RuntimeError("Invariant Violation"): that record is skipped with its reason."""
    path = tmp_path / "drugs.smi"
    path.write_text("C1C[N+]2=CC3=CC=CC=C3O[Zn]24OC5=CC=CC=C5C=[N+]14 zinc\nCCO ethanol\nc1ccccc1O phenol\n")
    ds = api.get_domain("molecules").load_data(str(path), {})
    assert len(ds) == 2
    assert any("Invariant Violation" in reason for _, reason in ds.skipped)
