"""FID / KID / conditional accuracy, the PNG writer, and the image Domain glue."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffuse.core.data.domain import Batch
from diffuse.core.data.space import DenseSpace
from diffuse.domains.image import ImageDomain
from diffuse.domains.image.features import LeNet, bundled_lenet, extract_features, train_lenet
from diffuse.domains.image.metrics import conditional_accuracy, fid_from_features, kid_from_features
from diffuse.domains.image.writer import write_pngs


def test_fid_kid_from_samples():
    g = torch.Generator().manual_seed(0)
    n, d = 20000, 3
    mu = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = mu + scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    closed = float((mu ** 2).sum() + ((1 - scale) ** 2).sum())
    assert fid_from_features(x, y) == pytest.approx(closed, abs=0.05)
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    x2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    same, _ = kid_from_features(x, x2, num_subsets=20)
    diff, _ = kid_from_features(x, y, num_subsets=20)
    assert abs(same) < 0.02 < diff
    exact, _ = kid_from_features(x[:500], x[:500])
    assert abs(exact) < 0.05


@pytest.fixture(scope="module")
def digits():
    ds = ImageDomain().load_data(None, {})
    rest, held = ds.split(0.1)
    return ds, rest, held


def test_real_digits_score_far_better_than_noise_or_blur(digits):
    ds, rest, held = digits
    net = bundled_lenet()
    ref = extract_features(net, held.images)
    real = extract_features(net, rest.images[:500])
    g = torch.Generator().manual_seed(0)
    noise = extract_features(net, torch.rand(500, 1, 28, 28, generator=g) * 2 - 1)
    x = rest.images[:500].float() / 127.5 - 1
    blur = extract_features(net, F.avg_pool2d(x, 5, stride=1, padding=2))
    fid_real, fid_noise, fid_blur = (fid_from_features(f, ref) for f in (real, noise, blur))
    assert fid_real * 10 < fid_blur < fid_noise
    assert kid_from_features(real, ref)[0] * 10 < kid_from_features(blur, ref)[0]


def test_conditional_accuracy(digits):
    ds, rest, held = digits
    net = bundled_lenet()
    x = held.images.float() / 127.5 - 1
    assert conditional_accuracy(net, x, held.labels) > 0.95
    wrong = (held.labels + 1) % 10
    assert conditional_accuracy(net, x, wrong) < 0.05


def test_on_the_fly_feature_network_learns(digits):
    ds, rest, held = digits
    net = train_lenet(rest.images[:1000], rest.labels[:1000], 10, steps=60)
    x = held.images.float() / 127.5 - 1
    assert isinstance(net, LeNet) and conditional_accuracy(net, x, held.labels) > 0.5
    rot = train_lenet(rest.images[:300], None, steps=10)  # rotation pretext task: 4 outputs
    assert rot.num_classes == 4


def test_domain_metrics_and_template(digits):
    ds, rest, held = digits
    info = ds.info()
    dom = ImageDomain().bind(info)
    real = Batch(rest.batch(torch.arange(64)).x, DenseSpace(), rest.labels[:64])
    noise = Batch(torch.rand(64, 1, 28, 28) * 2 - 1, DenseSpace())
    m_real = dom.metrics(real, held)
    m_noise = dom.metrics(noise, held)
    assert m_real["fid"] * 5 < m_noise["fid"] and "kid" in m_real
    assert m_real["class_accuracy"] > 0.9 and "class_accuracy" not in m_noise
    t = dom.template(3)
    assert t.x.shape == (3, 1, 28, 28) and len(t) == 3
    cdom = dom.bind({**info, "conditional": True})
    net = cdom.build_backbone({"base_channels": 8, "head_dim": 8})
    assert net.num_classes == 10 and net.class_emb.num_embeddings == 11  # + the null class
    from diffuse.core.data.condition import Condition
    t = cdom.template(2)
    cond = Condition({"label": torch.tensor([3, 10])}, cdom.condition_kinds())
    assert net(t.x, torch.tensor([5.0, 5.0]), cond=cond).shape == t.x.shape
    with pytest.raises(ValueError, match="unknown image model option"):
        dom.build_backbone({"width": 3})


def test_writer_round_trip(tmp_path):
    x = torch.linspace(-1.5, 1.5, 5 * 28 * 28).reshape(5, 1, 28, 28)
    x[0] = -1.0
    x[1] = 1.0
    paths = ImageDomain().bind({}).write(Batch(x, DenseSpace()), tmp_path)
    assert [p.name for p in paths] == ["grid.png"] + [f"sample_{i:04d}.png" for i in range(5)]
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (3 * 30 + 2, 2 * 30 + 2) and grid.mode == "L"  # 3 columns, 2 rows, 2-pixel gaps
    s0, s1 = (np.asarray(Image.open(tmp_path / f"sample_000{i}.png")) for i in (0, 1))
    assert s0.shape == (28, 28) and (s0 == 0).all() and (s1 == 255).all()
    rgb = write_pngs(torch.zeros(2, 3, 5, 7), tmp_path / "rgb")
    im = Image.open(rgb[1])
    assert im.size == (7, 5) and im.mode == "RGB" and np.asarray(im)[0, 0, 0] == 128


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_inception_loader_takes_torchscript_files(tmp_path):
    from diffuse.core.errors import DataError
    from diffuse.domains.image.features import InceptionFeatures

    class Pool(torch.nn.Module):  # stands in for an Inception network: [B, 3, H, W] -> [B, 3] features
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    path = tmp_path / "feat.pt"
    torch.jit.script(Pool()).save(str(path))
    net = InceptionFeatures(path)
    x = torch.rand(4, 1, 10, 10) * 2 - 1
    f = extract_features(net, x)
    assert f.shape == (4, 3)
    # grayscale is repeated to RGB and resized to 299x299 (bilinear keeps the mean of a constant image)
    const = torch.full((2, 1, 8, 8), 0.5)
    torch.testing.assert_close(extract_features(net, const), torch.full((2, 3), 0.5, dtype=torch.float64))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(DataError, match="junk.pt"):
        InceptionFeatures(tmp_path / "junk.pt")
    with pytest.raises(DataError, match="not found"):
        InceptionFeatures(tmp_path / "missing.pt")
