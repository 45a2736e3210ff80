"""Image data readers: PNG/JPEG folders, IDX files, the bundled digits, and bad input."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from diffuse.core.errors import DataError
from diffuse.domains.image import ImageDomain
from diffuse.domains.image.data import load_images, read_idx


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX per the MNIST page: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian int32 dims, data."""
    return bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape) + array.tobytes()


def test_folder_round_trip_exact_pixels_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            a = rng.integers(0, 256, (10, 12), dtype=np.uint8)
            Image.fromarray(a, "L").save(tmp_path / cls / f"{i}.png")
            imgs[(cls, i)] = a
    ds = load_images(tmp_path, {})
    info = ds.info()
    assert (info["channels"], info["height"], info["width"], len(ds)) == (1, 10, 12, 6)
    assert info["class_names"] == ["cat", "dog"] and info["num_classes"] == 2
    # files are read in sorted order: cat/0..2 then dog/0..2
    for k, (cls, i) in enumerate(sorted(imgs)):
        assert np.array_equal(ds.images[k, 0].numpy(), imgs[(cls, i)])
        assert int(ds.labels[k]) == ["cat", "dog"].index(cls)
    x = ds.batch(torch.arange(6)).x
    expected = torch.from_numpy(imgs[("cat", 0)]).float() / 127.5 - 1
    torch.testing.assert_close(x[0, 0], expected)
    assert x.min() >= -1 and x.max() <= 1
    import json
    json.dumps(info)


def test_rgb_folder_resize_and_flat_folder_has_no_labels(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(a, "RGB").save(tmp_path / "a.png")
    Image.fromarray(a, "RGB").resize((20, 16)).save(tmp_path / "b.jpg")
    with pytest.raises(DataError, match="image_size"):
        load_images(tmp_path, {})
    ds = load_images(tmp_path, {"image_size": 8})
    assert ds.images.shape == (2, 3, 8, 8) and ds.labels is None
    assert np.array_equal(ds.images[0].permute(1, 2, 0).numpy(), a)
    gray = load_images(tmp_path, {"image_size": [6, 4], "channels": 1})
    assert gray.images.shape == (2, 1, 6, 4)


def test_flip_uses_only_the_generator(tmp_path):
    ds = load_images(None, {"flip": True, "max_images": 64})
    b1 = ds.batch(torch.arange(64), torch.Generator().manual_seed(3)).x
    b2 = ds.batch(torch.arange(64), torch.Generator().manual_seed(3)).x
    plain = load_images(None, {"max_images": 64}).batch(torch.arange(64)).x
    assert torch.equal(b1, b2)
    flipped = [not torch.equal(b1[i], plain[i]) for i in range(64)]
    assert 10 < sum(flipped) < 54
    for i in range(64):
        assert torch.equal(b1[i], plain[i]) or torch.equal(b1[i], plain[i].flip(-1))


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip_with_labels(tmp_path, compress):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if compress else (lambda p, b: p.write_bytes(b))
    write(tmp_path / f"train-images-idx3-ubyte{suffix}", _idx_bytes(images))
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", _idx_bytes(labels))
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    for path in (tmp_path / f"train-images-idx3-ubyte{suffix}", tmp_path):  # the file, or its folder
        ds = load_images(path, {})
        assert np.array_equal(ds.images[:, 0].numpy(), images)
        assert np.array_equal(ds.labels.numpy(), labels)


def test_corrupt_image_names_the_file(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match="broken.png") as exc:
        load_images(tmp_path, {})
    assert "\n" not in str(exc.value)


def test_bad_idx_magic_and_truncation(tmp_path):
    good = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="bad-images-idx3-ubyte.*magic"):
        load_images(tmp_path / "bad-images-idx3-ubyte", {})
    (tmp_path / "short-images-idx3-ubyte").write_bytes(good[:-5])
    with pytest.raises(DataError, match="short-images-idx3-ubyte.*truncated"):
        load_images(tmp_path / "short-images-idx3-ubyte", {})


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_images(tmp_path / "nope", {})
    (tmp_path / "void").mkdir()
    with pytest.raises(DataError, match="no PNG or JPEG images"):
        load_images(tmp_path / "void", {})
    with pytest.raises(DataError, match="unknown image data option"):
        ImageDomain().load_data(None, {"imagesize": 3})


def test_bundled_digits():
    ds = ImageDomain().load_data(None, {})
    info = ds.info()
    assert len(ds) == 5000 and (info["channels"], info["height"], info["width"]) == (1, 28, 28)
    assert info["num_classes"] == 10
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 500))
    x = ds.batch(torch.arange(5000)).x
    assert x.min() == -1 and x.max() == 1 and x.dtype == torch.float32
    # real digits: dark background, a few percent of bright strokes
    assert 0.05 < (x > 0).float().mean() < 0.3
    rest, held = ds.split(0.1)
    assert len(held) == 500 and len(rest) == 4500


def test_conditional_batches_carry_labels():
    ds = ImageDomain().load_data(None, {"conditional": True, "max_images": 10})
    b = ds.batch(torch.arange(10))
    assert torch.equal(b.cond["label"], ds.labels[:10]) and ds.info()["conditional"]


def test_folder_skips_other_and_empty_files_with_one_summary_line(tmp_path, caplog):
    import logging
    for i in range(2):
        Image.fromarray(np.full((4, 4), 50 * i, np.uint8), "L").save(tmp_path / f"{i}.png")
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(tmp_path / "anim.gif")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    with caplog.at_level(logging.WARNING):
        ds = load_images(tmp_path, {})
    assert len(ds) == 2
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert msgs == [f"{tmp_path}: skipped 3 files: 2 unsupported extension (.gif, .txt), 1 empty (e.png)"]


@pytest.mark.parametrize("value", [200, 40000])
def test_16_bit_png_is_scaled_by_its_bit_depth(tmp_path, value):
    """A 16-bit PNG whose values are all <= 255 is still 16-bit: 200 / 65535 of full scale."""
    a = np.full((6, 5), value, np.uint16)
    a[0, 0] = 65535
    Image.fromarray(a).save(tmp_path / "deep.png")
    raw = (tmp_path / "deep.png").read_bytes()
    assert raw[24] == 16                                  # IHDR bit depth: a real 16-bit PNG
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode in ("I;16", "I;16B", "I")
    Image.fromarray(np.full((6, 5), 200, np.uint8), "L").save(tmp_path / "shallow.png")
    ds = load_images(tmp_path, {})
    deep, shallow = ds.images[0, 0], ds.images[1, 0]      # sorted names: deep.png, shallow.png
    assert int(deep[0, 0]) == 255
    assert int(deep[1, 1]) == round(value / 65535 * 255)  # 200 -> 1, 40000 -> 156
    assert int(shallow[1, 1]) == 200                      # 8-bit files unchanged
