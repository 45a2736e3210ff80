"""Latent diffusion: autoencoder shapes and scaling, training, latent models end to end, and the
record of the autoencoder a latent model needs (core/latent.py, domains/*/autoencoder.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diffuse import api
from diffuse.cli.main import main
from diffuse.core.data.domain import Batch
from diffuse.core.models.latent import LatentDataset, LatentDomain, load_autoencoder
from diffuse.core.data.registry import get_domain
from diffuse.core.data.space import DenseSpace

from .tiny import TINY_UNET

TINY_IMAGE_AE = {"downsample": 4, "latent_channels": 2, "base_channels": 8, "channel_mult": [1, 1], "groups": 4}
TINY_AUDIO_AE = {"downsample": 32, "latent_channels": 4, "channels": [8], "fft_sizes": [64, 128]}
AUDIO_DATA = {"sample_rate": 8000, "clip_seconds": 0.25}
TINY_UNET1D = {"channels": [8, 16], "factors": [2], "num_res_blocks": 1, "dilations": [1], "attn_levels": [],
               "heads": 2}


def _image_data(n: int = 96):
    dom = get_domain("image")
    return dom, dom.load_data(None, {**dom.default_data(), "max_images": n})


def _audio_data():
    dom = get_domain("audio")
    return dom, dom.load_data(None, {**dom.default_data(), **AUDIO_DATA})


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("factor", [4, 8])
def test_image_autoencoder_shapes(factor):
    dom = get_domain("image")
    info = {"channels": 3, "height": 16, "width": 24}
    ae = dom.bind(info).build_autoencoder({**TINY_IMAGE_AE, "downsample": factor, "latent_channels": 3})
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    batch = Batch(x, DenseSpace())
    z = ae.encode(batch, torch.Generator().manual_seed(0))
    assert z.shape == (2, 3, 16 // factor, 24 // factor)
    assert ae.latent_template(batch).shape == z.shape
    assert ae.encode(batch, sample=False).shape == z.shape
    assert ae.decode(z, batch).shape == x.shape
    assert ae.latent_info(info) == {"channels": 3, "height": 16 // factor, "width": 24 // factor}
    with pytest.raises(ValueError, match="not multiples of the downsampling factor 8"):
        dom.bind({"channels": 1, "height": 28, "width": 28}).build_autoencoder({"downsample": 8})
    with pytest.raises(ValueError, match="unknown image autoencoder option"):
        dom.bind(info).build_autoencoder({"downsampling": 4})


def test_audio_autoencoder_shapes_pad_and_crop():
    dom = get_domain("audio")
    info = {"channels": 1, "length": 1000, "sample_rate": 8000}
    ae = dom.bind(info).build_autoencoder(TINY_AUDIO_AE)
    batch = Batch(torch.randn(3, 1, 1000) * 0.1, DenseSpace())
    z = ae.encode(batch)
    assert z.shape == (3, 4, 32)                       # ceil(1000 / 32)
    assert ae.latent_template(batch).shape == z.shape
    assert ae.latent_info(info) == {"channels": 4, "length": 32}
    assert ae.decode(z, batch).shape == (3, 1, 1000)   # cropped back to the data's length
    with pytest.raises(ValueError, match="model.downsample must be one of"):
        dom.bind(info).build_autoencoder({"downsample": 48})


def test_posterior_mean_and_sampling():
    """``sample=False`` is the posterior mean; draws are reproducible from the generator and
    their average tends to the mean."""
    dom, data = _image_data(8)
    ae = dom.bind(data.info()).build_autoencoder(TINY_IMAGE_AE)
    batch = data.batch(torch.arange(4))
    mean = ae.encode(batch, sample=False)
    a = ae.encode(batch, torch.Generator().manual_seed(3))
    b = ae.encode(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, mean)
    draws = torch.stack([ae.encode(batch, torch.Generator().manual_seed(s)) for s in range(200)])
    with torch.no_grad():
        _, logvar = ae.posterior(batch.x)
    err = (draws.mean(0) - mean).abs() / (logvar.exp().sqrt() / 200 ** 0.5)
    assert float(err.detach().mean()) < 1.5     # standard errors: |N(0,1)| has mean 0.8


# ---------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("name", ["image", "audio"])
def test_fit_scale_gives_unit_std_latents(name):
    dom, data = _image_data(64) if name == "image" else _audio_data()
    ae = dom.bind(data.info()).build_autoencoder(TINY_IMAGE_AE if name == "image" else TINY_AUDIO_AE)
    with torch.no_grad():
        last = ae.encoder[-1]               # posterior means far from unit std (variances untouched)
        half = last.out_channels // 2
        last.weight[:half].mul_(5.0)
        last.bias[:half].add_(2.0)
    scale = ae.fit_scale(data, num=len(data), batch_size=16, seed=0)
    assert float(ae.scale) == pytest.approx(scale)
    # independently: latents of every item, drawn with other noise, have std ~ 1 after scaling
    z = LatentDataset(data, ae).batch(torch.arange(len(data)), torch.Generator().manual_seed(123)).x
    assert float(z.std()) == pytest.approx(1.0, abs=0.05)
    assert abs(scale - 1.0) > 0.2       # the scale did something
    # the scale is a buffer: saved and loaded with the weights
    state = ae.state_dict()
    assert float(state["scale"]) == pytest.approx(scale)


# ---------------------------------------------------------------------------- training
def test_image_autoencoder_training_lowers_reconstruction_error(tmp_path):
    dom, data = _image_data(96)
    held = data.subset(torch.arange(64, 96))
    torch.manual_seed(0)
    before = api.reconstruction_report(dom.bind(data.info()).build_autoencoder(TINY_IMAGE_AE), held)
    res = api.train_autoencoder("image", out=tmp_path / "ae", progress=False, steps=40, batch_size=16, lr=3e-3,
                                config={"model": TINY_IMAGE_AE, "data_options": {"max_images": 96},
                                        "train": {"warmup_steps": 5}})
    after = res["metrics"]
    assert after["psnr"] > before["psnr"] + 3.0, (before, after)
    assert after["l1"] < before["l1"]
    run = tmp_path / "ae"
    assert json.loads((run / "config.json").read_text())["kind"] == "autoencoder"
    assert json.loads((run / "evaluation.json").read_text())["psnr"] == pytest.approx(after["psnr"])
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    ae = load_autoencoder(run, dom)
    assert float(ae.scale) == pytest.approx(res["scale"]) and res["scale"] != 1.0


def test_autoencoder_run_resumes_exactly(tmp_path):
    """Paused at step 3 and resumed to 6: the weights of an uninterrupted 6-step run."""
    kw = dict(progress=False, steps=6, batch_size=8,
              config={"model": {**TINY_IMAGE_AE, "perceptual_weight": 0.0}, "data_options": {"max_images": 32}})
    full = api.train_autoencoder("image", out=tmp_path / "full", **kw)
    part = api.train_autoencoder("image", out=tmp_path / "part", stop_at=3, **kw)
    assert part["steps"] == 3 and part["scale"] is None
    res = _cli("train", "--domain", "image", "--latent", tmp_path / "part", "--out", tmp_path / "lat")
    _one_line_error(res, "is unfinished (no latent scale yet)")
    res = _cli("train-autoencoder", "--resume", tmp_path / "part", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "held-out reconstruction" in res.output and "psnr" in res.output
    from safetensors.torch import load_file
    a = load_file(str(tmp_path / "full" / "checkpoint" / "ema.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoint" / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full["scale"] == pytest.approx(float(b["scale"]))
    _one_line_error(_cli("train-autoencoder", "--resume", tmp_path / "part"), "is already finished")


def test_audio_autoencoder_training_lowers_stft_distance(tmp_path):
    dom, data = _audio_data()
    torch.manual_seed(0)
    untrained = dom.bind(data.info()).build_autoencoder(TINY_AUDIO_AE)
    res = api.train_autoencoder("audio", out=tmp_path / "ae", progress=False, steps=25, batch_size=8, lr=3e-3,
                                config={"model": TINY_AUDIO_AE, "data_options": AUDIO_DATA,
                                        "train": {"warmup_steps": 5}})
    _, held = data.split(0.15, seed=0)
    before = api.reconstruction_report(untrained, held)
    assert res["metrics"]["stft"] < before["stft"], (before, res["metrics"])
    assert res["metrics"]["logmel"] < before["logmel"]


# ---------------------------------------------------------------------------- latent models end to end
@pytest.fixture(scope="module")
def image_ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("latent") / "image-ae"
    api.train_autoencoder("image", out=out, progress=False, steps=3, batch_size=8,
                          config={"model": TINY_IMAGE_AE, "data_options": {"max_images": 48}})
    return out


def test_latent_image_model_trains_and_samples(image_ae, tmp_path):
    res = api.train("image", latent=image_ae, out=tmp_path / "lat", progress=False, steps=3, batch_size=8,
                    config={"model": {**TINY_UNET, "attn_levels": []}, "train": {"eval_samples": 4, "eval_steps": 3}})
    cfg = json.loads((tmp_path / "lat" / "config.json").read_text())
    assert cfg["latent"]["path"] == str(image_ae.resolve()) and len(cfg["latent"]["sha256"]) == 64
    assert cfg["data_options"]["max_images"] == 48          # data options default to the autoencoder's
    assert sorted(p.name for p in res.sample_dir.glob("sample_*.png")) and "fid" in res.metrics
    model = api.load(tmp_path / "lat", device="cpu")
    assert isinstance(model.domain, LatentDomain)
    # the backbone runs on [B, 2, 7, 7] latents; samples come back as 28x28 images (data space)
    tpl = model.domain.template(2)
    assert tpl.x.shape == (2, 2, 7, 7)
    samples = model.sample(3, steps=3, seed=1, batch_size=2)
    assert samples.x.shape == (3, 1, 28, 28)
    # the same seed gives the same samples whatever the batch size, decoded
    again = model.sample(3, steps=3, seed=1, batch_size=3)
    assert torch.allclose(samples.x, again.x, atol=1e-5)
    # decoding is the autoencoder's decoder of the (unscaled) latent the sampler produced
    ae = model.domain.autoencoder
    from diffuse.core.sampling.generate import generate
    from diffuse.core.data.domain import Domain
    z = generate(model.denoiser, _NoDecode(model.domain), 3, steps=3, seed=1, batch_size=2)
    assert torch.allclose(ae.decode(z.x / ae.scale, z), samples.x, atol=1e-5)
    assert isinstance(model.domain, Domain)
    out = model.write(samples, tmp_path / "s")
    assert any(p.suffix == ".png" for p in out)


class _NoDecode:
    """A latent domain without the decoding step (to compare against)."""

    def __init__(self, dom):
        self.dom = dom

    def to_data(self, samples):
        return samples

    def __getattr__(self, name):
        return getattr(self.dom, name)


def test_latent_audio_model_trains_and_samples(tmp_path):
    ae_run = tmp_path / "ae"
    api.train_autoencoder("audio", out=ae_run, progress=False, steps=2, batch_size=8,
                          config={"model": TINY_AUDIO_AE, "data_options": AUDIO_DATA})
    res = api.train("audio", latent=ae_run, out=tmp_path / "lat", progress=False, steps=2, batch_size=8,
                    config={"model": TINY_UNET1D, "train": {"eval_samples": 3, "eval_steps": 3,
                                                             "eval_sampler": "ddim"}})
    wavs = sorted(res.sample_dir.glob("sample_*.wav"))
    assert len(wavs) == 3
    import soundfile as sf
    clip, rate = sf.read(wavs[0])
    assert rate == 8000 and clip.shape[0] == 2000            # data length, not latent length
    model = api.load(tmp_path / "lat", device="cpu")
    assert model.domain.template(2).x.shape == (2, 4, 63)
    assert model.sample(2, steps=2).x.shape == (2, 1, 2000)


def test_latent_refuses_data_of_another_shape(image_ae, tmp_path):
    with pytest.raises(api.DataError, match="height is 16 but the autoencoder"):
        api.train("image", latent=image_ae, out=tmp_path / "lat", progress=False, steps=1,
                  config={"model": TINY_UNET, "data_options": {"image_size": 16}})
    assert not (tmp_path / "lat").exists()


# ---------------------------------------------------------------------------- the record and its errors
def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(res, pattern):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in res.output


def test_missing_changed_or_wrong_domain_autoencoder_is_one_clear_error(image_ae, tmp_path):
    ae = tmp_path / "ae"
    shutil.copytree(image_ae, ae)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {**TINY_UNET, "attn_levels": []}, "train": {"final_eval": False}}))
    res = _cli("train", "--domain", "image", "--latent", ae, "--config", cfg, "--steps", 1, "--batch-size", 4,
               "--no-progress", "--device", "cpu", "--out", tmp_path / "lat")
    assert res.exit_code == 0, res.output
    # wrong domain: an image autoencoder for an audio model
    res = _cli("train", "--domain", "audio", "--latent", ae, "--steps", 1, "--out", tmp_path / "x")
    _one_line_error(res, "is an autoencoder of the 'image' domain, not 'audio'")
    # not an autoencoder run at all
    res = _cli("train", "--domain", "image", "--latent", tmp_path / "lat", "--steps", 1, "--out", tmp_path / "x")
    _one_line_error(res, "is not an autoencoder run")
    assert not (tmp_path / "x").exists()
    # an autoencoder run is not a diffusion model
    _one_line_error(_cli("sample", "-c", ae, "--num", 1), "is an autoencoder run, not a diffusion model")
    # the autoencoder the latent model needs is gone
    shutil.move(ae, tmp_path / "moved")
    res = _cli("sample", "-c", tmp_path / "lat", "--num", 1, "--steps", 2, "--out", tmp_path / "s")
    _one_line_error(res, "does not exist (the latent model needs the image autoencoder")
    assert not (tmp_path / "s").exists()
    # ... or replaced by other weights
    shutil.copytree(tmp_path / "moved", ae)
    from safetensors.torch import load_file, save_file
    w = ae / "checkpoint" / "ema.safetensors"
    state = load_file(str(w))
    state["scale"] = state["scale"] * 2
    save_file(state, str(w))
    res = _cli("sample", "-c", tmp_path / "lat", "--num", 1, "--steps", 2, "--out", tmp_path / "s")
    _one_line_error(res, "has changed since the latent model was trained on it")
    # resuming a latent run cannot swap the autoencoder
    res = _cli("train", "--resume", tmp_path / "lat", "--latent", tmp_path / "moved")
    _one_line_error(res, "--latent cannot change when resuming")


def test_domain_without_autoencoder_is_one_clear_error(tmp_path):
    from .toy import points_domain

    points_domain()              # a plug-in domain that provides no build_autoencoder
    res = _cli("train-autoencoder", "--domain", "points2d", "--out", tmp_path / "ae")
    _one_line_error(res, "the points2d domain cannot build an autoencoder")
    assert not (tmp_path / "ae").exists()


# ---------------------------------------------------------------------------- a third-party domain
def test_third_party_domain_gets_latent_diffusion_from_build_autoencoder_only(tmp_path):
    """A plug-in domain (the README's 2-D points) that adds only ``build_autoencoder`` trains an
    autoencoder and a latent model through the unchanged API; samples come back in data space."""
    from diffuse.core.models.latent import Autoencoder
    from diffuse.core.data.registry import register_domain

    from .toy import points_domain

    Points = points_domain()

    class LinearAE(Autoencoder):
        def __init__(self, config, data_info):
            super().__init__(config, "points2d-ae")
            dim = int(data_info.get("dim", 2))
            self.enc, self.dec = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)

        def encode(self, batch, generator=None, sample=True):
            return self.enc(batch.x)

        def decode(self, z, like):
            return self.dec(z)

        def latent_info(self, data_info):
            return {}

        def loss(self, batch, generator=None):
            loss = (self.dec(self.enc(batch.x)) - batch.x).pow(2).mean()
            return loss, {"mse": float(loss.detach())}

    class PointsAE(Points):
        name = "points2d-ae"

        def build_autoencoder(self, config):
            return LinearAE(config, self.info)

    register_domain(PointsAE)
    res = api.train_autoencoder("points2d-ae", out=tmp_path / "ae", progress=False, steps=200, batch_size=256,
                                lr=3e-2, config={"train": {"warmup_steps": 10, "ema_decay": 0.9}})
    # a linear autoencoder with as many latent as data dimensions reconstructs (almost) exactly
    assert res["metrics"]["mse"] < 1e-3 * 4.0, res["metrics"]
    api.train("points2d-ae", latent=tmp_path / "ae", out=tmp_path / "lat", progress=False, steps=20,
              config={"model": {"width": 32, "depth": 2}, "train": {"eval_samples": 64, "eval_steps": 5}})
    model = api.load(tmp_path / "lat", device="cpu")
    samples = model.sample(64, steps=5)
    assert samples.x.shape == (64, 2) and torch.isfinite(samples.x).all()
    assert "energy_distance" in model.evaluate(num=64, steps=5)
