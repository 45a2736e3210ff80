"""save_pretrained / from_pretrained for every kind of model (diffusion, latent diffusion,
autoencoder, classifier), and every command that takes a model taking a shipped model's name and a
model folder: round trips bit for bit, model cards from the run's record, one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import diffuse.api as api
from diffuse.cli.main import main
from diffuse.core.errors import CheckpointError, OutputExistsError
from tiny import TINY_UNET, train_tiny_image

TINY_IMAGE_AE = {"downsample": 4, "latent_channels": 2, "base_channels": 8, "channel_mult": [1, 1], "groups": 4}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny_image(tmp_path_factory.mktemp("runs"), "tiny", ["--condition", "label"])


@pytest.fixture(scope="module")
def saved(run, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("saved") / "tiny-model"
    api.load(run, device="cpu").save_pretrained(dest)
    return dest


def test_save_then_from_pretrained_samples_bit_for_bit(run, saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["MODEL_CARD.md", "config.json", "ema.safetensors", "meta.json", "recipe.json"]
    a = api.load(run, device="cpu").sample(3, sampler="ddim", steps=4, seed=5, cond={"label": 3})
    b = api.from_pretrained(saved, device="cpu").sample(3, sampler="ddim", steps=4, seed=5, cond={"label": 3})
    assert torch.equal(a.x, b.x)
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["step"] == 2 and meta["domain"] == "image" and meta["hardware"]["device"] == "cpu"


def test_model_card_is_written_from_the_runs_record(saved):
    card = (saved / "MODEL_CARD.md").read_text()
    for fact in ("bundled default data", "training steps | 2 (batch 8", "wall time", "s of training steps",
                 "hardware | cpu (", "license", "## Metrics", "## Recipe", f"--pretrained {saved}",
                 f"diffuse train --config {saved / 'recipe.json'}"):
        assert fact in card, fact
    recipe = json.loads((saved / "recipe.json").read_text())
    assert recipe["model"]["base_channels"] == TINY_UNET["base_channels"] and "data_info" not in recipe


def test_no_pickle_in_a_model_folder(saved):
    """Weights are safetensors, everything else JSON or text: nothing that can run code."""
    for p in saved.rglob("*"):
        assert p.suffix in (".json", ".safetensors", ".md"), p


def test_from_pretrained_takes_names_and_refuses_unknown_ones(tmp_path):
    assert api.resolve_model("image") == api.resolve_model("pretrained:image")
    with pytest.raises(CheckpointError, match="no pretrained model 'imagez'; available: audio, image, molecules"):
        api.from_pretrained("imagez")
    with pytest.raises(CheckpointError, match="does not exist"):
        api.from_pretrained(tmp_path / "nowhere")


def test_save_refuses_a_nonempty_destination(run, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty"):
        api.save_pretrained(run, tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "x"
    api.save_pretrained(run, tmp_path / "busy", force=True)
    assert not (tmp_path / "busy" / "x").exists() and (tmp_path / "busy" / "ema.safetensors").is_file()


def test_a_model_folder_is_never_resumed(saved, tmp_path):
    res = _cli("train", "--resume", saved, "--steps", "3", "--device", "cpu", "--no-progress")
    assert res.exit_code == 2 and "keeps no training state" in res.output, res.output


def test_fine_tune_from_a_model_folder(saved, tmp_path):
    res = _cli("train", "--init", saved, "--steps", "1", "--batch-size", "4", "--device", "cpu", "--no-progress",
               "--eval-samples", "0", "--out", tmp_path / "ft")
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert cfg["init"]["run"] == str(saved.resolve())


@pytest.mark.parametrize("source", ["folder", "name"])   # -c RUN: the commands' own tests
def test_every_command_takes_any_model(source, run, saved, tmp_path, monkeypatch):
    """inpaint / edit / upscale / evaluate --likelihood / optimize-grid with --pretrained DIR and
    --pretrained NAME (the shipped image model)."""
    monkeypatch.chdir(tmp_path)
    digit = tmp_path / "digit.png"
    Image.fromarray((torch.rand(28, 28) * 255).to(torch.uint8).numpy()).save(digit)
    model = {"folder": ["--pretrained", saved], "name": ["--pretrained", "image"]}[source]
    quick = ["--num", "1", "--steps", "2", "--device", "cpu"]
    res = _cli("inpaint", *model, "--input", digit, "--rect", "0,0,28,14", *quick, "--out", tmp_path / "inp")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "inp" / "summary.json").is_file()
    res = _cli("edit", *model, "--input", digit, "--strength", "0.5", *quick, "--out", tmp_path / "ed")
    assert res.exit_code == 0, res.output
    res = _cli("evaluate", *model, "--num", "4", "--steps", "2", "--device", "cpu", "--likelihood",
               "--likelihood-num", "2", "--out", tmp_path / "ev.json")
    assert res.exit_code == 0, res.output
    assert "nll" in " ".join(json.loads((tmp_path / "ev.json").read_text())["metrics"])
    # upscale needs a model trained with --condition lowres: the same one-line refusal for each source
    res = _cli("upscale", *model, "--input", digit, *quick)
    assert res.exit_code == 2 and res.output.startswith("error:") and "lowres" in res.output, res.output
    # optimize-grid: a shipped model is never changed, a copy is written with --out
    res = _cli("optimize-grid", *model, "--nfe", "2", "--num", "2", "--max-evals", "2", "--device", "cpu",
               "--out", tmp_path / "opt")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "opt" / "grids.json").is_file() and (tmp_path / "opt" / "MODEL_CARD.md").is_file()
    if source == "name":
        res = _cli("optimize-grid", *model, "--nfe", "2", "--num", "2", "--device", "cpu")
        assert res.exit_code == 2 and "shipped model, which is never changed" in res.output


def test_default_output_of_a_pretrained_command(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    digit = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(digit)
    res = _cli("edit", "--pretrained", saved, "--input", digit, "--strength", "0.3", "--num", "1", "--steps", "2",
               "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "samples" / "pretrained-tiny-model-edit" / "summary.json").is_file()


def test_save_pretrained_cli_and_export_take_model_folders(saved, tmp_path):
    res = _cli("save-pretrained", "image", tmp_path / "img")
    assert res.exit_code == 0, res.output
    card = (tmp_path / "img" / "MODEL_CARD.md").read_text()
    assert "Saved again from the model folder" in card and "# Pretrained model `image`" in card
    res = _cli("export-pretrained", saved, "tinyx", "--root", tmp_path / "root")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "root" / "pretrained" / "tinyx" / "ema.safetensors").is_file()


def test_autoencoder_classifier_and_latent_models_round_trip(tmp_path):
    ae = tmp_path / "ae"
    api.train_autoencoder("image", out=ae, progress=False, steps=2, batch_size=8,
                          config={"model": TINY_IMAGE_AE, "data_options": {"max_images": 32}})
    ae_saved = api.save_pretrained(ae, tmp_path / "ae-model")
    assert "Autoencoder" in (ae_saved / "MODEL_CARD.md").read_text()
    a, b = api.load_autoencoder(ae, device="cpu"), api.from_pretrained(ae_saved, device="cpu")
    assert type(a) is type(b) and _same(a.state_dict(), b.state_dict())
    # a latent model's folder carries its autoencoder; moved elsewhere, it still samples the same
    api.train("image", latent=ae, out=tmp_path / "lat", progress=False, steps=1, batch_size=8,
              config={"model": {**TINY_UNET, "attn_levels": []}, "train": {"eval_samples": 0, "final_eval": False}})
    lat = api.load(tmp_path / "lat", device="cpu")
    dest = lat.save_pretrained(tmp_path / "lat-model")
    moved = tmp_path / "elsewhere" / "lat-model"
    moved.parent.mkdir()
    dest.rename(moved)
    assert torch.equal(lat.sample(2, steps=2, seed=0).x, api.from_pretrained(moved, device="cpu")
                       .sample(2, steps=2, seed=0).x)
    clf = tmp_path / "clf"
    api.train_classifier("image", out=clf, steps=1, batch_size=4, device="cpu", progress=False,
                         config={"data_options": {"max_images": 32}})
    clf_saved = api.save_pretrained(clf, tmp_path / "clf-model")
    c1, c2 = api.load_classifier(clf, device="cpu"), api.from_pretrained(clf_saved, device="cpu")
    assert type(c1) is type(c2) and _same(c1.module.state_dict(), c2.module.state_dict())
    assert api.model_kind(clf_saved) == "classifier" and api.model_kind(ae_saved) == "autoencoder"


def test_a_model_folder_is_never_a_new_runs_out(saved, tmp_path):
    """A model folder given as --out is refused, and its files stay (a run that never completed a
    checkpoint is started again in place; a model folder is not such a run)."""
    before = sorted(p.name for p in Path(saved).iterdir())
    res = _cli("train", "--domain", "image", "--out", saved, "--steps", "1", "--device", "cpu", "--no-progress")
    assert res.exit_code == 2 and "model folder" in res.output, res.output
    assert sorted(p.name for p in Path(saved).iterdir()) == before
