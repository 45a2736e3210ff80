"""`diffuse train --init RUN|pretrained:NAME`: a new run that starts from a trained model's weights
(fine-tuning, or a finished run continued with a new learning-rate schedule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import diffuse.api as api
import diffuse.pretrained as pretrained
from diffuse.cli.main import main
from diffuse.pretrained.export import export
from tiny import TINY_UNET, train_tiny_image


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return train_tiny_image(tmp_path_factory.mktemp("src"), "src", ["--seed", "3"])


def _ck(run: Path) -> tuple[dict, dict]:
    return (load_file(str(run / "checkpoint" / "model.safetensors")),
            load_file(str(run / "checkpoint" / "ema.safetensors")))


def test_init_from_a_run_starts_from_its_weights_and_records_the_source(source, tmp_path):
    """0 optimiser steps would be the source itself: with the learning rate at 0 the raw weights
    stay the source's raw weights and the EMA stays the source's EMA (not re-warmed to the raw
    ones); the run records where it started."""
    cfg = tmp_path / "zero.json"
    cfg.write_text(json.dumps({"train": {"lr": 1e-12, "warmup_steps": 0, "final_eval": False}}))
    out = tmp_path / "ft"
    res = CliRunner().invoke(main, ["train", "--init", str(source), "--config", str(cfg), "--steps", "2",
                                    "--batch-size", "8", "--no-progress", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    src_model, src_ema = _ck(source)
    model, ema = _ck(out)
    assert any(not torch.equal(src_model[k], src_ema[k]) for k in src_model if src_model[k].is_floating_point())
    for k in src_model:
        assert torch.allclose(model[k], src_model[k], atol=1e-6), k
        assert torch.allclose(ema[k], src_ema[k], atol=1e-6), k
    run_cfg = api.read_run_config(out)
    assert run_cfg.domain == "image" and run_cfg.model == api.read_run_config(source).model   # the source's
    assert run_cfg.init["run"] == str(source.resolve()) and run_cfg.init["step"] == 2
    assert len(run_cfg.init["sha256"]) == 64


def test_init_trains_on_and_the_ema_continues_at_its_decay(source, tmp_path):
    """One real step: the raw weights move from the source's; the EMA is d * source EMA + (1 - d) *
    new raw weights at the configured decay d (no warm-up restart)."""
    out = tmp_path / "ft"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"ema_decay": 0.9, "final_eval": False}}))
    res = CliRunner().invoke(main, ["train", "--init", str(source), "--config", str(cfg), "--steps", "1",
                                    "--batch-size", "8", "--no-progress", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    _, src_ema = _ck(source)
    model, ema = _ck(out)
    moved = [k for k in model if model[k].is_floating_point() and not torch.equal(model[k], _ck(source)[0][k])]
    assert moved
    for k in moved:
        assert torch.allclose(ema[k], 0.9 * src_ema[k] + 0.1 * model[k], atol=1e-6), k


def test_init_from_pretrained_and_resume_of_the_new_run(source, tmp_path, monkeypatch):
    export(source, "tinysrc", root=tmp_path)
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    out = tmp_path / "ft"
    res = CliRunner().invoke(main, ["train", "--init", "pretrained:tinysrc", "--steps", "2", "--batch-size", "8",
                                    "--no-progress", "--device", "cpu", "--out", str(out), "--eval-samples", "0"])
    assert res.exit_code == 0, res.output
    cfg = api.read_run_config(out)
    assert cfg.init["pretrained"] == "tinysrc" and cfg.model == api.read_run_config(source).model
    # the fine-tuned run is a run like any other: it samples
    assert torch.isfinite(api.load(out, device="cpu").sample(2, sampler="ddim", steps=3).x).all()


@pytest.mark.parametrize("args, message", [
    (["--init", "RUN", "--resume", "RUN"], "--init starts a new run"),
    (["--init", "NOWHERE"], "does not exist"),
    (["--init", "pretrained:no-such"], "no pretrained model 'no-such'"),
    (["--init", "RUN", "--domain", "audio"], "is a model of domain 'image', not 'audio'"),
    (["--init", "RUN", "--parameterization", "x0"], "diffusion.parameterization differ"),
    (["--init", "RUN", "--config", "MODEL"], "model.base_channels differ"),
    (["--init", "RUN", "--condition", "label"], "do not fit this run's model"),
    (["--init", ""], "--init is an empty string"),
])
def test_init_mistakes_are_one_error_line_and_nothing_is_written(source, tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "none")
    model_cfg = tmp_path / "model.json"
    model_cfg.write_text(json.dumps({"model": {**TINY_UNET, "base_channels": 16}}))
    subst = {"RUN": str(source), "NOWHERE": str(tmp_path / "nowhere"), "MODEL": str(model_cfg)}
    args = [subst.get(a, a) for a in args]
    out = tmp_path / "out"
    extra = [] if "--resume" in args else ["--out", str(out)]
    res = CliRunner().invoke(main, ["train", *args, "--steps", "1", "--device", "cpu", "--no-progress", *extra])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
    assert not out.exists()


def test_export_of_a_run_started_from_a_run_records_both_stages(source, tmp_path):
    import shutil
    src = tmp_path / "stage1"
    shutil.copytree(source, src)
    out = tmp_path / "ft"
    res = CliRunner().invoke(main, ["train", "--init", str(src), "--steps", "2", "--batch-size", "8", "--lr", "1e-4",
                                    "--no-progress", "--device", "cpu", "--out", str(out), "--eval-samples", "0"])
    assert res.exit_code == 0, res.output
    paths = export(out, "two", root=tmp_path)
    stage1 = tmp_path / "recipes" / "two-stage1.json"
    assert stage1 in paths and (tmp_path / "recipes" / "two.json") in paths
    again = api.make_config("image", config=stage1)
    old = api.read_run_config(src)
    assert (again.model, again.diffusion, again.train) == (old.model, old.diffusion, old.train)
    assert json.loads((tmp_path / "recipes" / "two.json").read_text())["train"]["lr"] == 1e-4
    card = (tmp_path / "pretrained" / "two" / "MODEL_CARD.md").read_text()
    assert ("`diffuse train --config recipes/two-stage1.json --out runs/two-stage1`, then "
            "`diffuse train --config recipes/two.json --init runs/two-stage1`") in card
    assert "| started from | the EMA and raw weights of the previous stage at step 2" in card
    shutil.rmtree(src / "checkpoint")                        # the first stage is gone: no honest recipe
    res = CliRunner().invoke(main, ["export-pretrained", str(out), "three", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "the run this model started from is needed" in res.output, res.output
    assert not (tmp_path / "pretrained" / "three").exists()


def test_a_further_stage_from_the_shipped_model_it_replaces_carries_that_models_stages(source, tmp_path,
                                                                                       monkeypatch):
    """Stage 3 trained from the shipped 2-stage model (`--init pretrained:m`) and exported as `m`
    replaces it: the recipes of all three stages are written, the card gives the three commands;
    exported under another name, the card says `--init pretrained:m` as before; once `m` holds
    other weights the history is gone and the export of stage 3 as `m` is one error. Stage 4 from
    that shipped stage 3 (itself a replacement) replaces it in turn, with four stages' recipes; a
    shipped model that started from another shipped model cannot be replaced (its history is not
    in its recipes): one error."""
    import shutil
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    src = tmp_path / "stage1"
    shutil.copytree(source, src)

    def train(init, out, lr):
        res = CliRunner().invoke(main, ["train", "--init", init, "--steps", "2", "--batch-size", "8", "--lr", lr,
                                        "--no-progress", "--device", "cpu", "--out", str(out), "--eval-samples", "0"])
        assert res.exit_code == 0, res.output

    train(str(src), tmp_path / "s2", "3e-4")
    export(tmp_path / "s2", "m", root=tmp_path)
    train("pretrained:m", tmp_path / "s3", "1e-4")
    export(tmp_path / "s3", "other", root=tmp_path)
    card = (tmp_path / "pretrained" / "other" / "MODEL_CARD.md").read_text()
    assert "--init pretrained:m` (it started from that shipped model)" in card
    assert not (tmp_path / "recipes" / "other-stage1.json").exists()
    export(tmp_path / "s3", "m", root=tmp_path / "elsewhere")   # `m` stays shipped: nothing to take over
    assert "--init pretrained:m`" in (tmp_path / "elsewhere" / "pretrained" / "m" / "MODEL_CARD.md").read_text()

    recipes = tmp_path / "recipes"
    paths = export(tmp_path / "s3", "m", root=tmp_path, force=True)
    assert {recipes / "m-stage1.json", recipes / "m-stage2.json", recipes / "m.json"} <= set(paths)
    lrs = [json.loads((recipes / f).read_text())["train"]["lr"] for f in ("m-stage1.json", "m-stage2.json", "m.json")]
    assert lrs == [api.read_run_config(source).train.lr, 3e-4, 1e-4]
    card = (tmp_path / "pretrained" / "m" / "MODEL_CARD.md").read_text()
    assert "train it again in 3 stages" in card and "--init runs/m-stage2`" in card
    assert "| started from | the EMA weights of the model shipped as `m` before this one (stage 2" in card
    # the shipped `m` is now stage 3: stage 3's history can no longer be read from it
    res = CliRunner().invoke(main, ["export-pretrained", str(tmp_path / "s3"), "m", "--root", str(tmp_path),
                                    "--force"])
    assert res.exit_code == 2 and "no longer holds the weights this model started from" in res.output, res.output

    # stage 4 from the shipped stage 3 (itself a replacement) replaces it in turn: four stages
    train("pretrained:m", tmp_path / "s4", "5e-5")
    paths = export(tmp_path / "s4", "m", root=tmp_path, force=True)
    assert {recipes / "m-stage1.json", recipes / "m-stage2.json", recipes / "m-stage3.json", recipes / "m.json"} <= set(paths)
    lrs = [json.loads((recipes / f).read_text())["train"]["lr"]
           for f in ("m-stage1.json", "m-stage2.json", "m-stage3.json", "m.json")]
    assert lrs == [api.read_run_config(source).train.lr, 3e-4, 1e-4, 5e-5]
    card = (tmp_path / "pretrained" / "m" / "MODEL_CARD.md").read_text()
    assert "train it again in 4 stages" in card and "--init runs/m-stage3`" in card
    assert "(stage 3" in card
    # a shipped model that started from ANOTHER shipped model: its history is not in recipes/m-*
    export(tmp_path / "s4", "n", root=tmp_path)
    train("pretrained:n", tmp_path / "n2", "5e-5")
    export(tmp_path / "n2", "p", root=tmp_path)             # p: started from the shipped n, which stays
    train("pretrained:p", tmp_path / "p2", "5e-5")
    res = CliRunner().invoke(main, ["export-pretrained", str(tmp_path / "p2"), "p", "--root", str(tmp_path),
                                    "--force"])
    assert res.exit_code == 2 and "itself started from the shipped model 'n'" in res.output, res.output
