"""Audio files in and out: reading with soundfile, resampling and normalisation with torch,
16-bit PCM WAV and spectrogram PNG writers.

Every reading failure is turned into :class:`~diffuse.core.domain.DataError` with one line that
names the file and what was expected.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from PIL import Image
from torch import Tensor

from ...core.domain import DataError

__all__ = ["AUDIO_EXTENSIONS", "read_audio", "to_channels", "resample", "normalise", "write_wav",
           "log_spectrogram", "write_spectrogram_png"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def read_audio(path: str | Path) -> tuple[Tensor, int]:
    """Read a WAV / FLAC / OGG file as float32 ``[C, N]`` in [-1, 1] plus its sample rate.

    Raises :class:`DataError` for a missing, unreadable, unsupported, empty or non-finite file.
    """
    path = Path(path)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise DataError(f"{path}: unsupported audio format {path.suffix!r}; expected one of "
                        f"{', '.join(AUDIO_EXTENSIONS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read audio ({msg}); expected a valid WAV / FLAC / OGG file") from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file has zero length")
    if not np.isfinite(data).all():
        raise DataError(f"{path}: audio contains NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)


def to_channels(x: Tensor, channels: int, name: str = "audio") -> Tensor:
    """Mix ``[C, N]`` down to mono (``channels=1``: mean over channels), or copy mono to
    ``channels`` channels; a multi-channel file must otherwise match ``channels``."""
    c = x.shape[0]
    if c == channels:
        return x
    if channels == 1:
        return x.mean(0, keepdim=True)
    if c == 1:
        return x.expand(channels, -1).clone()
    raise DataError(f"{name}: has {c} channels; expected 1 or {channels} (set channels=1 to mix down)")


def resample(x: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited (windowed-sinc) resampling over the last axis, ``torchaudio.functional.resample``."""
    if orig_rate == new_rate:
        return x
    return AF.resample(x, int(orig_rate), int(new_rate))


def normalise(x: Tensor, mode: str, name: str = "audio", peak: float = 0.95,
              target_db: float = -20.0) -> Tensor:
    """Normalise one clip ``[C, N]``.

    * ``peak``: scale so that ``max |x| = peak`` (0.95 by default);
    * ``loudness``: scale the RMS to ``target_db`` dBFS (-20 dBFS), then, if that would clip,
      scale down so that the peak is at most 1 (a simple RMS loudness, not ITU-R BS.1770);
    * ``none``: unchanged.

    Silent audio (peak below 1e-5, i.e. -100 dBFS) raises :class:`DataError`.
    """
    if mode == "none":
        return x
    m = float(x.abs().max())
    if m < 1e-5:
        raise DataError(f"{name}: audio is silent (peak {m:.2g}); expected an audible signal")
    if mode == "peak":
        return x * (peak / m)
    if mode == "loudness":
        rms = float(x.pow(2).mean().sqrt())
        gain = 10 ** (target_db / 20) / rms
        gain = min(gain, 1.0 / m)
        return x * gain
    raise ValueError(f"unknown normalisation {mode!r}; expected 'peak', 'loudness' or 'none'")


def write_wav(path: str | Path, x: Tensor, rate: int) -> Path:
    """Write ``[C, N]`` (or ``[N]``) float audio as 16-bit PCM WAV, clipped to [-1, 1]."""
    path = Path(path)
    a = x.detach().float().cpu()
    if a.ndim == 1:
        a = a[None]
    a = torch.nan_to_num(a, nan=0.0).clamp(-1.0, 1.0).numpy().T
    sf.write(str(path), a, int(rate), subtype="PCM_16", format="WAV")
    return path


def log_spectrogram(x: Tensor, n_fft: int = 512, hop: int | None = None) -> Tensor:
    """Log-magnitude STFT (dB, Hann window) of a mono ``[N]`` signal: ``[freq, frames]``."""
    hop = hop or n_fft // 4
    x = x.float()
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    return 20 * torch.log10(spec.clamp(min=1e-5))


def _colormap(v: np.ndarray) -> np.ndarray:
    """A perceptually ordered black-purple-orange-yellow map (like 'magma') for ``v`` in [0, 1]."""
    stops = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], float)
    pos = v * (len(stops) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    f = (pos - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


def write_spectrogram_png(path: str | Path, clips: Tensor, rate: int, n_fft: int = 512,
                          dynamic_range_db: float = 80.0, height: int = 128) -> Path:
    """A PNG with the log spectrograms of ``clips`` (``[K, C, N]``, first channel) side by side,
    low frequencies at the bottom, ``dynamic_range_db`` below each picture's maximum shown."""
    path = Path(path)
    panels = []
    for clip in clips:
        s = log_spectrogram(clip[0].detach().cpu(), n_fft)
        s = (s - (s.max() - dynamic_range_db)).clamp(min=0) / dynamic_range_db
        img = _colormap(s.flip(0).numpy())
        pic = Image.fromarray(img, "RGB").resize((max(64, s.shape[1] * 2), height), Image.BILINEAR)
        panels.append(np.asarray(pic))
        panels.append(np.full((height, 4, 3), 255, np.uint8))
    grid = np.concatenate(panels[:-1], axis=1) if panels else np.zeros((height, 1, 3), np.uint8)
    Image.fromarray(grid, "RGB").save(path)
    return path


def seconds(n: int, rate: int) -> float:
    return n / float(rate)


def num_samples(clip_seconds: float, rate: int) -> int:
    """Clip length in samples: ``round(clip_seconds * rate)``, at least 1."""
    return max(1, int(math.floor(clip_seconds * rate + 0.5)))
