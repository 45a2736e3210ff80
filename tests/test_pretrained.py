"""Pretrained models: export a run folder -> load it back -> sample, the CLI's --pretrained and
export-pretrained commands, their error lines, and the shipped recipes."""

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
from tiny import train_tiny_image

REPO = Path(api.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_image(tmp_path_factory.mktemp("runs"), "tiny", [])


def test_export_load_sample_round_trip(run, tmp_path):
    paths = export(run, "tiny", root=tmp_path, hardware="test machine")
    folder = tmp_path / "pretrained" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*pretrained.FILES, pretrained.MARKER])
    assert all(p.stat().st_size < pretrained.MAX_FILE_BYTES for p in paths)
    assert (tmp_path / "recipes" / "tiny.json") in paths
    model = api.load_pretrained("tiny", device="cpu", root=tmp_path)
    ref = api.load(run, device="cpu")
    a = model.sample(4, sampler="ddim", steps=5, seed=3)
    b = ref.sample(4, sampler="ddim", steps=5, seed=3)
    assert torch.equal(a.x, b.x)                               # the same EMA model, bit for bit
    card = (folder / "MODEL_CARD.md").read_text()
    for fact in ("bundled default data", "training steps | 2", "wall time", "test machine", "license", "MIT",
                 "diffuse train --config recipes/tiny.json"):
        assert fact in card, fact


