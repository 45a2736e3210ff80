"""A domain binds its data set's ``data_info`` once (``Domain.bind``): configuration methods work
unbound, everything about a particular data set works on a bound copy."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import diffuse.api as api
from diffuse.cli.main import main
from diffuse.core.data.space import DenseSpace
from diffuse.core.data.domain import Batch
from diffuse.core.io import write_samples
from diffuse.core.models.latent import Autoencoder, LatentDomain
from diffuse.core.sampling.generate import generate

from toy import points_domain

INFOS = {"image": {"channels": 1, "height": 8, "width": 8},
         "audio": {"channels": 1, "length": 256, "sample_rate": 8000},
         "molecules": {"elements": list("HCNOF"), "num_atoms_hist": [[3, 1], [5, 2]], "feature_dim": 8}}


@pytest.fixture(scope="module", autouse=True)
def _register():
    points_domain()


@pytest.mark.parametrize("name", ["image", "audio", "molecules", "points2d"])
def test_unbound_data_methods_raise_the_clear_error(name, tmp_path):
    dom = api.get_domain(name)
    assert not dom.bound
    message = f"the {name} domain is not bound to a data set's data_info; call bind\\(info\\)"
    calls = [lambda: dom.info, lambda: dom.template(2), lambda: dom.build_backbone(dom.default_model()),
             lambda: dom.condition_kinds()]
    if name in ("audio", "molecules"):     # writers that need the data's facts (sample rate, elements)
        calls.append(lambda: dom.write(Batch(torch.zeros(2, 1, 4), DenseSpace()), tmp_path))
    for call in calls:
        with pytest.raises(RuntimeError, match=message):
            call()
    # configuration methods work unbound
    assert isinstance(dom.default_model(), dict) and isinstance(dom.default_data(), dict)
    assert dom.default_sampling()[0] in ("ddim", "ddpm")
    dom.check_config(dom.default_model())
    assert dom.condition_data_options([]) == {}


def test_bind_returns_a_copy_and_leaves_the_original_unbound():
    dom = api.get_domain("image")
    info = dict(INFOS["image"])
    bound = dom.bind(info)
    assert bound is not dom and type(bound) is type(dom)
    assert bound.bound and bound.info is info and not dom.bound
    assert bound.template(3).x.shape == (3, 1, 8, 8)
    again = bound.bind({**info, "height": 16})          # a bound domain re-binds into another copy
    assert again is not bound and again.template(1).x.shape == (1, 1, 16, 8)
    assert bound.info is info and bound.template(1).x.shape == (1, 1, 8, 8)
    with pytest.raises(TypeError, match="data_info dict"):
        dom.bind(None)


@pytest.mark.parametrize("name", ["image", "audio", "molecules"])
def test_every_domain_binds_its_data_info(name):
    bound = api.get_domain(name).bind(INFOS[name])
    tpl = bound.template(2, [torch.Generator().manual_seed(i) for i in range(2)])
    assert len(tpl) == 2
    assert bound.condition_kinds() == {}


def test_a_bound_domain_samples_and_writes(tmp_path):
    dom = api.get_domain("points2d").bind({"dim": 2})
    torch.manual_seed(0)
    model = api.build(dom, dom.info, model={"width": 16, "depth": 2}, device="cpu")
    assert model.domain.bound and model.data_info is model.domain.info
    samples = generate(model.denoiser, model.domain, 6, steps=3, seed=1)
    assert samples.x.shape == (6, 2) and torch.equal(samples.x, model.sample(6, steps=3, seed=1).x)
    paths = write_samples(model.domain, samples, tmp_path / "out")
    assert [p.name for p in paths] == ["points.csv"] and len(paths[0].read_text().splitlines()) == 6
    with pytest.raises(RuntimeError, match="not bound"):          # the sampling loop needs a bound domain
        generate(model.denoiser, api.get_domain("points2d"), 2, steps=2)


class _Widen(Autoencoder):
    """A latent of 3 dimensions for 2-D points (zero-padded)."""

    def __init__(self):
        super().__init__({}, "points2d")

    def encode(self, batch, generator=None, sample=True):
        return torch.nn.functional.pad(batch.x, (0, 1))

    def decode(self, z, like):
        return z[:, :2]

    def latent_info(self, data_info):
        return {"dim": 3}

    def latent_template(self, batch):
        return torch.zeros(batch.x.shape[0], 3)

    def loss(self, batch, generator=None):
        return torch.zeros(()), {}


def test_a_latent_domain_binds_its_base_to_the_data_and_builds_for_the_latent():
    base = api.get_domain("points2d")
    latent = LatentDomain(base, _Widen())
    assert not latent.bound
    bound = latent.bind({"dim": 2})
    assert bound.bound and bound.base.bound and not latent.base.bound and bound.base is not base
    assert bound.base.info == {"dim": 2} and bound.latent_data_info() == {"dim": 3}
    assert bound.template(4).x.shape == (4, 3)                          # latent templates of the data's structure
    assert bound.build_backbone({"width": 8, "depth": 1}).net[0].in_features == 3 + 32   # the latent's width
    assert bound.to_data(Batch(torch.ones(4, 3), DenseSpace())).x.shape == (4, 2)
    assert LatentDomain(base.bind({"dim": 2}), _Widen()).bound           # wrapping a bound base: bound


def test_the_toy_plugin_domain_works_through_the_cli(tmp_path):
    run = tmp_path / "run"
    fast = ["--batch-size", "64", "--device", "cpu", "--no-progress", "--eval-samples", "16"]
    res = CliRunner().invoke(main, ["train", "--domain", "points2d", "--steps", "10", "--out", str(run), *fast])
    assert res.exit_code == 0, res.output
    assert (run / "samples" / "final" / "points.csv").is_file()
    res = CliRunner().invoke(main, ["sample", "-c", str(run), "--num", "5", "--steps", "4", "--out",
                                    str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "s" / "points.csv").read_text().splitlines()) == 5
    model = api.load(run, device="cpu")
    assert model.domain.bound and model.data_info == {"dim": 2} == model.config.data_info
