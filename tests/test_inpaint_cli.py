"""`diffuse inpaint` / `diffuse edit` through the CLI for images, audio and molecules (tiny
models): the known part is kept exactly in the written files, bad input is one error line,
exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from PIL import Image

from diffuse.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = {
    "image": {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [1], "groups": 4,
              "head_dim": 8},
    "audio": {"channels": [8, 16], "factors": [4], "attn_levels": []},
    "molecules": {"preset": "tiny"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint")
    out = {}
    for domain, model in MODELS.items():
        cfg = root / f"{domain}.json"
        cfg.write_text(json.dumps({"model": model}))
        run = root / domain
        res = CliRunner().invoke(main, ["train", "--domain", domain, "--config", str(cfg), "--steps", "2",
                                        "--batch-size", "4", "--eval-samples", "0", "--no-progress",
                                        "--device", "cpu", "--out", str(run)])
        assert res.exit_code == 0, res.output
        out[domain] = run
    return out


def _ok(args):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return res.output


def _fails(args, match, out=None):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert match in res.output, res.output
    if out is not None:
        assert not out.exists()


def _digit(path, size=28):
    img = (np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)
    Image.fromarray(img, "L").save(path)
    return img


def test_image_inpaint_keeps_the_known_pixels_and_edit_strength_zero_is_the_input(runs, tmp_path):
    src = _digit(tmp_path / "in.png")
    out = tmp_path / "rect"
    text = _ok(["inpaint", "-c", str(runs["image"]), "--input", str(tmp_path / "in.png"), "--rect", "7,7,21,14",
                "--num", "2", "--steps", "6", "--resample", "2", "--jump-length", "3", "--out", str(out)])
    assert "known_max_abs_error" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["known_max_abs_error"] < 1e-6
    for k in range(2):
        got = np.asarray(Image.open(out / f"sample_{k:04d}.png"))
        keep = np.ones_like(src, dtype=bool)
        keep[7:14, 7:21] = False
        assert np.array_equal(got[keep], src[keep])
    # a mask PNG: white = generate
    mask = np.zeros((28, 28), np.uint8)
    mask[:, :10] = 255
    Image.fromarray(mask, "L").save(tmp_path / "mask.png")
    out = tmp_path / "mask"
    _ok(["inpaint", "-c", str(runs["image"]), "-i", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
         "--num", "1", "--sampler", "ddim", "--steps", "4", "--out", str(out)])
    got = np.asarray(Image.open(out / "sample_0000.png"))
    assert np.array_equal(got[:, 10:], src[:, 10:])
    out = tmp_path / "edit0"
    _ok(["edit", "-c", str(runs["image"]), "-i", str(tmp_path / "in.png"), "--strength", "0", "--num", "1",
         "--out", str(out)])
    assert np.array_equal(np.asarray(Image.open(out / "sample_0000.png")), src)
    _ok(["edit", "-c", str(runs["image"]), "-i", str(tmp_path / "in.png"), "--strength", "0.5", "--invert",
         "--steps", "4", "--num", "1", "--out", str(tmp_path / "edit-inv")])


def test_image_errors_are_one_line_and_write_nothing(runs, tmp_path):
    _digit(tmp_path / "in.png")
    _digit(tmp_path / "big.png", 32)
    Image.fromarray(np.zeros((20, 28), np.uint8), "L").save(tmp_path / "mask.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    run, src, out = str(runs["image"]), str(tmp_path / "in.png"), tmp_path / "never"
    base = ["inpaint", "-c", run, "--out", str(out), "--steps", "2"]
    _fails([*base, "-i", src, "--mask", str(tmp_path / "mask.png")], "same size", out)
    _fails([*base, "-i", src, "--rect", "0,0,40,5"], "--rect", out)
    _fails([*base, "-i", src, "--rect", "1,2,3"], "four whole numbers", out)
    _fails([*base, "-i", src, "--rect", "0,0,5,5", "--mask", str(tmp_path / "mask.png")], "not both", out)
    _fails([*base, "-i", src], "nothing to generate", out)
    _fails([*base, "-i", str(tmp_path / "big.png"), "--rect", "0,0,5,5"], "28x28", out)
    _fails([*base, "-i", str(tmp_path / "junk.png"), "--rect", "0,0,5,5"], "cannot read", out)
    _fails([*base, "-i", str(tmp_path / "nope.png"), "--rect", "0,0,5,5"], "does not exist", out)
    _fails([*base, "-i", src, "--rect", "0,0,5,5", "--resample", "0"], "--resample", out)
    _fails([*base, "-i", src, "--span", "0.1:0.2"], "span", out)
    _fails(["edit", "-c", run, "-i", src, "--strength", "1.5", "--out", str(out)], "strength", out)
    _fails(["upscale", "-c", run, "-i", src, "--out", str(out)], "super-resolution", out)
    _fails(["edit", "-c", run, "-i", src, "--strength", "0.5", "--invert", "--sampler", "ddpm", "--out", str(out)],
           "ddim", out)


def _clip(path, seconds=0.3, rate=16000):
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t)).astype(np.float32)
    sf.write(str(path), x, rate, subtype="FLOAT")
    return x / np.abs(x).max() * 0.95      # the bundled model's peak normalisation


def test_audio_gap_filling_and_continuation(runs, tmp_path):
    want = _clip(tmp_path / "clip.wav")
    run = str(runs["audio"])
    out = tmp_path / "gap"
    _ok(["inpaint", "-c", run, "-i", str(tmp_path / "clip.wav"), "--span", "0.1:0.2", "--num", "2", "--steps", "4",
         "--out", str(out)])
    got, rate = sf.read(str(out / "sample_000.wav"), dtype="float32")
    assert rate == 16000 and len(got) == len(want)
    keep = np.ones(len(want), bool)
    keep[1600:3200] = False
    assert np.abs(got[keep] - want[keep]).max() < 1.0 / 32767 + 1e-6   # 16-bit PCM rounding
    out = tmp_path / "cont"
    _ok(["inpaint", "-c", run, "-i", str(tmp_path / "clip.wav"), "--continue", "0.1", "--num", "1", "--steps", "4",
         "--out", str(out)])
    got, _ = sf.read(str(out / "sample_000.wav"), dtype="float32")
    assert len(got) == len(want) + 1600
    assert np.abs(got[:len(want)] - want).max() < 1.0 / 32767 + 1e-6
    never = tmp_path / "never"
    _fails(["inpaint", "-c", run, "-i", str(tmp_path / "clip.wav"), "--span", "0.2:0.4", "--out", str(never)],
           "outside the clip", never)
    _fails(["inpaint", "-c", run, "-i", str(tmp_path / "clip.wav"), "--span", "0.2-0.4", "--out", str(never)],
           "START:END", never)
    _fails(["inpaint", "-c", run, "-i", str(tmp_path / "clip.wav"), "--continue", "1.0", "--out", str(never)],
           "longer than this model's clips", never)


def _fragment(path, symbols, pos):
    lines = [str(len(symbols)), "fragment"] + [f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(symbols, pos)]
    path.write_text("\n".join(lines) + "\n")


def test_molecule_completion_keeps_the_fragment(runs, tmp_path):
    from rdkit import Chem

    symbols = ["C", "C", "O", "H"]
    pos = np.array([[5.0, 1.0, 0.0], [6.52, 1.0, 0.0], [7.2, 2.1, 0.3], [4.6, 0.1, 0.4]])
    _fragment(tmp_path / "frag.xyz", symbols, pos)
    run, out = str(runs["molecules"]), tmp_path / "mol"
    text = _ok(["inpaint", "-c", run, "-i", str(tmp_path / "frag.xyz"), "--num-atoms", "9", "--num", "3",
                "--steps", "10", "--out", str(out)])
    assert "validity" in text
    mols = list(Chem.SDMolSupplier(str(out / "molecules.sdf"), sanitize=False, removeHs=False))
    assert [m.GetNumAtoms() for m in mols] == [9, 9, 9]
    for m in mols:
        got = m.GetConformer().GetPositions()[:4]
        assert np.abs(got - pos).max() < 1e-3                 # the fragment's frame (SDF keeps 4 decimals)
        assert [a.GetSymbol() for a in m.GetAtoms()][:4] == symbols
    summary = json.loads((out / "summary.json").read_text())
    assert summary["known_max_abs_error"] < 1e-5
    never = tmp_path / "never"
    _fails(["inpaint", "-c", run, "-i", str(tmp_path / "frag.xyz"), "--num-atoms", "3", "--out", str(never)],
           "more than the requested molecule", never)
    _fragment(tmp_path / "cl.xyz", ["C", "Cl"], pos[:2])
    _fails(["inpaint", "-c", run, "-i", str(tmp_path / "cl.xyz"), "--num-atoms", "6", "--out", str(never)],
           "not in the model's vocabulary", never)
    _fails(["inpaint", "-c", run, "-i", str(tmp_path / "frag.xyz"), "--out", str(never)], "nothing to generate", never)
    _fails(["inpaint", "-c", run, "-i", str(tmp_path / "frag.xyz"), "--num-atoms", "500", "--out", str(never)],
           "at most", never)


def test_image_super_resolution_sr3(tmp_path):
    """`train --condition lowres` builds a U-Net with the upsampled 7x7 input (+ flag) concatenated;
    `upscale` takes a 7x7 PNG; a wrong size or an unconditional model is one error line."""
    from diffuse.core.data.condition import ConcatKind, Condition
    import diffuse.api as api

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": MODELS["image"]}))
    run = tmp_path / "sr"
    _ok(["train", "--domain", "image", "--condition", "lowres", "--config", str(cfg), "--steps", "2",
         "--batch-size", "4", "--eval-samples", "0", "--no-progress", "--device", "cpu", "--out", str(run)])
    model = api.load(run, device="cpu")
    assert model.data_info["lowres"] == 4
    assert isinstance(model.condition_kinds()["lowres"], ConcatKind)
    assert model.denoiser.backbone.conv_in.in_channels == 3
    # the condition reaches the network: a different low-res input changes the output; the
    # null condition (flag 0) differs from a given all-black input (flag 1)
    torch.nn.init.normal_(model.denoiser.backbone.conv_out.weight, std=0.1)
    kind = model.condition_kinds()["lowres"]
    x = torch.randn(2, 1, 28, 28)
    t = torch.full((2,), 0.5, dtype=torch.float64)
    from diffuse.core.data.space import DenseSpace
    outs = [model.denoiser(x, t, cond=Condition({"lowres": v}, {"lowres": kind}), space=DenseSpace()).x0
            for v in (kind.null(2), kind.parse(torch.full((1, 28, 28), -1.0), 2), kind.parse(torch.zeros(1, 28, 28), 2))]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    Image.fromarray((np.random.default_rng(1).random((7, 7)) * 255).astype(np.uint8), "L").save(tmp_path / "small.png")
    out = tmp_path / "up"
    _ok(["upscale", "-c", str(run), "-i", str(tmp_path / "small.png"), "--num", "2", "--steps", "3", "--out", str(out)])
    assert np.asarray(Image.open(out / "sample_0000.png")).shape == (28, 28)
    never = tmp_path / "never"
    _digit(tmp_path / "big.png")
    _fails(["upscale", "-c", str(run), "-i", str(tmp_path / "big.png"), "--out", str(never)], "7x7", never)


def test_audio_bandwidth_extension(tmp_path):
    """`train --domain audio --condition lowrate`: the 4 kHz version of each clip (resampled back
    to 16 kHz, + flag) is concatenated to the 1-D U-Net input; `upscale` takes a clip."""
    import diffuse.api as api
    from diffuse.domains.audio.inpaint import band_limit

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": MODELS["audio"]}))
    run = tmp_path / "bwe"
    _ok(["train", "--domain", "audio", "--condition", "lowrate", "--config", str(cfg), "--steps", "2",
         "--batch-size", "4", "--eval-samples", "0", "--no-progress", "--device", "cpu", "--out", str(run)])
    model = api.load(run, device="cpu")
    assert model.data_info["lowrate"] == 4000 and model.denoiser.backbone.stem.in_channels == 3
    # band limiting removes what lies above 2 kHz and keeps what lies below
    t = torch.arange(16000) / 16000
    low, high = torch.sin(2 * torch.pi * 500 * t)[None], torch.sin(2 * torch.pi * 5000 * t)[None]
    assert float((band_limit(low, 16000, 4000) - low)[..., 500:-500].abs().max()) < 0.02
    assert float(band_limit(high, 16000, 4000)[..., 500:-500].abs().max()) < 0.02
    _clip(tmp_path / "clip.wav")
    out = tmp_path / "up"
    _ok(["upscale", "-c", str(run), "-i", str(tmp_path / "clip.wav"), "--num", "2", "--steps", "3", "--out", str(out)])
    got, rate = sf.read(str(out / "sample_000.wav"))
    assert rate == 16000 and len(got) == 8000
    never = tmp_path / "never"
    _clip(tmp_path / "long.wav", seconds=1.0)
    _fails(["upscale", "-c", str(run), "-i", str(tmp_path / "long.wav"), "--out", str(never)], "longer", never)
    _fails(["train", "--domain", "audio", "--condition", "pitch", "--out", str(never)], "lowrate", never)
