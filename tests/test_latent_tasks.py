"""Latent models do what pixel models do (core/models/latent.py, core/models/latent_tasks.py,
api/tasks.py): inpainting and RePaint in latent space with the known part re-imposed through the
encoder, SDEdit, super-resolution with a conditional latent model, classifier guidance with a
classifier trained on the latents, and the likelihood of the latents."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from diffuse import api
from diffuse.cli.main import main
from diffuse.core.data.registry import get_domain
from diffuse.core.errors import NotSupportedError
from diffuse.core.models.latent_tasks import latent_mask

pytestmark = pytest.mark.usefixtures("one_thread")

AE = {"downsample": 4, "latent_channels": 2, "base_channels": 8, "channel_mult": [1, 1], "groups": 4,
      "perceptual_weight": 0.0}
DIT = {"backbone": "dit", "preset": "tiny", "patch_size": 1, "depth": 2, "width": 32}
DATA = {"max_images": 1200}          # the bundled digits are sorted by class: classes 0, 1, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A briefly trained autoencoder and a latent DiT on its latents (class-conditional)."""
    root = tmp_path_factory.mktemp("latent_tasks")
    api.train_autoencoder("image", out=root / "ae", progress=False, steps=40, batch_size=16, lr=3e-3,
                          config={"model": AE, "data_options": DATA, "train": {"warmup_steps": 5}})
    api.train("image", latent=root / "ae", out=root / "lat", model=DIT, steps=40, batch_size=32, lr=3e-3,
              warmup_steps=5, progress=False, final_eval=False, conditions=["label"])
    return root


def _digits(n: int = 2, start: int = 100):
    dom = get_domain("image")
    data = dom.load_data(None, {**dom.default_data(), **DATA})
    return data.batch(torch.arange(start, start + n))


# ------------------------------------------------------------------------ the mask on the latent grid
def test_a_latent_cell_is_known_only_when_all_it_summarises_is():
    data, latent = torch.zeros(1, 1, 28, 28), torch.zeros(1, 2, 7, 7)
    mask = torch.ones(1, 1, 28, 28, dtype=torch.bool)
    mask[..., 4:20, 4:20] = False                                   # cells 1..4 exactly
    got = latent_mask(mask, data, latent)
    want = torch.ones(1, 1, 7, 7, dtype=torch.bool)
    want[..., 1:5, 1:5] = False
    assert got.shape == (1, 1, 7, 7) and torch.equal(got, want)
    mask = torch.ones(1, 1, 28, 28, dtype=torch.bool)
    mask[..., 5, 9] = False                                         # one pixel: its cell only
    got = latent_mask(mask, data, latent)
    assert int((~got).sum()) == 1 and not bool(got[0, 0, 1, 2])
    # audio: a clip of 1000 samples, latents of 32 cells of 32 samples (the encoder pads the tail)
    clip = torch.ones(1, 1, 1000, dtype=torch.bool)
    clip[..., 970:980] = False
    got = latent_mask(clip, torch.zeros(1, 1, 1000), torch.zeros(1, 4, 32))
    assert torch.equal(~got[0, 0], torch.arange(32) == 30)         # samples 970..979 lie in cell 30 (960..991)
    clip[..., 995:] = False
    got = latent_mask(clip, torch.zeros(1, 1, 1000), torch.zeros(1, 4, 32))
    assert torch.equal(~got[0, 0], torch.arange(32) >= 30)         # the last cell also covers the padding
    # graph latents (one row per atom, by message passing) cannot complete a fragment: one line
    rows = torch.tensor([[True], [False], [True]])
    with pytest.raises(NotSupportedError, match="latent model of graphs"):
        latent_mask(rows, torch.zeros(3, 5), torch.zeros(3, 4))


# ------------------------------------------------------------------------ completion and editing
def test_latent_inpainting_keeps_the_known_part_within_the_reconstruction_error(runs):
    model = api.load(runs / "lat")
    assert api.capabilities(model.domain) == ["conditional", "completable", "restorable", "classifier"]
    ae = model.domain.autoencoder
    for i in range(2):
        b = _digits(1, 300 + 537 * i)
        mask = torch.ones(1, 1, 28, 28, dtype=torch.bool)
        mask[..., 8:20, 6:22] = False
        known = mask.expand_as(b.x)
        with torch.no_grad():
            rec = ae.decode(ae.encode(b, sample=False), b)
        rec_err = float((rec - b.x).abs()[known].mean())
        raw = model.complete((b, mask), 1, steps=10, sampler="ddim", seed=i, paste=False, cond={"label": 0})
        raw_err = float((raw.x - b.x).abs()[known].mean())
        assert raw.x.shape == (1, 1, 28, 28)
        assert raw_err <= 1.25 * rec_err, (raw_err, rec_err)
        # the generated part differs from the input; with paste the known part is the input's exactly
        assert float((raw.x - b.x).abs()[~known].mean()) > 0.05
        pasted = model.complete((b, mask), 1, steps=10, sampler="ddim", seed=i, cond={"label": 0})
        assert model.known_error(pasted, (b, mask)) == 0.0
        assert torch.equal(pasted.x[~known.expand_as(pasted.x)], raw.x[~known.expand_as(raw.x)])
    # RePaint resampling runs through the same path and keeps the known part
    out = model.complete((b, mask), 1, steps=4, sampler="ddpm", jump_length=2, resample=2)
    assert model.known_error(out, (b, mask)) == 0.0


