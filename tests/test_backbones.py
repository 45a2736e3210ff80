"""Backbones are a registry of each domain: records built in (the default one used when a model
section names none, so older runs keep their network), chosen by name, and added from another
package through the ``diffuse.backbones`` entry-point group."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from diffuse import api
from diffuse.cli.main import main
from diffuse.core.data.backbones import domain_backbones
from diffuse.core.errors import ConfigError, UnknownNameError
from diffuse.domains.image import ImageDomain

PLUGIN = """
import torch
from torch import nn
from diffuse.core.data.backbones import Backbone


class Tiny(nn.Module):
    def __init__(self, channels, width):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels + 1, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x, noise_level, cond=None, space=None):
        level = (noise_level.float() / 1000.0).to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        return self.net(torch.cat([x, level], 1))


def _check(domain, options):
    if options.get("width", 1) < 1:
        raise ValueError("width must be positive")


TINY = Backbone("tiny", lambda domain, options: Tiny(int(domain.info.get("channels", 1)), **options), _check,
                {"width": 8}, "a two-layer conv net (a test plug-in)")
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package on sys.path whose distribution registers ``image.tiny`` in ``diffuse.backbones``."""
    (tmp_path / "tinynet.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "tinynet-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinynet\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[diffuse.backbones]\nimage.tiny = tinynet:TINY\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("tinynet", None)


def test_builtin_backbones_and_the_default():
    image = ImageDomain()
    assert list(domain_backbones(image)) == ["unet", "dit"] and image.default_backbone == "unet"
    # a model section without a name is the default backbone's, as every run before names
    assert image.model_config({}) == image.default_model() == dict(domain_backbones(image)["unet"].defaults)
    with pytest.raises(UnknownNameError, match="unknown image backbone 'nope'; expected one of dit, unet"):
        image.model_config({"backbone": "nope"})


def test_a_plugged_in_backbone_is_found_by_name_and_trains(plugin, tmp_path):
    image = ImageDomain()
    assert set(domain_backbones(image)) == {"unet", "dit", "tiny"}
    cfg = image.model_config({"backbone": "tiny"})
    assert cfg == {"width": 8, "backbone": "tiny"}              # its own defaults, not the U-Net's
    result = api.train("image", out=tmp_path / "run", model={"backbone": "tiny", "width": 4}, steps=2,
                       batch_size=4, device="cpu", progress=False, final_eval=False)
    model = api.load(result.run_dir)
    assert type(model.denoiser.backbone).__name__ == "Tiny" and model.config.model["backbone"] == "tiny"
    assert torch.isfinite(model.sample(2, steps=2).x).all()
    with pytest.raises(ValueError, match="width must be positive"):
        api.make_config("image", model={"backbone": "tiny", "width": 0})


def test_cli_backbone_option_and_listing(plugin, tmp_path):
    res = CliRunner().invoke(main, ["domains"])
    assert res.exit_code == 0 and "backbones: unet (default), tiny" in res.output.replace("tiny, unet (default)", "unet (default), tiny")
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--backbone", "nope", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and res.output.strip() == ("error: unknown image backbone 'nope'; expected one of "
                                                         "dit, tiny, unet")
    assert not (tmp_path / "r").exists()


def test_a_domain_with_one_network_refuses_a_backbone_name():
    from toy import points_domain

    points_domain()
    with pytest.raises(ConfigError, match="builds one network"):
        api.make_config("points2d", model={"backbone": "x"})
