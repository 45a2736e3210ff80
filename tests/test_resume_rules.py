"""What a resume may change, and what it refuses (before anything is written): steps and the
LR schedule, --config on resume, divergence, mismatched weights, metrics after a kill, --out."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import diffuse.api as api
from diffuse.cli.main import main
from diffuse.core.errors import CheckpointError
from diffuse.core.training.checkpoint import load_checkpoint
from diffuse.core.errors import TrainingDiverged

from toy import points_domain

FAST = dict(batch_size=32, warmup_steps=3, eval_samples=32, eval_steps=5, log_every=1, checkpoint_every=0,
            device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _register():
    points_domain()


def _files(run):
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def _same_weights(a, b):
    a, b = load_checkpoint(a), load_checkpoint(b)
    assert a["model"].keys() == b["model"].keys()
    return all(torch.equal(a[w][k], b[w][k]) for w in ("model", "ema") for k in a["model"])


def _cli(args):
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def test_constant_schedule_extends_exactly_and_cosine_refuses(tmp_path):
    """lr_schedule constant: 20 steps, then resume to 40 == 40 in one go, bit for bit. Cosine:
    extending is refused with a clear message (config.json untouched); resuming to the same
    total stays exact (tests/test_trainer_api.py::test_resume_is_exact)."""
    const = {**FAST, "lr_schedule": "constant"}
    api.train("points2d", out=tmp_path / "once", steps=40, progress=False, final_eval=False, **const)
    api.train("points2d", out=tmp_path / "ext", steps=20, progress=False, final_eval=False, **const)
    assert not _same_weights(tmp_path / "once", tmp_path / "ext")
    api.train("points2d", resume=tmp_path / "ext", steps=40, progress=False)
    assert _same_weights(tmp_path / "once", tmp_path / "ext")
    # a cosine run can be paused and resumed to its own total (exact), but not extended
    api.train("points2d", out=tmp_path / "cos", steps=20, stop_at=10, progress=False, final_eval=False, **FAST)
    before = _files(tmp_path / "cos")
    with pytest.raises(ValueError, match=r"cosine learning-rate schedule .* lr_schedule \"constant\""):
        api.train("points2d", resume=tmp_path / "cos", steps=40, progress=False)
    with pytest.raises(ValueError, match="cosine"):
        api.train("points2d", resume=tmp_path / "cos", steps=15, progress=False)
    assert _files(tmp_path / "cos") == before
    with pytest.raises(ValueError, match="lr_schedule must be one of cosine, constant"):
        api.train("points2d", out=tmp_path / "bad", steps=3, lr_schedule="step", progress=False, **FAST)
    assert not (tmp_path / "bad").exists()


def test_resume_below_the_checkpoint_or_of_a_finished_run_is_one_error(tmp_path):
    run = tmp_path / "run"
    api.train("points2d", out=run, steps=10, stop_at=6, progress=False, final_eval=False,
              **{**FAST, "lr_schedule": "constant"})
    before = _files(run)
    for steps in (3, 6):
        with pytest.raises(ValueError, match=f"cannot resume .* to {steps} steps: its checkpoint is already at step 6"):
            api.train("points2d", resume=run, steps=steps, progress=False)
    assert _files(run) == before
    api.train("points2d", resume=run, progress=False)
    finished = _files(run)
    code, out = _cli(["train", "--resume", str(run), "--no-progress"])
    assert code == 2 and out.strip() == (f"error: {run} is already finished (10 of 10 steps); pass --steps N above 10 "
                                         "to train on (lr_schedule constant runs only), or start a new run with --out")
    assert "nan" not in out
    assert _files(run) == finished


def test_config_file_on_resume_applies_what_may_change_and_refuses_the_rest(tmp_path):
    run = tmp_path / "run"
    api.train("points2d", out=run, steps=8, stop_at=4, progress=False, final_eval=False, **FAST)
    before = _files(run)
    refused = [({"train": {"lr": 0.5}}, "train.lr = 0.5: the run was trained with 0.001"),
               ({"model": {"width": 64}}, "model.width = 64: the run was trained with 128"),
               ({"diffusion": {"parameterization": "v"}}, "diffusion.parameterization = 'v'"),
               ({"data_options": {"x": 1}}, "data_options.x = 1")]
    for cfg, match in refused:
        path = tmp_path / "c.json"
        path.write_text(json.dumps(cfg))
        code, out = _cli(["train", "--resume", str(run), "--config", str(path), "--no-progress"])
        assert code == 2 and len(out.strip().splitlines()) == 1 and match in out, out
    with pytest.raises(ValueError, match="unknown train option"):
        api.train("points2d", resume=run, config={"train": {"stepz": 3}}, progress=False)
    with pytest.raises(ValueError, match="train.batch_size = 7"):
        api.train("points2d", resume=run, batch_size=7, progress=False)
    assert _files(run) == before
    # unchanged values of other keys are fine; evaluation / logging keys apply
    same = {"train": {"lr": 1e-3, "eval_samples": 48, "log_every": 2, "final_eval": True},
            "model": {"width": 128}, "diffusion": {"parameterization": "eps"}}
    res = api.train("points2d", resume=run, config=same, progress=False)
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["eval_samples"] == 48 and saved["log_every"] == 2 and saved["final_eval"] is True
    assert len((res.sample_dir / "points.csv").read_text().splitlines()) == 48
    logged = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert logged == [1, 2, 3, 4, 6, 8]


def test_divergence_saves_the_last_good_step_and_is_one_error(tmp_path):
    run = tmp_path / "run"
    code, out = _cli(["train", "--domain", "points2d", "--lr", "1e6", "--steps", "30", "--out", str(run),
                      "--batch-size", "32", "--device", "cpu", "--no-progress"])
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "error: training diverged at step" in out and f"is in {run}; lower --lr" in out
    k = int(out.split("the last good checkpoint (step ")[1].split(")")[0])
    assert f"diverged at step {k + 1} (" in out
    ck = load_checkpoint(run, with_state=True)
    assert ck["state"]["step"] == k
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    with pytest.raises(TrainingDiverged) as info:
        api.train("points2d", out=tmp_path / "api", lr=1e6, steps=30, progress=False, **FAST)
    assert isinstance(info.value, ValueError)


def test_mismatched_weights_are_one_line_with_the_first_mismatch(tmp_path):
    run = tmp_path / "run"
    api.train("points2d", out=run, steps=4, stop_at=2, progress=False, final_eval=False, **FAST)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["width"] = 64
    (run / "config.json").write_text(json.dumps(cfg))
    before = _files(run)
    msg = (r"weights in .* do not fit the model its config describes: size mismatch for backbone.net.0.weight: "
           r"checkpoint \[128, 34\] vs model \[64, 34\] \(and 6 other mismatched tensors\)")
    with pytest.raises(CheckpointError, match=msg):
        api.train("points2d", resume=run, progress=False)
    assert _files(run) == before  # config.json not rewritten
    with pytest.raises(CheckpointError, match=msg):
        api.load(run)
    code, out = _cli(["sample", "-c", str(run), "--num", "2", "--out", str(tmp_path / "s")])
    assert code == 2 and len(out.strip().splitlines()) == 1 and "size mismatch for backbone.net.0.weight" in out


def test_resume_after_a_kill_drops_the_metrics_logged_after_the_checkpoint(tmp_path):
    """A killed run logged steps 5..7 after its step-4 checkpoint (and a torn last line):
    resuming keeps records up to step 4, then logs 5..8 once."""
    run = tmp_path / "run"
    api.train("points2d", out=run, steps=8, stop_at=4, progress=False, final_eval=False, **FAST)
    with open(run / "metrics.jsonl", "a") as fh:
        for step in (5, 6, 7):
            fh.write(json.dumps({"step": step, "loss": 1.0}) + "\n")
        fh.write('{"step": 8, "lo')
    api.train("points2d", resume=run, progress=False)
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 9))
    assert all(r["loss"] != 1.0 for r in records if r["step"] > 4 and "loss" in r)


def test_out_must_be_new_empty_or_refused(tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "metrics.jsonl").write_text('{"step": 99}\n')
    code, out = _cli(["train", "--domain", "points2d", "--steps", "2", "--out", str(stale), "--device", "cpu",
                      "--no-progress"])
    assert code == 2 and out.strip() == f"error: {stale} is not empty and is not a diffuse run folder; choose a new or empty --out"
    assert sorted(p.name for p in stale.iterdir()) == ["metrics.jsonl"]
    empty = tmp_path / "empty"
    empty.mkdir()
    api.train("points2d", out=empty, steps=2, progress=False, final_eval=False, **FAST)
    with pytest.raises(FileExistsError, match="already holds a run"):
        api.train("points2d", out=empty, steps=2, progress=False, **FAST)
