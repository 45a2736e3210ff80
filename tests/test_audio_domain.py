"""The audio domain end to end: registry, writer round trip, a tiny training run, sampling."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from diffuse.core.config import DiffusionConfig
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.data.domain import Batch
from diffuse.core.sampling.generate import generate
from diffuse.core.data.registry import get_domain
from diffuse.core.data.space import DenseSpace
from diffuse.domains.audio import AudioDomain

TINY = {"channels": [8, 16, 16], "factors": [4, 4], "num_res_blocks": 1, "dilations": [1], "heads": 2}


def test_registered_under_audio():
    dom = get_domain("audio")
    assert isinstance(dom, AudioDomain) and dom.name == "audio"
    with pytest.raises(ValueError, match="preset"):
        dom.check_config({"preset": "huge"})
    with pytest.raises(ValueError, match="unknown audio model option"):
        dom.check_config({"chanels": [8]})


def test_writer_round_trip(tmp_path: Path):
    dom = AudioDomain().bind({"sample_rate": 8000, "channels": 2, "length": 1234})
    x = 0.5 * torch.randn(3, 2, 1234, generator=torch.Generator().manual_seed(0)).clamp(-1.9, 1.9)
    paths = dom.write(Batch(x, DenseSpace()), tmp_path)
    wavs = sorted(p for p in paths if p.suffix == ".wav")
    assert len(wavs) == 3
    for i, p in enumerate(wavs):
        data, rate = sf.read(p, dtype="float32", always_2d=True)
        assert rate == 8000 and data.shape == (1234, 2) and sf.info(p).subtype == "PCM_16"
        assert np.abs(data - x[i].clamp(-1, 1).numpy().T).max() < 1.0 / 32767 + 1e-6
    png = [p for p in paths if p.suffix == ".png"]
    assert len(png) == 1 and Image.open(png[0]).size[1] == 128


def _tiny_setup(steps_data: int = 2):
    dom = AudioDomain()
    ds = dom.load_data(None, {**dom.default_data(), "sample_rate": 8000, "clip_seconds": 0.125})
    ds = ds.subset(torch.tensor([1, 30][:steps_data]))            # a kick and a tabla stroke
    info = ds.info()
    dom = dom.bind(info)
    diff = Diffusion(DiffusionConfig(**dom.default_diffusion()))
    torch.manual_seed(0)
    den = diff.denoiser(dom.build_backbone(TINY))
    return dom, ds, info, diff, den


def test_tiny_training_run_lowers_the_loss():
    dom, ds, info, diff, den = _tiny_setup()
    opt = torch.optim.AdamW(den.parameters(), lr=3e-3)
    eval_gen = lambda: torch.Generator().manual_seed(123)

    def held_loss() -> float:   # the same fixed (t, eps) draws before and after training
        with torch.no_grad():
            b = ds.batch(torch.arange(2).repeat(16), eval_gen())
            return float(diff.training_losses(den, b, eval_gen()).mean())

    before = held_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        b = ds.batch(torch.arange(2).repeat(4), g)
        loss = diff.training_losses(den, b, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_loss()
    assert after < 0.7 * before, (before, after)


def test_sampling_writes_valid_wavs(tmp_path: Path):
    dom, ds, info, diff, den = _tiny_setup()
    samples = generate(den, dom, 3, sampler="ddim", steps=4, seed=0, batch_size=2)
    assert samples.x.shape == (3, 1, info["length"]) and torch.isfinite(samples.x).all()
    again = generate(den, dom, 3, sampler="ddim", steps=4, seed=0, batch_size=3)
    torch.testing.assert_close(samples.x, again.x, atol=1e-5, rtol=1e-4)
    paths = dom.write(samples, tmp_path)
    for p in (p for p in paths if p.suffix == ".wav"):
        data, rate = sf.read(p)
        assert rate == 8000 and len(data) == info["length"]
    desc = dom.describe_samples(samples)
    assert set(desc) == {"rms_db", "peak", "clipped", "flatness"}
    metrics = dom.metrics(samples, ds)
    assert {"fd_logmel", "fd_mfcc", "fd_net", "flatness"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())


def test_audio_samples_with_ddpm_on_a_karras_grid_by_default():
    """The audio domain's defaults: DDPM-50 (DiffusionModel.sample / diffuse sample without
    --sampler) on Karras' grid where the core's rule would give DDPM the trailing grid (which
    jumps to the data from t = 1/steps); other samplers and flow paths keep the core's rule."""
    from diffuse.core.sampling.registry import default_spacing
    from diffuse.core.process.schedules import make_schedule

    dom, ds, info, diff, den = _tiny_setup()
    assert dom.default_sampling() == ("ddpm", 50)
    vp = diff.schedule
    assert default_spacing(vp, "ddpm", 50) == "trailing" and dom.default_spacing(vp, "ddpm", 50) == "karras"
    assert dom.default_spacing(vp, "ddim", 50) is None
    assert dom.default_spacing(make_schedule({"kind": "flow"}), "ddpm", 50) is None
    a = generate(den, dom, 2, sampler="ddpm", steps=4, seed=0)
    b = generate(den, dom, 2, sampler="ddpm", steps=4, seed=0, spacing="karras")
    c = generate(den, dom, 2, sampler="ddpm", steps=4, seed=0, spacing="trailing")
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
