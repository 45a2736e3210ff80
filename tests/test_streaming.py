"""Streaming data: lazy audio clips equal whole-file reading, the on-disk cache round-trips and
is invalidated by a changed file, reading a clip does not decode the whole file, and batches
built ahead in a background thread train to the same weights as batches built in the loop."""

from __future__ import annotations

import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

import diffuse.api as api
from diffuse.core.process.diffusion import Diffusion
import diffuse.domains.audio.io as audio_io
from diffuse.core.data.cache import cached_array, cached_json, file_key
from diffuse.domains.audio.data import LazyClip, load_audio_folder
from diffuse.domains.audio.io import decoded_blocks, read_audio, resample, to_channels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSE_CACHE", str(tmp_path / "cache"))


def _write(path, seconds, rate, channels, seed=0, subtype="FLOAT"):
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    x = 0.4 * np.sin(2 * np.pi * 330 * t)[:, None] + 0.1 * rng.standard_normal((n, channels))
    sf.write(str(path), x.astype(np.float32), rate, subtype=subtype)
    return path


@pytest.mark.parametrize("rate, channels", [(44100, 2), (44100, 1), (16000, 1), (48000, 2)])
@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_lazy_clips_equal_whole_file_reading(tmp_path, rate, channels, suffix):
    f = _write(tmp_path / f"a{suffix}", 1.3, 44100, 2, subtype="FLOAT" if suffix == ".wav" else "PCM_16")
    opts = {"sample_rate": rate, "channels": channels, "clip_seconds": 0.2, "crop": "random"}
    whole = load_audio_folder(f, {**opts, "stream": False})
    lazy = load_audio_folder(f, {**opts, "stream": True})
    assert isinstance(lazy.clips[0], LazyClip) and isinstance(whole.clips[0], torch.Tensor)
    assert lazy.clips[0].shape == tuple(whole.clips[0].shape)
    assert torch.equal(lazy.clips[0][:, :], whole.clips[0])
    assert torch.equal(lazy.clips[0][:, 100:2100], whole.clips[0][:, 100:2100])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(lazy.batch(torch.zeros(6, dtype=torch.long), g1).x,
                       whole.batch(torch.zeros(6, dtype=torch.long), g2).x)
    assert lazy.info() == whole.info()


def test_loudness_normalised_lazy_clips_match_to_rounding(tmp_path):
    f = _write(tmp_path / "a.wav", 0.8, 22050, 2)
    opts = {"sample_rate": 16000, "channels": 1, "clip_seconds": 0.2, "normalise": "loudness"}
    a = load_audio_folder(f, {**opts, "stream": False}).clips[0]
    b = load_audio_folder(f, {**opts, "stream": True}).clips[0][:, :]
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rate, new_rate", [(44100, 16000), (48000, 16000), (16000, 22050), (8000, 8000)])
def test_block_wise_resampling_equals_resampling_the_whole_file(tmp_path, rate, new_rate):
    """Blocks much shorter than the file (and not aligned to anything in it) concatenate to the
    whole file resampled: each output sample sees the same inputs through the same filter."""
    f = _write(tmp_path / "a.wav", 0.77, rate, 2)
    whole = resample(to_channels(read_audio(f)[0], 1), rate, new_rate)
    blocks = list(decoded_blocks(f, 1, new_rate, block=1501))
    assert len(blocks) > 3
    torch.testing.assert_close(torch.cat(blocks, dim=-1), whole, rtol=0, atol=2e-7)