def test_latent_sdedit_strength_zero_is_the_reconstruction_and_one_is_plain_sampling(runs):
    model = api.load(runs / "lat")
    ae = model.domain.autoencoder
    b = _digits(1)
    mask = torch.ones(1, 1, 28, 28, dtype=torch.bool)
    with torch.no_grad():
        rec = ae.decode(ae.encode(b, sample=False), b)
    zero = model.edit((b, mask), 0.0, 1, steps=6)
    assert torch.allclose(zero.x, rec, atol=1e-5)
    full = model.edit((b, mask), 1.0, 2, steps=6, seed=3)
    plain = model.sample(2, sampler="ddim", steps=6, seed=3)
    assert torch.allclose(full.x, plain.x, atol=1e-5)


def test_cli_inpaint_of_a_latent_model_writes_images(runs, tmp_path):
    from PIL import Image

    b = _digits(1)
    Image.fromarray(((b.x[0, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()).save(tmp_path / "in.png")
    res = CliRunner().invoke(main, ["inpaint", "-c", str(runs / "lat"), "-i", str(tmp_path / "in.png"), "--rect",
                                    "6,6,20,20", "--num", "2", "--steps", "4", "--out", str(tmp_path / "o"),
                                    "--label", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["known_max_abs_error"] == 0.0 and len(list((tmp_path / "o").glob("*.png"))) >= 2


# ------------------------------------------------------------------------ classifier guidance on latents
def test_classifier_trained_on_latents_guides_the_latent_model(runs, tmp_path):
    model = api.load(runs / "lat")
    res = api.train_classifier("image", latent=runs / "ae", out=tmp_path / "clf", steps=3, batch_size=8,
                               progress=False)
    cfg = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert cfg["latent"]["sha256"] == model.config.latent["sha256"] and "accuracy_clean" in res["metrics"]
    clf = api.load_classifier(tmp_path / "clf")
    assert clf.module.net(torch.zeros(2, 2, 7, 7), torch.zeros(2)).shape[0] == 2    # it reads latents
    guided = model.sample(2, steps=3, cond={"label": 0}, guidance="classifier", classifier=tmp_path / "clf",
                          guidance_scale=3.0)
    plain = model.sample(2, steps=3, cond={"label": 0})
    assert guided.x.shape == (2, 1, 28, 28) and not torch.allclose(guided.x, plain.x)
    # a classifier of data cannot guide a model of latents (and the other way round): one line
    api.train_classifier("image", out=tmp_path / "pix", steps=1, batch_size=8, progress=False,
                         config={"data_options": DATA})
    with pytest.raises(NotSupportedError, match="reads data but the model samples latents"):
        model.sample(1, steps=2, cond={"label": 0}, guidance="classifier", classifier=tmp_path / "pix")


# ------------------------------------------------------------------------ super-resolution and likelihood
def test_a_conditional_latent_model_upscales(runs, tmp_path):
    from PIL import Image

    api.train("image", latent=runs / "ae", out=tmp_path / "sr", model=DIT, steps=2, batch_size=8, progress=False,
              final_eval=False, conditions=["lowres"])
    model = api.load(tmp_path / "sr")
    kind = model.condition_kinds()["lowres"]
    assert (kind.channels, kind.shape) == (2, [7, 7])              # the encoded input, on the latent grid
    assert model.denoiser.backbone.in_cond_channels == 3
    small = (_digits(1).x[0, 0, ::4, ::4] + 1) * 127.5
    Image.fromarray(small.round().clamp(0, 255).byte().numpy()).save(tmp_path / "small.png")
    out = model.upscale(tmp_path / "small.png", 2, steps=2)
    assert out.x.shape == (2, 1, 28, 28) and torch.isfinite(out.x).all()


def test_latent_likelihood_is_of_the_latents_and_says_so(runs):
    model = api.load(runs / "lat")
    out = model.likelihood(2, batch_size=2, rtol=1e-3, atol=1e-3)
    assert set(out) == {"latent_nll_nats", "latent_bits_per_dim", "likelihood_items", "likelihood_nfe"}
    dof = 2 * 7 * 7
    assert out["latent_bits_per_dim"] == pytest.approx(out["latent_nll_nats"] / (dof * 0.6931471805599453))
