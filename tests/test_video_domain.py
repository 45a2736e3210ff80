"""The video domain end to end on tiny models: backbones see every frame, training runs through the
public API, completion keeps the given frames exactly, samples are written and described, and
user mistakes are one-line errors."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

import diffuse.api as api
from diffuse.core import Condition, ConfigError, UnknownNameError
from diffuse.domains.video import VideoDomain
from diffuse.domains.video.backbones import FactorizedUNet, StackedFramesUNet
from diffuse.domains.video.inpaint import frames_mask
from diffuse.domains.video.moving import label_kind

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"base_channels": 8, "channel_mult": [1, 2], "attn_levels": [1], "head_dim": 8, "groups": 4}
INSTALLED = "video" in {ep.name for ep in entry_points(group="diffuse.domains")}


def _grad_reach(net: torch.nn.Module, t: int = 6) -> torch.Tensor:
    """How much output frame 0 depends on each input frame (gradient norms, ``[t]``)."""
    x = torch.randn(2, 1, t, 16, 16, requires_grad=True)
    net(x, torch.full((2,), 500.0))[:, :, 0].square().sum().backward()
    return x.grad.abs().sum((0, 1, 3, 4))


@pytest.mark.parametrize("cls", [StackedFramesUNet, FactorizedUNet])
def test_backbones_map_clips_to_clips_and_see_every_frame(cls):
    torch.manual_seed(0)
    net = cls(1, 6, **TINY)
    for p in net.parameters():          # zero-initialised outputs would hide the dependence at init
        torch.nn.init.normal_(p, std=0.1)
    assert net(torch.randn(3, 1, 6, 16, 16), torch.rand(3) * 999).shape == (3, 1, 6, 16, 16)
    reach = _grad_reach(net)
    assert bool((reach > 0).all()), reach


@pytest.mark.parametrize("cls", [StackedFramesUNet, FactorizedUNet])
def test_backbones_take_labels(cls):
    torch.manual_seed(0)
    net = cls(1, 4, num_classes=10, **TINY)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, n = torch.randn(2, 1, 4, 16, 16), torch.full((2,), 300.0)
    kind = label_kind()
    a = net(x, n, Condition({"label": torch.tensor([3, 3])}, {"label": kind}))
    b = net(x, n, Condition({"label": torch.tensor([7, 7])}, {"label": kind}))
    assert not torch.allclose(a, b)


def test_model_options_are_checked():
    dom = VideoDomain()
    with pytest.raises(ConfigError, match="unknown video model option"):
        dom.check_config({"bogus": 1})
    with pytest.raises(ConfigError, match="base_channels"):
        dom.check_config({"base_channels": 0})
    with pytest.raises(UnknownNameError, match="factorized, unet"):
        dom.check_config({"backbone": "transformer"})
    dom.check_config({"backbone": "factorized", "base_channels": 16})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "run"
    config = {"model": TINY, "data_options": {"num_clips": 64, "frames": 6, "size": 32, "digit_size": 14},
              "train": {"steps": 4, "batch_size": 4, "eval_samples": 4, "eval_steps": 3, "checkpoint_every": 0,
                        "warmup_steps": 1}}
    result = api.train(VideoDomain(), config=config, out=out, progress=False)
    return result


def test_training_runs_through_the_public_api(tiny_run):
    assert tiny_run.steps == 4
    for key in ("frame_fid", "identity", "physics_median_px", "physics_within_1px", "speed_w1"):
        assert key in tiny_run.metrics
    assert (tiny_run.sample_dir / "clip_0000.gif").is_file()


def _tiny_model():
    dom = VideoDomain()
    info = dom.load_data(None, {"num_clips": 8, "frames": 6, "size": 32, "digit_size": 14}).info()
    return api.build(dom, info, model=TINY, seed=0)


def test_completion_keeps_the_given_frames_exactly():
    model = _tiny_model()
    clip = model.domain.load_data(None, {"num_clips": 8, "frames": 6, "size": 32, "digit_size": 14}).batch([1])
    for known in ([0, 1, 2], [0, 5], [1, 3, 4]):        # prediction, interpolation, anything
        mask = frames_mask(6, known)
        out = model.complete((clip, mask), num=2, sampler="ddim", steps=4, seed=1)
        assert torch.equal(out.x[:, :, known], clip.x[:, :, known].expand(2, -1, -1, -1, -1))
        free = [f for f in range(6) if f not in known]
        assert not torch.equal(out.x[:, :, free], clip.x[:, :, free].expand(2, -1, -1, -1, -1))


def test_samples_are_written_and_described(tmp_path):
    model = _tiny_model()
    samples = model.sample(3, steps=2, seed=0)
    assert samples.x.shape == (3, 1, 6, 32, 32)
    paths = model.write(samples, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"clip_0000.gif", "clip_0000.png", "strips.png", "grid.gif"} <= names
    figures = model.describe(samples)
    assert set(figures) == {"identity", "physics_median_px", "physics_within_1px"}


def test_label_conditioned_clips(tmp_path):
    dom = VideoDomain()
    data = dom.load_data(None, {"num_clips": 8, "frames": 4, "size": 32, "digit_size": 14, "conditional": True})
    batch = data.batch(torch.arange(4))
    assert torch.equal(batch.cond["label"], batch.extras["digits"][:, 0])
    from diffuse.api.configs import record_conditions
    model = api.build(dom, record_conditions(dom, data.info()), model=TINY, seed=0)
    assert set(model.condition_kinds()) == {"label"}
    out = model.sample(2, steps=2, cond={"label": "three"}, guidance_scale=2.0)
    assert out.x.shape == (2, 1, 4, 32, 32)


@pytest.mark.skipif(not INSTALLED, reason="the video entry point is not installed (pip install -e . again)")
def test_the_command_line_trains_samples_and_inpaints(tiny_run, tmp_path):
    from click.testing import CliRunner

    from diffuse.cli.main import main

    run = str(tiny_run.run_dir)
    r = CliRunner().invoke(main, ["sample", "-c", run, "-n", "2", "--steps", "2", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    clip = tmp_path / "s" / "clip_0000.gif"
    r = CliRunner().invoke(main, ["inpaint", "-c", run, "-i", str(clip), "--span", "2:4", "-n", "1", "--steps", "2",
                                  "--out", str(tmp_path / "i")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["inpaint", "-c", run, "-i", str(clip), "--rect", "0,0,2,2", "--steps", "2"])
    assert r.exit_code == 2 and "video completion takes span" in r.output
