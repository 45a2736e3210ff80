"""The Diffusion Transformer backbone (domains/dit.py): adaLN-Zero blocks start as the identity,
patches are a strided convolution and round-trip exactly, odd sides work, a patch that does not
divide is one clear line before anything is written, masks keep text padding out of attention,
and the DiT trains and samples through the registry for images, latents and audio."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from diffuse import api
from diffuse.cli.main import main
from diffuse.core.data.condition import Condition, LabelKind
from diffuse.core.errors import ConfigError
from diffuse.domains.dit import DiT, DiTBlock, auto_patch, check_patch, patchify, sincos_positions, unpatchify

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DIT = {"backbone": "dit", "preset": "tiny", "patch_size": 4, "depth": 2, "width": 32}


def _perturb(module: torch.nn.Module, but: tuple[torch.nn.Module, ...] = ()) -> None:
    """Random values in every parameter except those of ``but`` (so that only what is kept at zero
    can make a block the identity)."""
    skip = {id(p) for m in but for p in m.parameters()}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            if id(p) not in skip:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


# ------------------------------------------------------------------------ adaLN-Zero
def test_a_fresh_block_is_the_identity_whatever_its_other_weights():
    torch.manual_seed(0)
    net = DiT(3, [8, 8], 2, width=32, depth=3, heads=4, num_classes=5)
    c = torch.randn(4, 32)
    mods = net.adaln(torch.nn.functional.silu(c)).unflatten(1, (-1, 32))
    assert torch.equal(mods, torch.zeros_like(mods))               # adaLN-Zero: every modulation starts at 0
    x = torch.randn(4, 16, 32)
    for blk, rows in zip(net.blocks, net._rows):
        _perturb(blk)                                              # attention and MLP weights random
        assert torch.equal(blk(x, mods[:, :rows]), x)
    # the fresh network's output is zero (the final layer starts at zero too), for any input and label
    out = net(torch.randn(4, 3, 8, 8), torch.rand(4) * 1000, torch.tensor([0, 1, 2, 5]))
    assert torch.equal(out, torch.zeros_like(out))
    # ... and a non-zero modulation makes the same block act (the test can fail)
    blk = net.blocks[0]
    assert not torch.allclose(blk(x, torch.randn(4, 6, 32) * 0.5), x)


@pytest.mark.parametrize("mode", ["cross", "joint"])
def test_fresh_text_blocks_are_the_identity_on_both_streams(mode):
    torch.manual_seed(0)
    blk = DiTBlock(32, 4, 2.0, context_dim=32, joint=mode == "joint")
    _perturb(blk, but=(blk.cross.out,) if blk.cross is not None else ())
    if blk.cross is not None:
        torch.nn.init.zeros_(blk.cross.out.weight)
        torch.nn.init.zeros_(blk.cross.out.bias)
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    zero = torch.zeros(2, blk.mod_rows(), 32)
    out = blk(x, zero, (ctx, mask))
    if mode == "joint":
        assert torch.equal(out[0], x) and torch.equal(out[1], ctx)
    else:
        assert torch.equal(out, x)


@pytest.mark.parametrize("mode", ["cross", "joint"])
def test_padded_text_tokens_do_not_reach_the_patches(mode):
    torch.manual_seed(0)
    blk = DiTBlock(32, 4, 2.0, context_dim=32, joint=mode == "joint")
    _perturb(blk)
    x, ctx = torch.randn(2, 10, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    mod = torch.randn(2, blk.mod_rows(), 32) * 0.5
    first = blk(x, mod, (ctx, mask))
    other = ctx.clone()
    other[1, 2:] = torch.randn(3, 32) * 10                         # change only masked-out tokens
    second = blk(x, mod, (other, mask))
    a, b = (first[0], second[0]) if mode == "joint" else (first, second)
    assert torch.allclose(a, b, atol=1e-5)
    other[1, 0] += torch.randn(32)              # a valid token does reach them (a constant would vanish in LN)
    third = blk(x, mod, (other, mask))
    assert not torch.allclose(a, third[0] if mode == "joint" else third, atol=1e-3)


# ------------------------------------------------------------------------ patches and positions
@pytest.mark.parametrize("sizes,patch", [([9, 15], [3, 3]), ([7, 7], [1, 1]), ([7, 7], [7, 7]), ([63], [9]),
                                         ([4, 6, 8], [2, 3, 4]), ([10, 6], [5, 2])])
def test_patches_round_trip_and_equal_a_strided_convolution(sizes, patch):
    x = torch.randn(2, 3, *sizes)
    tokens = patchify(x, patch)
    grid = [s // p for s, p in zip(sizes, patch)]
    assert tokens.shape == (2, torch.tensor(grid).prod().item(), 3 * torch.tensor(patch).prod().item())
    assert torch.equal(unpatchify(tokens, patch, grid, 3), x)
    if len(sizes) in (1, 2):
        w = torch.randn(5, 3, *patch)
        conv = (torch.nn.functional.conv1d if len(sizes) == 1 else torch.nn.functional.conv2d)(x, w, stride=patch)
        assert torch.allclose(conv.flatten(2).transpose(1, 2), tokens @ w.reshape(5, -1).T, atol=1e-4)


@pytest.mark.parametrize("sizes,patch", [([9, 15], 3), ([7, 7], 1), ([7, 7], 7), ([63], 21), ([2000], "auto")])
def test_odd_sizes_give_outputs_shaped_like_the_input(sizes, patch):
    torch.manual_seed(0)
    net = DiT(2, sizes, patch, width=32, depth=1, heads=4)
    _perturb(net)
    x = torch.randn(3, 2, *sizes)
    out = net(x, torch.tensor([1.0, 500.0, 999.0]))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().sum() > 0


def test_a_patch_that_does_not_divide_is_one_clear_line():
    with pytest.raises(ConfigError) as info:
        check_patch(3, [28, 28])
    msg = str(info.value)
    assert "\n" not in msg and msg == ("DiT patch size 3x3 does not divide the input size 28x28; choose a patch "
                                       "dividing every side (here: 1, 2, 4, 7, 14, 28)")
    with pytest.raises(ConfigError, match="patch_size must be"):
        check_patch(0, [28, 28])
    assert auto_patch([28, 28]) == 2 and auto_patch([7, 7]) == 1 and auto_patch([8000]) == 32
    assert auto_patch([17]) == 1 and auto_patch([512, 512]) == 32


def test_a_patch_that_does_not_divide_fails_before_the_run_is_written(tmp_path):
    with pytest.raises(ConfigError, match="does not divide the input size 28x28"):
        api.train("image", out=tmp_path / "run", model={**TINY_DIT, "patch_size": 3}, steps=1, progress=False)
    assert not (tmp_path / "run").exists()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"preset": "tiny", "patch_size": 5}}))
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--backbone", "dit", "--config", str(cfg),
                                    "--steps", "1", "--out", str(tmp_path / "cli")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and res.output.startswith("error: DiT patch size 5x5")
    assert not (tmp_path / "cli").exists()


def test_bad_dit_options_are_config_errors_naming_the_key():
    for model, key in (({"width": 30, "heads": 4}, "model.width 30 is not divisible"),
                       ({"pos_emb": "rope"}, "model.pos_emb"), ({"text_mode": "concat"}, "model.text_mode"),
                       ({"depth": 0}, "model.depth"), ({"preset": "huge"}, "unknown DiT model preset"),
                       ({"blocks": 3}, "unknown DiT model option"),
                       ({"text_mode": "pool", "text_pool": False}, "reads the prompt only through text_pool")):
        with pytest.raises(ConfigError, match=key):
            api.make_config("image", model={"backbone": "dit", **model})


def test_sincos_positions_are_distinct_and_learned_ones_start_there():
    table = sincos_positions([7, 5], 32)
    assert table.shape == (35, 32)
    d = torch.cdist(table, table) + torch.eye(35) * 10
    assert float(d.min()) > 0.1                                     # every patch position is told apart
    # axis 0 moves only the first half of the channels
    assert not torch.equal(table.view(7, 5, 32)[0, :, :16], table.view(7, 5, 32)[3, :, :16])
    assert torch.equal(table.view(7, 5, 32)[:, 0, :16], table.view(7, 5, 32)[:, 4, :16])
    learned = DiT(1, [7, 5], 1, width=32, depth=1, heads=4, pos_emb="learned")
    fixed = DiT(1, [7, 5], 1, width=32, depth=1, heads=4, pos_emb="sinusoidal")
    assert isinstance(learned.pos, torch.nn.Parameter) and torch.equal(learned.pos.data[0], table)
    assert not isinstance(fixed.pos, torch.nn.Parameter) and "pos" not in fixed.state_dict()


# ------------------------------------------------------------------------ conditioning
def test_labels_reach_the_output_through_the_modulation():
    """After a few steps on data whose target depends on the label only, the DiT's output
    follows the label (and the null label gives the mean)."""
    torch.manual_seed(0)
    net = DiT(1, [4, 4], 2, width=32, depth=2, heads=4, num_classes=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(150):
        y = torch.randint(0, 2, (32,))
        drop = torch.rand(32) < 0.2
        target = (2.0 * y - 1.0).where(~drop, torch.zeros(32))[:, None, None, None].expand(32, 1, 4, 4)
        out = net(torch.randn(32, 1, 4, 4) * 0.1, torch.full((32,), 500.0), torch.where(drop, 2, y))
        loss = (out - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = torch.zeros(3, 1, 4, 4)
        out = net(x, torch.full((3,), 500.0), Condition({"label": torch.tensor([0, 1, 2])}, {"label": LabelKind(2)}))
    means = out.mean((1, 2, 3))
    assert means[0] < -0.7 and means[1] > 0.7 and abs(float(means[2])) < 0.3, means


# ------------------------------------------------------------------------ through the registry
def test_image_dit_trains_samples_and_reloads_with_labels_and_text(tmp_path):
    res = api.train("image", out=tmp_path / "run", model={**TINY_DIT, "text_mode": "joint"}, steps=2, batch_size=8,
                    progress=False, final_eval=False, conditions=["label", "text"])
    cfg = json.loads((res.run_dir / "config.json").read_text())
    assert cfg["model"]["backbone"] == "dit" and cfg["model"]["preset"] == "tiny"
    model = api.load(res.run_dir)
    net = model.denoiser.backbone
    assert isinstance(net, DiT) and net.patch == [4, 4] and net.text_mode == "joint" and net.class_emb is not None
    a = model.sample(2, steps=2, cond={"label": 3, "text": "a handwritten three"}, guidance_scale=2.0)
    b = model.sample(2, steps=2, cond={"text": "a handwritten three"})          # either condition alone
    c = model.sample(2, steps=2, cond={"label": 3})
    assert a.x.shape == b.x.shape == c.x.shape == (2, 1, 28, 28) and torch.isfinite(a.x).all()


def test_audio_dit_over_waveform_patches(tmp_path):
    res = api.train("audio", out=tmp_path / "a", model={"backbone": "dit", "preset": "tiny", "depth": 1},
                    steps=2, batch_size=4, progress=False, final_eval=False,
                    config={"data_options": {"sample_rate": 8000, "clip_seconds": 0.25}})
    model = api.load(res.run_dir)
    assert model.denoiser.backbone.patch == [8] and model.sample(1, steps=2).x.shape == (1, 1, 2000)


@pytest.mark.parametrize("name", ["image-dit", "image-latent-dit", "image-text-mmdit", "audio-latent-dit"])
def test_dit_recipes_make_valid_configs(name):
    from pathlib import Path

    import diffuse

    path = Path(diffuse.__file__).resolve().parent / "recipes" / f"{name}.json"
    domain = api.recipe_domain(path)
    cfg = api.make_config(domain, config=path)
    assert cfg.model["backbone"] == "dit" and cfg.domain == domain


@pytest.mark.parametrize("backbone", ["unet", "wavenet", "dit"])
def test_every_audio_backbone_reads_the_degraded_clips_of_restoration(backbone):
    """Denoising and bandwidth extension concatenate the degraded clip (and a flag) to the noisy
    input: every audio backbone takes those channels (the DiT once read only the low-rate one)."""
    from diffuse.domains.audio.backbones import restoration_channels

    info = {"channels": 1, "length": 512, "sample_rate": 8000, "noisy": [0.0, 15.0], "lowrate": 2000,
            "mel": {"n_mels": 16, "hop": 64}}
    dom = api.get_domain("audio").bind(info)
    net = dom.build_backbone({"backbone": backbone, "preset": "tiny"} if backbone == "dit" else {"backbone": backbone})
    assert restoration_channels(info) == 4
    assert net.in_cond_channels == 4
