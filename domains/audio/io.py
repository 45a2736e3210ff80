"""Audio files in and out: reading with soundfile, resampling and normalisation with torch,
16-bit PCM WAV and spectrogram PNG writers.

Every reading failure is turned into :class:`~diffuse.core.data.domain.DataError` with one line that
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

from ...core.errors import DataError, UserInputError

__all__ = ["AUDIO_EXTENSIONS", "read_audio", "audio_info", "read_frames", "decoded_blocks", "resampled_length",
           "to_channels", "resample", "normalise", "normalise_gain", "write_wav", "log_spectrogram",
           "write_spectrogram_png"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
#: input frames per block of :func:`decoded_blocks` (the memory a streamed file's pass takes)
BLOCK_FRAMES = 1 << 20


def _check_path(path: Path) -> None:
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise DataError(f"{path}: unsupported audio format {path.suffix!r}; expected one of "
                        f"{', '.join(AUDIO_EXTENSIONS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such audio file")


def _cannot_read(path: Path, exc: Exception) -> DataError:
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(f"{path}: cannot read audio ({msg}); expected a valid WAV / FLAC / OGG file")


def _checked(path: Path, data: np.ndarray) -> np.ndarray:
    if not np.isfinite(data).all():
        raise DataError(f"{path}: audio contains NaN or infinite samples")
    return data


def read_audio(path: str | Path) -> tuple[Tensor, int]:
    """Read a WAV / FLAC / OGG file as float32 ``[C, N]`` in [-1, 1] plus its sample rate.

    Raises :class:`DataError` for a missing, unreadable, unsupported, empty or non-finite file.
    """
    path = Path(path)
    _check_path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise _cannot_read(path, exc) from None
    if data.shape[0] == 0:
        raise DataError(f"{path}: audio file has zero length")
    return torch.from_numpy(np.ascontiguousarray(_checked(path, data).T)), int(rate)


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """``(frames, channels, sample rate)`` of an audio file from its header (nothing decoded)."""
    path = Path(path)
    _check_path(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - as read_audio
        raise _cannot_read(path, exc) from None
    if info.frames <= 0:
        raise DataError(f"{path}: audio file has zero length")
    return int(info.frames), int(info.channels), int(info.samplerate)


def read_frames(path: str | Path, start: int, frames: int) -> Tensor:
    """Frames ``start .. start + frames - 1`` of a file as float32 ``[C, frames]`` (a seek, then
    a read of only those frames; zeros beyond either end): the same values as the slice
    ``read_audio(path)[0][:, start:start + frames]``."""
    path = Path(path)
    try:
        with sf.SoundFile(str(path)) as fh:
            n = fh.frames
            out = np.zeros((frames, fh.channels), np.float32)
            a, b = max(start, 0), min(start + frames, n)
            if b > a:
                fh.seek(a)
                out[a - start:b - start] = fh.read(b - a, dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - as read_audio
        raise _cannot_read(path, exc) from None
    return torch.from_numpy(np.ascontiguousarray(_checked(path, out).T))


def resampled_length(frames: int, orig_rate: int, new_rate: int) -> int:
    """Samples after :func:`resample` of ``frames`` samples: ``ceil(frames * new / orig)``."""
    g = math.gcd(int(orig_rate), int(new_rate))
    o, n = int(orig_rate) // g, int(new_rate) // g
    return -(-frames * n // o)


def decoded_blocks(path: str | Path, channels: int, new_rate: int, block: int | None = None):
    """The file mixed to ``channels`` and resampled to ``new_rate``, in consecutive blocks
    ``[channels, n_i]`` of about ``block`` (:data:`BLOCK_FRAMES`) input frames, reading only a block (plus the
    resampling filter's context) at a time. Concatenated they equal
    ``resample(to_channels(read_audio(path)[0], channels), rate, new_rate)`` (to float rounding:
    each output sample sees the same inputs through the same filter)."""
    path = Path(path)
    block = block or BLOCK_FRAMES
    frames, _, rate = audio_info(path)
    if rate == new_rate:
        for a in range(0, frames, block):
            yield to_channels(read_frames(path, a, min(block, frames - a)), channels, str(path))
        return
    g = math.gcd(rate, int(new_rate))
    o, n = rate // g, int(new_rate) // g
    # torchaudio's windowed-sinc kernel reaches `width` input samples either side of a block of
    # `o` inputs (lowpass_filter_width 6, rolloff 0.99); the context is a whole number of blocks
    width = math.ceil(6 * o / (min(o, n) * 0.99))
    ctx_blocks = width // o + 2
    ctx = ctx_blocks * o
    total = resampled_length(frames, rate, new_rate)
    per = max(1, block // o)
    for k0 in range(0, -(-frames // o), per):
        k1 = min(k0 + per, -(-frames // o))
        seg = read_frames(path, k0 * o - ctx, (k1 - k0) * o + 2 * ctx)
        out = resample(to_channels(seg, channels, str(path)), rate, new_rate)
        first = k0 * n
        yield out[:, ctx_blocks * n: ctx_blocks * n + min((k1 - k0) * n, total - first)]


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
    rms = float(x.pow(2).mean().sqrt()) if mode == "loudness" else 0.0
    return x * normalise_gain(mode, float(x.abs().max()), rms, name, peak, target_db)


def normalise_gain(mode: str, peak_abs: float, rms: float, name: str = "audio", peak: float = 0.95,
                   target_db: float = -20.0) -> float:
    """The gain :func:`normalise` applies, from the clip's peak ``max |x|`` and ``rms`` (used by
    ``loudness`` only); ``none`` is 1."""
    if mode == "none":
        return 1.0
    if peak_abs < 1e-5:
        raise DataError(f"{name}: audio is silent (peak {peak_abs:.2g}); expected an audible signal")
    if mode == "peak":
        return peak / peak_abs
    if mode == "loudness":
        return min(10 ** (target_db / 20) / rms, 1.0 / peak_abs)
    raise UserInputError(f"unknown normalisation {mode!r}; expected 'peak', 'loudness' or 'none'")


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
