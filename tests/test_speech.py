"""Speech data, the mel condition and exact band keeping (domains/audio: speech, mel, restoration).

Data is generated here (tones and noise bursts written as WAVs); nothing needs the Debian speech
package."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from diffuse.api import get_domain
from diffuse.cli.main import main
from diffuse.core.errors import DataError
from diffuse.domains.audio.inpaint import band_limit
from diffuse.domains.audio.mel import mel_config, speech_mel
from diffuse.domains.audio.restoration import add_noise, keep_band, kept_bins
from diffuse.domains.audio.speech import load_speech
from diffuse.domains.audio.data import resolve_options

RATE = 8000


def tone(freq: float, seconds: float, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    env = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)          # 20 ms fades
    return (amp * env * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def write_tones(folder: Path, freqs=(220, 330, 440, 550, 660, 880), seconds: float = 0.4, rate: int = RATE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in freqs:
        sf.write(str(folder / f"tone{f}.wav"), tone(f, seconds, rate), rate, subtype="PCM_16")
    return folder


def speech_options(**extra):
    return resolve_options({"speech": True, "sample_rate": None, "clip_seconds": 0.25, **extra})


# ------------------------------------------------------------------ the reader's errors
def test_reader_refuses_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no speech recordings"):
        load_speech(tmp_path / "empty", speech_options())


def test_reader_refuses_a_mix_of_rates(tmp_path):
    folder = write_tones(tmp_path / "mix", freqs=(220,))
    sf.write(str(folder / "hifi.wav"), tone(440, 0.4, 44100), 44100)
    with pytest.raises(DataError, match="different rates"):
        load_speech(folder, speech_options())
    sf.write(str(folder / "hifi.wav"), tone(440, 0.4, 4000), 4000)   # below telephone speech
    with pytest.raises(DataError, match="below 8000 Hz"):
        load_speech(folder, speech_options())


def test_reader_refuses_a_corrupt_wav_in_one_line(tmp_path):
    folder = write_tones(tmp_path / "bad", freqs=(220,))
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(DataError, match="broken.wav: cannot read audio") as err:
        load_speech(folder, speech_options())
    assert "\n" not in str(err.value)
    cfg = tmp_path / "speech.json"
    cfg.write_text('{"data_options": {"speech": true, "sample_rate": null}}')
    res = CliRunner().invoke(main, ["train", "--domain", "audio", "--data", str(folder), "--config", str(cfg),
                                    "--steps", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "broken.wav" in res.output, res.output


def test_reader_reads_speech_at_its_own_rate_and_leaves_out_silence(tmp_path):
    folder = write_tones(tmp_path / "ok")
    (folder / "silence").mkdir()
    sf.write(str(folder / "silence" / "1.wav"), np.zeros(800, np.float32), RATE)
    ds = load_speech(folder, speech_options())
    assert len(ds) == 6 and ds.info()["sample_rate"] == RATE


# ------------------------------------------------------------------ the mel condition
def test_training_mel_equals_the_mel_vocode_computes(tmp_path):
    """The round trip: every crop's mel in a training batch is the slice of the mel that
    ``diffuse vocode`` computes from the same file (hop-aligned crops, zero padding)."""
    folder = write_tones(tmp_path / "tones", freqs=(220, 440, 660), seconds=0.6)
    dom = get_domain("audio")
    opts = {"speech": True, "sample_rate": None, "clip_seconds": 0.25, "mel": {"n_mels": 32, "n_fft": 256, "hop": 64}}
    ds = dom.load_data(folder, opts)
    bound = dom.bind(ds.info())
    hop = 64
    assert ds.info()["length"] % hop == 0
    g = torch.Generator().manual_seed(3)
    batch = ds.batch(torch.arange(3).repeat(4), g)
    mel_train = batch.cond["mel"][:, :-1]
    assert bool((batch.cond["mel"][:, -1] == 1).all())
    waves = bound.to_data(batch).x            # model space is the crop over its mel envelope (energy prior)
    assert not torch.allclose(waves, batch.x)
    for i, name in enumerate(ds.names * 4):
        clip, mel_file, n = bound.vocoder_input(folder / name)
        # where this crop starts in the file: the waveform tells
        x = waves[i, 0]
        starts = [k for k in range(mel_file.shape[-1]) if k * hop + x.shape[-1] <= clip.shape[-1]
                  and torch.allclose(clip[0, k * hop:k * hop + x.shape[-1]], x, rtol=0, atol=1e-6)]
        assert starts, "a training crop is a hop-aligned slice of the clip vocode reads"
        k = starts[0]
        frames = mel_train.shape[-1]
        if k + frames <= mel_file.shape[-1]:
            torch.testing.assert_close(mel_train[i], mel_file[:, k:k + frames], rtol=0, atol=1e-5)


def test_mel_of_a_padded_clip_keeps_its_frames():
    cfg = mel_config({"n_mels": 32, "n_fft": 256, "hop": 64}, RATE)
    x = torch.from_numpy(tone(440, 0.3))
    a = speech_mel(x, cfg)
    b = speech_mel(torch.nn.functional.pad(x, (0, 1000)), cfg)
    assert a.shape == (32, math.ceil(x.numel() / 64))
    torch.testing.assert_close(a[:, :-1], b[:, :a.shape[-1] - 1], rtol=0, atol=1e-5)
    # a tone's mel peaks in the band of its frequency
    c = speech_mel(torch.from_numpy(tone(1500, 0.3)), cfg)
    assert int(c[:, 10].argmax()) > int(a[:, 10].argmax())


def test_bad_mel_options_are_one_line():
    from diffuse.core.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown mel option"):
        mel_config({"bands": 3}, RATE)
    with pytest.raises(ConfigError, match="hop"):
        mel_config({"hop": 1024, "n_fft": 256}, RATE)


# ------------------------------------------------------------------ restoration
def test_keep_band_keeps_the_given_band_exactly_and_only_it():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(2, 1, 4000, generator=g) * 0.2
    given = band_limit(clean, RATE, 4000)                      # a 4 kHz recording, at 8 kHz
    generated = torch.randn(2, 1, 4000, generator=g) * 0.2     # whatever the model made
    out = keep_band(generated, given[0], RATE, 4000)
    k = kept_bins(4000, RATE, 4000)
    fo, fg, fgen = (torch.fft.rfft(v.double(), dim=-1) for v in (out, given[:1].expand_as(out), generated))
    assert k == int(0.9 * 2000 * 4000 / RATE) + 1
    torch.testing.assert_close(fo[..., :k], fg[..., :k], rtol=0, atol=1e-4)
    torch.testing.assert_close(fo[..., k:], fgen[..., k:], rtol=0, atol=1e-4)


def test_noise_is_added_at_the_asked_snr():
    x = torch.from_numpy(tone(440, 1.0))[None, None].repeat(3, 1, 1)
    noisy = add_noise(x, torch.tensor([0.0, 10.0, 20.0]), torch.Generator().manual_seed(0))
    snr = 10 * torch.log10(x.pow(2).mean((1, 2)) / (noisy - x).pow(2).mean((1, 2)))
    torch.testing.assert_close(snr, torch.tensor([0.0, 10.0, 20.0]), rtol=0, atol=0.15)


def test_the_shipped_subset_is_read_when_the_debian_set_is_missing(monkeypatch, tmp_path):
    """Without the Debian package the shipped CC-BY-SA subset is the default; its digits are the
    ten words zero .. nine at 8 kHz."""
    import diffuse.domains.audio.speech as speech
    monkeypatch.setattr(speech, "ASTERISK_DIR", tmp_path / "not-installed")
    ds = speech.load_speech(None, speech_options(speech="digits", labels=True))
    assert ds.info()["source"].startswith("bundled:") and ds.classes == list(speech.DIGIT_NAMES)
    assert ds.sample_rate == RATE and len(ds) == 10
    assert len(speech.load_speech(None, speech_options())) == 29