def test_cache_round_trip_and_invalidation_on_mtime_change(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"12345")
    builds = []

    def build(path):
        builds.append(path)
        np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3) + len(builds))

    key = file_key(f, rate=16000)
    a = cached_array("audio", key, build)
    b = cached_array("audio", key, build)
    assert len(builds) == 1 and isinstance(b, np.memmap) and not b.flags.writeable
    assert np.array_equal(a, b) and a[0, 0] == 1
    assert file_key(f, rate=8000) != key                       # conversion parameters are in the key
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    key2 = file_key(f, rate=16000)
    assert key2 != key
    assert cached_array("audio", key2, build)[0, 0] == 2 and len(builds) == 2
    # a torn entry is rebuilt, no temporary file is left, and nothing is unpickled
    entry = tmp_path / "cache" / "audio" / f"{key2}.npy"
    entry.write_bytes(entry.read_bytes()[:20])
    assert cached_array("audio", key2, build)[0, 0] == 3
    assert sorted(p.name for p in entry.parent.iterdir()) == sorted([f"{key}.npy", f"{key2}.npy"])
    calls = []
    assert cached_json("audio_stats", key, lambda: calls.append(1) or {"peak": 0.5}) == {"peak": 0.5}
    assert cached_json("audio_stats", key, lambda: calls.append(1) or {"peak": 9.0}) == {"peak": 0.5}
    assert calls == [1]


