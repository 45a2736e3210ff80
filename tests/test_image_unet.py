"""U-Net backbone of the image domain: shapes, conditioning, invariants, gradients."""

import pytest
import torch

from diffuse.domains.image.unet import UNet


def _small(**kw):
    args = dict(base_channels=8, channel_mult=(1, 2, 2), num_blocks=1, head_dim=8, groups=4)
    args.update(kw)
    return UNet(**args)


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised output layers random weights so every input can matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 1, 13, 17), (2, 3, 16, 16), (1, 3, 9, 30)])
def test_output_shape_for_odd_sizes(shape):
    model = _randomize(_small(in_channels=shape[1]))
    x = torch.randn(shape)
    out = model(x, torch.tensor([10.0, 500.0])[: shape[0]])
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_fresh_model_outputs_zero():
    # zero-initialised output convolution: the untrained model predicts eps = 0 exactly
    model = _small().eval()
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([1.0, 999.0]))
    assert torch.equal(out, torch.zeros_like(out))


def test_samples_do_not_interact_and_memory_format_is_irrelevant():
    torch.manual_seed(0)
    model = _randomize(_small(num_classes=3))
    x, t, y = torch.randn(4, 1, 20, 20), torch.tensor([3.0, 300.0, 600.0, 900.0]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        full = model(x, t, cond=y)
        part = model(x[1:3], t[1:3], cond=y[1:3])
        plain = _small(num_classes=3, channels_last=False)
        plain.load_state_dict(model.state_dict())
        other = plain.eval()(x, t, cond=y)
    torch.testing.assert_close(full[1:3], part, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full, other, atol=1e-5, rtol=1e-4)


def test_class_conditioning_and_null_class():
    model = _randomize(_small(num_classes=10))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([400.0, 400.0])
    with torch.no_grad():
        a = model(x, t, cond=torch.tensor([1, 1]))
        b = model(x, t, cond=torch.tensor([7, 7]))
        null = model(x, t, cond=torch.tensor([10, 10]))
        none = model(x, t)
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(null, none)  # label == num_classes is "unconditional"


def test_cross_attention_context_and_mask():
    model = _randomize(_small(context_dim=6))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([200.0, 700.0])
    ctx = torch.randn(2, 5, 6)
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    with torch.no_grad():
        base = model(x, t, cond={"context": ctx, "context_mask": mask})
        other = model(x, t, cond={"context": torch.randn(2, 5, 6), "context_mask": mask})
        ctx2 = ctx.clone()
        ctx2[:, 3:] = torch.randn(2, 2, 6)  # only the masked-out tokens change
        masked = model(x, t, cond={"context": ctx2, "context_mask": mask})
    assert (base - other).abs().max() > 1e-3
    torch.testing.assert_close(base, masked, atol=1e-5, rtol=1e-4)


def test_gradients_reach_every_parameter():
    model = _randomize(_small(num_classes=4, context_dim=6, dropout=0.1)).train()
    x = torch.randn(2, 1, 13, 17, requires_grad=True)
    out = model(x, torch.tensor([5.0, 50.0]), cond={"labels": torch.tensor([0, 3]), "context": torch.randn(2, 3, 6)})
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_wrong_conditions_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        _small()(torch.randn(1, 1, 8, 8), torch.tensor([1.0]), cond=torch.tensor([1]))
    with pytest.raises(ValueError, match="context_dim"):
        _small()(torch.randn(1, 1, 8, 8), torch.tensor([1.0]), cond=torch.randn(1, 2, 4))


def test_attention_resolutions():
    model = _small(attn_levels=None, attn_resolutions=(14,), image_size=28)
    with_attn = [i for i, blocks in enumerate(model.down) if blocks[0].attn is not None]
    assert with_attn == [1]


def test_default_size_matches_diffusers_reference():
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    from diffuse.domains.image import ImageDomain
    ours = ImageDomain().bind({"channels": 1, "height": 28, "width": 28}).build_backbone({})
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("side,channels_last", [(7, True), (10, False), (16, True), (5, False)])
def test_upsample_is_nearest_upsampling_then_the_3x3_convolution(side, channels_last):
    """The transposed-convolution upsampler equals what it replaces (nearest 2x, then the same
    3x3 convolution with zero padding), in value and in the gradients of input, weight and bias,
    on both sides of the size where it switches to the direct path."""
    from diffuse.domains.image.unet import Upsample
    torch.manual_seed(side)
    up = Upsample(6).double()
    x = torch.randn(3, 6, side, side + 3, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = up(x)
    ref = torch.nn.functional.conv2d(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"),
                                     up.weight, up.bias, padding=1)
    assert out.shape == (3, 6, 2 * side, 2 * side + 6)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, up.weight, up.bias), g),
                    torch.autograd.grad(ref, (x, up.weight, up.bias), g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
