"""The 1-D waveform U-Net: any length in, same length out; per-sample independence; conditions."""

import pytest
import torch

from diffuse.domains.audio.unet import UNet1D

TINY = dict(channels=(8, 16, 16), factors=(4, 3), num_res_blocks=1, dilations=(1, 2), heads=2)


@pytest.mark.parametrize("length", [1, 7, 12, 13, 97, 1001])
@pytest.mark.parametrize("channels", [1, 2])
def test_odd_lengths_round_trip(length: int, channels: int) -> None:
    torch.manual_seed(0)
    net = UNet1D(in_channels=channels, **TINY)
    x = torch.randn(3, channels, length)
    out = net(x, torch.tensor([0.0, 500.0, 999.0]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("upsample", ["conv_transpose", "interp"])
def test_gradients_reach_every_parameter(upsample: str) -> None:
    torch.manual_seed(0)
    net = UNet1D(**TINY, upsample=upsample)
    # zero-initialised output layers make the first step's gradient vanish inside; perturb them
    for p in net.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, 1, 101)
    net(x, torch.tensor([10.0, 900.0])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_samples_do_not_interact_across_the_batch() -> None:
    # GroupNorm and attention act within a sample: a sample's output cannot depend on its batch mates
    torch.manual_seed(0)
    net = UNet1D(**TINY).eval()
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(4, 1, 250), torch.tensor([1.0, 200.0, 600.0, 999.0])
    full = net(x, t)
    for i in range(4):
        torch.testing.assert_close(net(x[i:i + 1], t[i:i + 1]), full[i:i + 1], atol=1e-5, rtol=1e-4)


def test_output_depends_on_noise_level_and_labels() -> None:
    torch.manual_seed(0)
    net = UNet1D(**TINY, num_classes=3, cond_dim=5).eval()
    for p in net.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, 64)
    t = torch.tensor([100.0, 100.0])
    a = net(x, t, cond=torch.tensor([0, 1]))
    b = net(x, t, cond=torch.tensor([2, 1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)
    assert not torch.allclose(net(x, t), net(x, t * 5))
    tokens = torch.randn(2, 4, 5)
    assert net(x, t, cond=tokens).shape == x.shape
    assert not torch.allclose(net(x, t, cond=tokens), net(x, t, cond=tokens * 2))


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="factors"):
        UNet1D(channels=(8, 16), factors=(4, 4))
    with pytest.raises(ValueError, match="channel"):
        UNet1D(**TINY)(torch.randn(1, 2, 16), torch.zeros(1))