def test_object_arrays_in_the_cache_are_refused_not_unpickled(tmp_path):
    key = file_key(tmp_path, kind="x")
    target = tmp_path / "cache" / "audio" / f"{key}.npy"
    target.parent.mkdir(parents=True)
    np.save(target, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = cached_array("audio", key, lambda p: np.save(p, np.zeros(3, np.float32)))   # rebuilt, not loaded
    assert out.dtype == np.float32 and out.shape == (3,)


def _traced_peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("rate", [48000, 16000])   # soundfile seeks; resampled into the cache
def test_streamed_reading_does_not_decode_the_whole_file(tmp_path, monkeypatch, rate):
    """A 60 s 48 kHz stereo file (23 MB as float32): whole-file reading allocates all of it;
    streaming allocates about a block (set to 64 k frames here) while loading and one crop per
    clip while batching; the frames soundfile reads for a batch are the crops' frames only."""
    monkeypatch.setattr(audio_io, "BLOCK_FRAMES", 1 << 16)
    f = _write(tmp_path / "long.wav", 60, 48000, 2, subtype="PCM_16")
    opts = {"sample_rate": rate, "channels": 2, "clip_seconds": 0.25, "crop": "random"}
    whole = _traced_peak(lambda: load_audio_folder(f, {**opts, "stream": False}))
    holder = {}
    streamed = _traced_peak(lambda: holder.setdefault("ds", load_audio_folder(f, {**opts, "stream": True})))
    assert whole > 23e6 and streamed < whole / 8
    ds = holder["ds"]
    read = []
    original = audio_io.sf.SoundFile.read

    def counting(self, frames=-1, *args, **kwargs):
        out = original(self, frames, *args, **kwargs)
        read.append(len(out))
        return out
    monkeypatch.setattr(audio_io.sf.SoundFile, "read", counting)
    batching = _traced_peak(lambda: ds.batch(torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(0)))
    assert batching < 2e6
    assert sum(read) == (8 * ds.length if rate == 48000 else 0)     # resampled: read from the cache


def _audio_folder(root):
    root.mkdir()
    for i in range(5):
        _write(root / f"c{i}.wav", 0.6 + 0.1 * i, 8000, 1, seed=i)
    return root


TINY_AUDIO = {"channels": [8, 16], "factors": [4], "num_res_blocks": 1, "dilations": [1], "heads": 2,
              "attn_levels": []}


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_prefetched_batches_train_to_identical_weights(tmp_path, grad_accum):
    """Streamed audio with random crops (drawn from each step's generator): built ahead in the
    background thread or in the loop, the weights after 5 steps are bit-identical."""
    from diffuse.core.training.trainer import Trainer

    data = _audio_folder(tmp_path / "clips")
    weights, hits = [], []
    for prefetch in (0, 3):
        cfg = api.make_config("audio", data=str(data), steps=5, batch_size=4, grad_accum=grad_accum, warmup_steps=1,
                              device="cpu", seed=1, final_eval=False, checkpoint_every=0, prefetch=prefetch,
                              config={"model": TINY_AUDIO, "data_options": {"sample_rate": 8000, "clip_seconds": 0.1,
                                                                            "crop": "random", "stream": True}})
        dom = api.get_domain("audio")
        ds = dom.load_data(str(data), cfg.data_options)
        cfg.data_info = ds.info()
        dom = dom.bind(cfg.data_info)
        diff = Diffusion(cfg.diffusion)
        torch.manual_seed(0)
        den = diff.denoiser(dom.build_backbone(cfg.model))
        trainer = Trainer(tmp_path / f"run{prefetch}", cfg, dom, diff, den, ds, progress=False)
        (tmp_path / f"run{prefetch}").mkdir()
        trainer.fit()
        weights.append({k: v.clone() for k, v in trainer.ema.module.state_dict().items()})
        hits.append(trainer.batches.hits)
    # steps 1..4 come from the thread; on CPU the batch and the noise share one generator, so a
    # step's second micro-batch is built in the loop (its generator state differs from the thread's)
    assert hits == [0, 4]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_molecule_files_are_converted_once_then_memory_mapped(tmp_path, monkeypatch):
    """The second load of the same file reads nothing but the cache and gives the same data;
    a changed file (mtime) is converted again."""
    import shutil

    from rdkit import RDConfig

    import diffuse.domains.molecules.dataset as mol_dataset
    import diffuse.domains.molecules.domain as mol_domain

    monkeypatch.setattr(mol_dataset, "CACHE_MIN_BYTES", 0)
    src = tmp_path / "cdk2.sdf"
    shutil.copy(os.path.join(RDConfig.RDContribDir, "Fastcluster", "testdata", "cdk2.sdf"), src)
    reads = []
    original = mol_domain.read_path
    monkeypatch.setattr(mol_domain, "read_path", lambda *a, **k: reads.append(1) or original(*a, **k))
    dom = api.get_domain("molecules")
    first = dom.load_data(str(src), {"max_atoms": 40})
    second = dom.load_data(str(src), {"max_atoms": 40})
    assert len(reads) == 1
    assert isinstance(first.pos, torch.Tensor) and second.pos.dtype == first.pos.dtype == torch.float32
    for name in ("types", "pos", "charges", "ptr", "counts"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert first.names == second.names and first.skipped == second.skipped and first.info() == second.info()
    idx = torch.tensor([3, 0, 7])
    a, b = first.batch(idx), second.batch(idx)
    assert torch.equal(a.x, b.x) and torch.equal(a.space.batch, b.space.batch)
    assert len(list((tmp_path / "cache" / "molecules").iterdir())) == 1
    dom.load_data(str(src), {"max_atoms": 30})                  # other options: another entry
    assert len(reads) == 2
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    dom.load_data(str(src), {"max_atoms": 40})
    assert len(reads) == 3
    assert not [p for p in (tmp_path / "cache" / "molecules").iterdir() if p.name.startswith(".")]


def test_image_folders_are_decoded_once_then_memory_mapped(tmp_path, monkeypatch):
    """A PNG folder over the size threshold: the second load decodes nothing, gives the same
    images, labels and batches, and its training split keeps row indices into the mapped array."""
    from PIL import Image

    import diffuse.domains.image.data as image_data

    monkeypatch.setattr(image_data, "CACHE_MIN_BYTES", 0)
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    decodes = []
    original = image_data.read_folder
    monkeypatch.setattr(image_data, "read_folder", lambda *a, **k: decodes.append(1) or original(*a, **k))
    opts = {"image_size": 8, "flip": True}
    dom = api.get_domain("image")
    first = image_data.load_images(tmp_path / "imgs", opts)
    second = image_data.load_images(tmp_path / "imgs", opts)
    assert len(decodes) == 1 and second.info() == first.info()
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    rest, held = second.split(0.25, seed=0)
    assert rest.rows is not None and rest._images.data_ptr() == second._images.data_ptr()    # nothing copied
    rest0, held0 = first.split(0.25, seed=0)
    assert torch.equal(rest.images, rest0.images) and torch.equal(held.images, held0.images)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    idx = torch.tensor([0, 4, 2, 6])
    b1, b2 = rest0.batch(idx, g1), rest.batch(idx, g2)
    assert torch.equal(b1.x, b2.x) and torch.equal(b1.extras["labels"], b2.extras["labels"])
    assert dom.load_data(str(tmp_path / "imgs"), {"image_size": 6}).images.shape[-1] == 6   # another entry
    assert len(decodes) == 2