def test_model_card_carries_the_runs_evaluation(run, tmp_path):
    """`diffuse evaluate` writes RUN/evaluation.json; the exported card lists it beside the training eval."""
    copy = tmp_path / "run"
    import shutil
    shutil.copytree(run, copy)
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", "-c", str(copy), "--num", "8", "--steps", "3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    measured = json.loads((copy / "evaluation.json").read_text())["metrics"]
    export(copy, "tiny", root=tmp_path)
    card = (tmp_path / "pretrained" / "tiny" / "MODEL_CARD.md").read_text()
    assert "`diffuse evaluate` on the run (8 samples, sampler ddim, 3 steps, seed 0" in card
    for k, v in measured.items():
        assert (f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |") in card, k
    (copy / "evaluation.json").write_text("{not json")            # unreadable: the card leaves it out
    export(copy, "tiny2", root=tmp_path)
    assert "`diffuse evaluate` on the run" not in (tmp_path / "pretrained" / "tiny2" / "MODEL_CARD.md").read_text()


def test_model_card_pools_the_evaluations_of_several_seeds(run, tmp_path):
    """`export-pretrained --evaluation FILE` (repeated): each seed's figures and their mean
    weighted by samples; files of another run, another protocol or a repeated seed are one
    error line (exit 2) and nothing is written."""
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    runner = CliRunner()
    files = []
    for seed, num in ((0, 8), (1, 4)):
        f = tmp_path / f"eval{seed}.json"
        res = runner.invoke(main, ["evaluate", "-c", str(copy), "--num", str(num), "--steps", "3", "--device", "cpu",
                                   "--seed", str(seed), "--out", str(f)])
        assert res.exit_code == 0, res.output
        files.append(f)
    m0, m1 = (json.loads(f.read_text())["metrics"] for f in files)
    res = runner.invoke(main, ["export-pretrained", str(copy), "two-seeds", "--root", str(tmp_path / "ok"),
                               "--evaluation", str(files[0]), "--evaluation", str(files[1])])
    assert res.exit_code == 0, res.output
    card = (tmp_path / "ok" / "pretrained" / "two-seeds" / "MODEL_CARD.md").read_text()
    assert "2 seeds (12 samples in all, sampler ddim, 3 steps" in card
    assert "| metric | mean | seed 0 (8) | seed 1 (4) |" in card
    for k in m0:
        mean = (8 * m0[k] + 4 * m1[k]) / 12
        assert f"| {k} | {mean:.4f} | {m0[k]:.4f} | {m1[k]:.4f} |" in card, k

    other = tmp_path / "other.json"                       # another protocol: 5 steps
    res = runner.invoke(main, ["evaluate", "-c", str(copy), "--num", "4", "--steps", "5", "--device", "cpu",
                               "--seed", "2", "--out", str(other)])
    assert res.exit_code == 0, res.output
    foreign = tmp_path / "foreign.json"                   # an evaluation of another run
    foreign.write_text(json.dumps({**json.loads(files[1].read_text()), "checkpoint": str(tmp_path / "elsewhere")}))
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    cases = {(files[0], other): "another protocol", (files[0], files[0]): "seed 0 is given twice",
             (files[0], foreign): "not of", (junk,): "not readable", (tmp_path / "missing.json",): "not readable"}
    for given, expected in cases.items():
        root = tmp_path / "bad"
        args = ["export-pretrained", str(copy), "bad", "--root", str(root)]
        for f in given:
            args += ["--evaluation", str(f)]
        res = runner.invoke(main, args)
        assert res.exit_code == 2, (given, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (given, res.output)
        assert not root.exists()


def test_half_precision_storage(run, tmp_path):
    export(run, "tiny-half", root=tmp_path, half=True)
    stored = load_file(str(tmp_path / "pretrained" / "tiny-half" / "ema.safetensors"))
    ema = load_file(str(run / "checkpoint" / "ema.safetensors"))
    assert all(stored[k].dtype == torch.float16 for k in ema if ema[k].dtype == torch.float32)
    model = api.load_pretrained("tiny-half", device="cpu", root=tmp_path)
    for k, v in model.denoiser.state_dict().items():
        if k in ema and ema[k].is_floating_point():
            assert v.dtype == torch.float32 and torch.equal(v, ema[k].half().float()), k
    assert "float16 storage" in (tmp_path / "pretrained" / "tiny-half" / "MODEL_CARD.md").read_text()


def test_recipe_retrains_the_same_configuration(run, tmp_path):
    export(run, "tiny", root=tmp_path)
    recipe = tmp_path / "recipes" / "tiny.json"
    cfg = api.make_config(api.recipe_domain(recipe), config=recipe)
    old = api.read_run_config(run)
    assert (cfg.domain, cfg.model, cfg.diffusion, cfg.train, cfg.data) == \
        (old.domain, old.model, old.diffusion, old.train, old.data)


def test_export_refuses_to_overwrite_and_oversized_files(run, tmp_path, monkeypatch):
    export(run, "tiny", root=tmp_path)
    res = CliRunner().invoke(main, ["export-pretrained", str(run), "tiny", "--root", str(tmp_path)])
    assert res.exit_code == 2 and res.output.strip().startswith("error:") and "--force" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["export-pretrained", str(run), "tiny", "--root", str(tmp_path), "--force"])
    assert res.exit_code == 0, res.output
    monkeypatch.setattr("diffuse.pretrained.export.MAX_FILE_BYTES", 1000)
    res = CliRunner().invoke(main, ["export-pretrained", str(run), "big", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "over the" in res.output and "MB limit" in res.output
    assert not (tmp_path / "pretrained" / "big").exists() and not (tmp_path / "recipes" / "big.json").exists()
    res = CliRunner().invoke(main, ["export-pretrained", str(tmp_path / "nothing"), "x", "--root", str(tmp_path)])
    assert res.exit_code == 2 and res.output.startswith("error:")
    res = CliRunner().invoke(main, ["export-pretrained", str(run), "Bad/Name", "--root", str(tmp_path)])
    assert res.exit_code == 2 and "invalid pretrained model name" in res.output


def test_cli_sample_pretrained(run, tmp_path, monkeypatch):
    export(run, "tiny", root=tmp_path)
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["sample", "--pretrained", "tiny", "--num", "2", "--steps", "3", "--device", "cpu",
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*.png"))) >= 2
    res = CliRunner().invoke(main, ["sample", "--pretrained", "tiny", "--domain", "audio", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "is a model of domain 'image'" in res.output and not (tmp_path / "o2").exists()


def test_cli_evaluate_pretrained(run, tmp_path, monkeypatch):
    """`diffuse evaluate --pretrained NAME`: the metrics of the shipped model against its training
    data's held-out split, the same as of the run it was exported from."""
    export(run, "tiny", root=tmp_path)
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.chdir(tmp_path)
    args = ["--num", "8", "--sampler", "ddim", "--steps", "3", "--device", "cpu"]
    res = CliRunner().invoke(main, ["evaluate", "--pretrained", "tiny", *args])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "evaluation-pretrained-tiny.json").read_text())
    assert record["pretrained"] == "tiny" and "checkpoint" not in record
    assert record["spacing"] == "auto"        # the grid the core's rule gives DDIM below 7 steps, recorded
    res = CliRunner().invoke(main, ["evaluate", "-c", str(run), *args, "--out", str(tmp_path / "run.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "run.json").read_text())["metrics"] == record["metrics"]
    res = CliRunner().invoke(main, ["evaluate", "--pretrained", "tiny", "-c", str(run), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "not both" in res.output and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--pretrained", "no-such-model"], "no pretrained model 'no-such-model'"),
    (["--pretrained", "../no/such/etc"], "model folder ../no/such/etc does not exist"),   # a path: a model folder
    ([], "Missing option '--checkpoint' (a run folder) or '--pretrained' NAME"),
    (["--pretrained", "molecules", "--checkpoint", "runs/x"], "not both"),
])
def test_cli_sample_pretrained_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "empty")
    res = CliRunner().invoke(main, ["sample", *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
    assert not (tmp_path / "o").exists()


def test_load_pretrained_unknown_name_lists_what_exists(run, tmp_path):
    export(run, "tiny", root=tmp_path)
    with pytest.raises(api.CheckpointError, match="available: tiny"):
        api.load_pretrained("molecules", root=tmp_path)


def test_shipped_models_are_complete_and_small():
    """Whatever ships under pretrained/ is complete, small, and loads (none is required to exist)."""
    for name in pretrained.available():
        folder = pretrained.folder(name)
        assert all((folder / f).stat().st_size < pretrained.MAX_FILE_BYTES for f in pretrained.FILES)
        assert (REPO / "recipes" / f"{name}.json").is_file()


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.json")), ids=lambda p: p.stem)
def test_recipes_are_valid_configs(recipe):
    data = json.loads(recipe.read_text())
    cfg = api.make_config(api.recipe_domain(recipe), config=recipe)
    assert cfg.domain == data["domain"]


def test_train_takes_the_domain_from_a_recipe(tmp_path):
    cfg = tmp_path / "r.json"
    cfg.write_text(json.dumps({"domain": "nonexistent-domain"}))
    res = CliRunner().invoke(main, ["train", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "nonexistent-domain" in res.output and not (tmp_path / "run").exists()
    cfg.write_text(json.dumps({"domain": "audio"}))
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--config", str(cfg), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "for domain 'audio', not 'image'" in res.output


@pytest.mark.parametrize("name", pretrained.available())
def test_every_shipped_model_loads_and_samples(name):
    model = api.load_pretrained(name, device="cpu")
    samples = model.sample(2, sampler="ddim", steps=3, seed=0)
    parts = samples.x.values() if isinstance(samples.x, dict) else [samples.x]   # a mixed state: each component
    assert all(torch.isfinite(x.float()).all() for x in parts)


def test_shipped_image_model_draws_the_requested_digits():
    """The shipped `image` model, label-guided, draws digits the framework's own LeNet reads as the
    requested label (its model card: 0.93 at s = 1, 1.00 at s = 2 over 200 samples); a few
    samples at s = 2 with 20 DDIM steps must mostly be right."""
    from diffuse.domains.image.features import bundled_lenet

    if "image" not in pretrained.available():
        pytest.skip("no shipped image model in this copy")
    model = api.load_pretrained("image", device="cpu")
    labels = [0, 1, 3, 7, 9, 4]
    samples = model.sample(len(labels), sampler="ddim", steps=20, seed=0, cond={"label": labels},
                           guidance_scale=2.0)
    pred = bundled_lenet()(samples.x.float().clamp(-1, 1)).argmax(1)
    assert (pred == torch.tensor(labels)).float().mean() >= 5 / 6


def test_the_package_forwards_the_api_names_lazily():
    """``import diffuse; diffuse.load_pretrained(...)`` as the README shows: the top-level names are
    the API's, and ``import diffuse`` alone does not load torch (the CLI sets OpenMP knobs first)."""
    import subprocess
    import sys

    import diffuse

    assert diffuse.load_pretrained is api.load_pretrained and diffuse.train is api.train and diffuse.load is api.load
    assert "load_pretrained" in dir(diffuse) and diffuse.api is api
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        diffuse.no_such_name
    out = subprocess.run([sys.executable, "-c", "import sys, diffuse; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
