"""Video data: the Moving-MNIST generator obeys its rules exactly, its held-out split holds out
digits, user clips are read (GIF, MP4, .npy / .npz) with one-line errors, and completion inputs
mark the right frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffuse.core import DataError, MissingPathError, UserInputError
from diffuse.domains.video import VideoDomain
from diffuse.domains.video.clips import read_clip, read_clips
from diffuse.domains.video.moving import digit_centroids, fold, load_moving, render_clip
from diffuse.domains.video.writer import clips_to_uint8, have_pyav, write_clips

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = dict(frames=12, size=32, digit_size=14, num_digits=2, speed=[1.0, 3.0], num_clips=500, seed=3,
               conditional=False)


@pytest.fixture(scope="module")
def two_digits():
    return load_moving(OPTIONS)


def test_fold_is_the_triangle_wave():
    room = 18.0
    u = torch.linspace(-100, 100, 20001, dtype=torch.float64)
    f = fold(u, room)
    assert float(f.min()) >= 0 and float(f.max()) <= room
    assert torch.allclose(f, fold(-u, room)) and torch.allclose(f, fold(u + 2 * room, room))
    inside = (u >= 0) & (u <= room)
    assert torch.equal(f[inside], u[inside])


def test_each_digit_moves_with_constant_velocity_and_bounces_elastically(two_digits):
    """Per digit and axis, between frames the corner moves by exactly v, or it met a wall W (0 or
    the room) and came back: p(t + 1) = 2 W - (p(t) + v), after which the velocity is -v."""
    c = two_digits.clips(torch.arange(64))
    room = 32 - 14
    p, v = c["corners"], c["velocity"][:, None].expand_as(c["corners"]).clone()   # [B, T, k, 2]
    assert float(p.min()) >= 0 and float(p.max()) <= room
    bounces = 0
    for t in range(p.shape[1] - 1):
        free = p[:, t] + v[:, t]
        wall = torch.where(free > room, torch.full_like(free, room), torch.zeros_like(free))
        hit = (free > room) | (free < 0)
        expect = torch.where(hit, 2 * wall - free, free)
        assert torch.allclose(p[:, t + 1], expect, atol=1e-12)
        v[:, t + 1] = torch.where(hit, -v[:, t], v[:, t])
        bounces += int(hit.sum())
    assert bounces > 20                                     # the rule is exercised at walls too
    speed = c["velocity"].norm(dim=-1)
    assert float(speed.min()) >= 1.0 and float(speed.max()) <= 3.0


def test_a_drawn_digit_sits_exactly_where_the_rules_put_it(two_digits):
    """The intensity centroid of each digit's own layer is its corner plus the digit's centroid
    (bilinear splatting shifts an image by any real amount)."""
    c = two_digits.clips(torch.arange(16))
    digits = two_digits.digit_images[c["digits"]]                           # [B, k, s, s]
    for j in range(2):
        frames, corners = render_clip(digits[:, j:j + 1], c["start"][:, j:j + 1], c["velocity"][:, j:j + 1], 12, 32)
        idx = torch.arange(32, dtype=torch.float64)
        mass = frames.sum((-2, -1))
        cent = torch.stack([(frames.sum(-1) * idx).sum(-1), (frames.sum(-2) * idx).sum(-1)], -1) / mass[..., None]
        expect = corners[:, :, 0] + digit_centroids(digits[:, j])[:, None]
        assert torch.allclose(cent, expect, atol=1e-10)
        assert torch.allclose(mass, digits[:, j].sum((-2, -1))[:, None].expand_as(mass), atol=1e-10)  # nothing clipped
    whole = c["frames"]
    assert float(whole.min()) >= 0 and float(whole.max()) <= 1


def test_clips_are_deterministic_and_batches_are_model_space(two_digits):
    a, b = two_digits.clips([5, 6]), load_moving(OPTIONS).clips([5, 6])
    assert torch.equal(a["frames"], b["frames"])
    batch = two_digits.batch(torch.tensor([5, 6]))
    assert batch.x.shape == (2, 1, 12, 32, 32) and float(batch.x.min()) == -1.0
    assert torch.allclose(batch.x[:, 0], (a["frames"] * 2 - 1).float(), atol=1e-6)
    assert torch.equal(batch.extras["digits"], a["labels"])


def test_the_held_out_split_holds_out_digits(two_digits):
    train, held = two_digits.split(0.1, seed=0)
    assert len(train) + len(held) == len(two_digits) and len(held) == 50
    assert len(held.digit_images) == 500 and len(train.digit_images) == 4500
    key = lambda d: {tuple(x.flatten().tolist()) for x in d}  # noqa: E731
    assert not key(train.digit_images[:600]) & key(held.digit_images)
    assert train.info() == held.info() == two_digits.info()
    assert not torch.equal(train.clips([0])["frames"], held.clips([0])["frames"])


def test_bad_generator_options_are_one_line_errors():
    dom = VideoDomain()
    for opts, words in (({"frames": 1}, "frames"), ({"speed": [3, 1]}, "speed"), ({"digit_size": 40}, "digit_size"),
                        ({"num_digits": 2, "conditional": True}, "one digit"), ({"bogus": 1}, "unknown")):
        with pytest.raises(DataError, match=words) as err:
            dom.load_data(None, opts)
        assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ user clips
def test_gif_clips_read_back_exactly(tmp_path, two_digits):
    x = two_digits.batch(torch.arange(3)).x
    write_clips(x, tmp_path)
    back = read_clip(tmp_path / "clip_0001.gif")[0]
    assert back.shape == (12, 32, 32, 3)
    assert np.array_equal(back[..., 0], clips_to_uint8(x)[1, ..., 0])
    for name in ("clip_0000.png", "strips.png", "grid.gif"):
        assert (tmp_path / name).is_file()


@pytest.mark.skipif(not have_pyav(), reason="PyAV (pip install diffuse[video]) is not installed")
def test_mp4_clips_round_trip(tmp_path, two_digits):
    x = two_digits.batch(torch.arange(1)).x
    write_clips(x, tmp_path)
    back = read_clip(tmp_path / "clip_0000.mp4")[0]
    assert back.shape == (12, 32, 32, 3)
    assert np.abs(back[..., 0].astype(int) - clips_to_uint8(x)[0, ..., 0]).mean() < 3   # lossy, close


def test_a_folder_of_arrays_is_cut_into_windows(tmp_path):
    g = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", g.integers(0, 256, (25, 16, 16), dtype=np.uint8))          # 2 windows of 10
    np.savez(tmp_path / "b.npz", one=g.random((10, 16, 16)), two=g.random((2, 12, 16, 16)))  # 1 + 2 windows
    np.save(tmp_path / "short.npy", g.integers(0, 256, (4, 16, 16), dtype=np.uint8))        # skipped
    (tmp_path / "notes.txt").write_text("not a clip")
    clips, short = read_clips(tmp_path, 10)
    assert clips.shape == (5, 1, 10, 16, 16) and short == 1
    ds = VideoDomain().load_data(tmp_path, {"frames": 10})
    assert ds.info()["frames"] == 10 and ds.batch(torch.arange(2)).x.shape == (2, 1, 10, 16, 16)
    resized, _ = read_clips(tmp_path, 10, size=8)
    assert resized.shape[-2:] == (8, 8)


def test_bad_clips_are_one_line_errors(tmp_path):
    (tmp_path / "bad.gif").write_bytes(b"GIF89a not really")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "nan.npy", np.full((10, 8, 8), np.nan))
    np.save(tmp_path / "shape.npy", np.zeros((10, 8), dtype=np.uint8))
    for name, words in (("bad.gif", "cannot read it as a GIF"), ("bad.npy", "cannot read it as a NumPy"),
                        ("nan.npy", "NaN"), ("shape.npy", "expected a clip")):
        with pytest.raises(DataError, match=words) as err:
            read_clip(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(MissingPathError):
        read_clip(tmp_path / "missing.gif")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    np.save(mixed / "a.npy", np.zeros((10, 8, 8), dtype=np.uint8))
    np.save(mixed / "b.npy", np.zeros((10, 9, 9), dtype=np.uint8))
    with pytest.raises(DataError, match="b.npy: frames are 9x9 but earlier clips' are 8x8"):
        read_clips(mixed, 10)


# ------------------------------------------------------------------------------ completion inputs
@pytest.fixture()
def bound():
    dom = VideoDomain()
    return dom.bind(dom.load_data(None, {"num_clips": 20}).info())


def test_interpolation_and_prediction_masks(tmp_path, bound):
    x = bound.template(1).x.uniform_(-1, 1)
    write_clips(x, tmp_path)
    batch, mask = bound.completion_input(tmp_path / "clip_0000.gif", {"span": ["2:4", "6:9"]})
    assert mask.flatten().tolist() == [True, True, False, False, True, True, False, False, False, True]
    assert torch.allclose(batch.x, x, atol=1 / 127.5)
    np.save(tmp_path / "four.npy", clips_to_uint8(x)[0, :4, ..., 0])
    batch, mask = bound.completion_input(tmp_path / "four.npy", {})
    assert mask.flatten().tolist() == [True] * 4 + [False] * 6 and "keep_frames" not in batch.extras
    batch, mask = bound.completion_input(tmp_path / "four.npy", {"continue": "3"})
    assert batch.extras["keep_frames"] == 7
    for opts, words in (({"continue": "7"}, "continue by 1 to 6"), ({"span": "5:3"}, "START < END"),
                        ({"rect": "1,1,2,2"}, "span .* or continue")):
        with pytest.raises(UserInputError, match=words):
            bound.completion_input(tmp_path / "four.npy", opts)
    np.save(tmp_path / "big.npy", np.zeros((4, 16, 16), dtype=np.uint8))
    with pytest.raises(DataError, match="16x16 frames; this model makes 32x32"):
        bound.completion_input(tmp_path / "big.npy", {})
    assert math.isfinite(float(batch.x.sum()))
