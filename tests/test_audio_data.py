"""Reading audio: resampling keeps frequencies, channel and normalisation rules, bad input reported."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffuse.core.errors import DataError
from diffuse.domains.audio.data import BUNDLED_DIR, load_audio_folder, load_bundled
from diffuse.domains.audio.io import normalise, resample


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spec.argmax()])


@pytest.mark.parametrize("freq,src,dst", [(440.0, 44100, 16000), (1000.0, 44100, 8000), (3000.0, 22050, 16000),
                                          (250.0, 8000, 16000)])
def test_resampling_preserves_a_tone(freq, src, dst):
    y = resample(torch.from_numpy(tone(freq, src, 1.0))[None], src, dst)[0].numpy()
    assert abs(len(y) - dst) <= 1
    assert abs(peak_frequency(y, dst) - freq) <= 1.0   # 1 Hz bins for a 1 s signal
    # band-limited: the amplitude of an in-band tone is kept (ignoring the edges)
    core = y[dst // 10: -dst // 10]
    assert abs(core.std() * np.sqrt(2) - 0.5) < 0.01


def test_folder_loader_resamples_and_mixes_down(tmp_path: Path):
    left, right = tone(1000.0, 44100, 0.6), tone(1000.0, 44100, 0.6, amp=0.25)
    sf.write(tmp_path / "a.wav", np.stack([left, right], 1), 44100)
    ds = load_audio_folder(tmp_path, {"sample_rate": 16000, "clip_seconds": 0.5, "channels": 1, "normalise": "none"})
    assert ds.info()["sample_rate"] == 16000 and ds.info()["length"] == 8000
    x = ds.batch(torch.tensor([0])).x
    assert x.shape == (1, 1, 8000)
    assert abs(peak_frequency(x[0, 0].numpy(), 16000) - 1000.0) <= 2.0
    assert abs(float(x.abs().max()) - 0.375) < 0.01      # mean of 0.5 and 0.25 amplitudes


def test_stereo_kept_and_mono_duplicated(tmp_path: Path):
    sf.write(tmp_path / "m.wav", tone(300.0, 16000, 0.5), 16000)
    ds = load_audio_folder(tmp_path, {"sample_rate": 16000, "clip_seconds": 0.5, "channels": 2})
    x = ds.batch(torch.tensor([0])).x
    assert x.shape == (1, 2, 8000) and torch.equal(x[0, 0], x[0, 1])


def test_normalisation_modes():
    x = torch.from_numpy(tone(200.0, 16000, 1.0, amp=0.1))[None]
    assert abs(float(normalise(x, "peak").abs().max()) - 0.95) < 1e-6
    y = normalise(x, "loudness")                        # RMS -20 dBFS = 0.1
    assert abs(float(y.pow(2).mean().sqrt()) - 0.1) < 1e-4
    with pytest.raises(DataError, match="silent"):
        normalise(torch.zeros(1, 100), "peak", "quiet.wav")


def test_random_crop_draws_only_from_the_generator(tmp_path: Path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", (0.3 * rng.standard_normal(16000)).astype(np.float32), 16000)
    ds = load_audio_folder(tmp_path, {"clip_seconds": 0.1})
    idx = torch.zeros(4, dtype=torch.long)
    a = ds.batch(idx, torch.Generator().manual_seed(1)).x
    torch.manual_seed(123)
    b = ds.batch(idx, torch.Generator().manual_seed(1)).x
    c = ds.batch(idx, torch.Generator().manual_seed(2)).x
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_short_files_padded_or_reported(tmp_path: Path):
    sf.write(tmp_path / "short.wav", tone(500.0, 16000, 0.1), 16000)
    x = load_audio_folder(tmp_path, {"clip_seconds": 0.25}).batch(torch.tensor([0])).x
    assert x.shape[-1] == 4000 and torch.all(x[..., 1600:] == 0) and x[..., :1600].abs().max() > 0.9
    with pytest.raises(DataError, match="short.wav.*shorter than the clip"):
        load_audio_folder(tmp_path, {"clip_seconds": 0.25, "short": "error"})


def test_labels_from_sub_folders(tmp_path: Path):
    for cls in ("kick", "snare"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            sf.write(tmp_path / cls / f"{i}.flac", tone(100 + 50 * i, 16000, 0.3), 16000)
    ds = load_audio_folder(tmp_path, {"labels": True, "clip_seconds": 0.2})
    assert ds.info()["classes"] == ["kick", "snare"]
    assert ds.batch(torch.arange(4)).cond["label"].tolist() == [0, 0, 1, 1]


def _bad(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / {"empty": "e.wav", "corrupt": "c.wav", "nan": "n.wav", "silent": "s.wav"}[kind]
    if kind == "empty":
        sf.write(p, np.zeros(0, np.float32), 16000)
    elif kind == "corrupt":
        p.write_bytes(b"RIFF\x00\x01garbage" * 10)
    elif kind == "nan":
        x = tone(100.0, 16000, 0.5)
        x[10] = np.nan
        sf.write(p, x, 16000, subtype="FLOAT")
    else:
        sf.write(p, np.zeros(8000, np.float32), 16000)
    return p


@pytest.mark.parametrize("kind,message", [("empty", "zero length"), ("corrupt", "cannot read"),
                                          ("nan", "NaN"), ("silent", "silent")])
def test_bad_files_named_in_one_line(tmp_path: Path, kind: str, message: str):
    p = _bad(tmp_path, kind)
    with pytest.raises(DataError) as err:
        load_audio_folder(tmp_path, {"clip_seconds": 0.1})
    text = str(err.value)
    assert p.name in text and message in text and "\n" not in text


def test_skip_bad_keeps_the_good_files(tmp_path: Path):
    _bad(tmp_path, "corrupt")
    _bad(tmp_path, "silent")
    sf.write(tmp_path / "good.wav", tone(440.0, 16000, 0.5), 16000)
    ds = load_audio_folder(tmp_path, {"clip_seconds": 0.1, "skip_bad": True})
    assert len(ds) == 1 and ds.names == ["good.wav"]


def test_format_rate_and_path_errors(tmp_path: Path):
    (tmp_path / "song.mp3").write_bytes(b"ID3")
    with pytest.raises(DataError, match="no WAV / FLAC / OGG"):
        load_audio_folder(tmp_path)
    with pytest.raises(DataError, match="unsupported audio format"):
        load_audio_folder(tmp_path / "song.mp3")
    with pytest.raises(DataError, match="no such file"):
        load_audio_folder(tmp_path / "missing")
    sf.write(tmp_path / "a.wav", tone(440.0, 16000, 0.5), 16000)
    sf.write(tmp_path / "b.wav", tone(440.0, 22050, 0.5), 22050)
    with pytest.raises(DataError, match="b.wav: sample rate 22050 Hz differs"):
        load_audio_folder(tmp_path, {"sample_rate": None, "clip_seconds": 0.1})
    assert load_audio_folder(tmp_path, {"sample_rate": 8000, "clip_seconds": 0.1}).info()["sample_rate"] == 8000
    with pytest.raises(ValueError, match="unknown audio data option"):
        load_audio_folder(tmp_path, {"clip_secs": 1.0})


def test_bundled_default_is_real_small_and_labelled():
    files = list(BUNDLED_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) < 3_000_000
    assert any(f.name.upper().startswith("README") for f in files)
    ds = load_bundled({"labels": True})
    info = ds.info()
    assert len(ds) == 70 and info["classes"] == ["cymbal", "kick", "snare", "tabla", "tom"]
    x = ds.batch(torch.arange(len(ds))).x
    assert x.shape == (70, 1, info["length"]) and torch.isfinite(x).all()
    # peak-normalised real recordings with their onsets at the start
    assert torch.allclose(x.abs().amax(-1), torch.full((70, 1), 0.95), atol=1e-3)
    assert (x[..., :800].abs().amax(-1) > 0.05).all()


def test_folder_summarises_skipped_files_in_one_line(tmp_path: Path, caplog):
    import logging
    sf.write(tmp_path / "good.wav", tone(440.0, 16000, 0.5), 16000)
    sf.write(tmp_path / "quiet.wav", np.zeros(8000, np.float32), 16000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "song.mp3").write_bytes(b"ID3")
    (tmp_path / "cover.gif").write_bytes(b"GIF89a")
    (tmp_path / ".hidden.wav").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING):
        ds = load_audio_folder(tmp_path, {"clip_seconds": 0.1, "skip_bad": True})
    assert ds.names == ["good.wav"]
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert msgs == [f"{tmp_path}: skipped 4 files: 2 unsupported extension (.gif, .mp3), 1 empty (empty.wav), "
                    "1 unusable (silent or wrong channels) (quiet.wav)"]
    only_empty = tmp_path / "only"
    only_empty.mkdir()
    (only_empty / "a.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"no WAV / FLAC / OGG files found \(skipped 1 file: 1 empty \(a.wav\)\)"):
        load_audio_folder(only_empty)
