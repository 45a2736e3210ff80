"""Speech restoration through the restoration path (``diffuse upscale``): denoising and the exact
band of bandwidth extension.

* **Denoising** (``--condition noisy``, data option ``noisy``: an SNR in dB or a range
  ``[lo, hi]`` drawn per clip): every training clip plus white Gaussian noise at that SNR
  (relative to the clip's RMS), drawn from the batch generator, is the model's concatenated
  condition ``noisy`` (:class:`~diffuse.core.data.condition.ConcatKind`, as SR3 conditions on
  its low-resolution input). ``diffuse upscale --input noisy.wav`` then reads the noisy clip at
  its own level (resampled to the model's rate, not normalised: the training clips are
  peak-normalised to 0.95 *before* the noise is added).
* **Bandwidth extension** (``--condition lowrate``, ``inpaint.LowRateDataset``): the model
  generates the whole band from the band-limited clip. :func:`keep_band` then puts the given
  band back exactly: the output's spectrum below :data:`KEEP_FRACTION` of the low rate's
  Nyquist frequency is the input's, bin for bin (rFFT of the whole clip), and only the band
  above it is generated. The projection is the data-consistency step of SR3-style restoration
  seen from the frequency side: nothing the input determines is left to the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...core.data.condition import ConcatKind, Condition
from ...core.data.domain import Batch, DomainDataset
from ...core.errors import DataError, UserInputError
from .io import read_audio, resample, to_channels

__all__ = ["KEEP_FRACTION", "check_snr", "add_noise", "NoisyDataset", "noisy_condition", "keep_band", "kept_bins"]

#: :func:`keep_band` keeps the input's spectrum below this fraction of the low rate's Nyquist
#: frequency (the resampling filter's transition band, above about 0.95, is generated)
KEEP_FRACTION = 0.9


def check_snr(value: Any) -> tuple[float, float]:
    """``5`` or ``[0, 15]`` (dB) -> ``(lo, hi)``; a UserInputError otherwise."""
    vals = value if isinstance(value, (list, tuple)) else [value, value]
    try:
        lo, hi = (float(v) for v in vals)
    except (TypeError, ValueError):
        raise UserInputError(f"noisy must be an SNR in dB or a range [lo, hi], got {value!r}") from None
    if len(vals) != 2 or not -30 <= lo <= hi <= 60:
        raise UserInputError(f"noisy must be an SNR in dB (or [lo, hi]) between -30 and 60, got {value!r}")
    return lo, hi


def add_noise(x: Tensor, snr_db: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x [B, C, L]`` plus white Gaussian noise at ``snr_db [B]`` relative to each clip's RMS."""
    rms = x.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-5)
    scale = rms * 10 ** (-snr_db / 20)
    return x + scale.view(-1, 1, 1) * torch.randn(x.shape, generator=generator)


class NoisyDataset(DomainDataset):
    """Wraps an audio dataset: every batch carries ``cond["noisy"]``, its clips plus white noise
    at an SNR drawn uniformly from ``snr`` (dB), both from the batch generator."""

    def __init__(self, base: DomainDataset, snr: Any) -> None:
        self.base, self.snr = base, check_snr(snr)
        info = base.info()
        self.kind = ConcatKind(int(info["channels"]), [int(info["length"])])

    def __len__(self) -> int:
        return len(self.base)

    def info(self):
        return {**self.base.info(), "noisy": list(self.snr)}

    def batch(self, indices, generator=None):
        b = self.base.batch(indices, generator)
        lo, hi = self.snr
        snr = lo + (hi - lo) * torch.rand(b.x.shape[0], generator=generator)
        cond = Condition({"noisy": self.kind.with_flag(add_noise(b.x, snr, generator))}, {"noisy": self.kind})
        return Batch(b.x, b.space, cond, b.extras)

    def __getattr__(self, name: str):
        if name in ("base",):
            raise AttributeError(name)
        return getattr(self.base, name)


def noisy_condition(path: str | Path, data_info: dict[str, Any]) -> dict[str, Tensor]:
    """``{"noisy": [C, L]}`` from a noisy clip: the model's channels and rate, its own level, padded
    to the model's clip length (a longer clip is an error)."""
    rate, length = int(data_info["sample_rate"]), int(data_info["length"])
    x, file_rate = read_audio(path)
    x = resample(to_channels(x, int(data_info.get("channels", 1)), str(path)), file_rate, rate)
    if x.shape[-1] > length:
        raise DataError(f"the clip {path} ({x.shape[-1] / rate:.3f} s) is longer than this model's clips "
                        f"({length / rate:.3f} s)")
    return {"noisy": torch.nn.functional.pad(x, (0, length - x.shape[-1]))}


def kept_bins(length: int, rate: int, low_rate: int) -> int:
    """How many rFFT bins (from 0 Hz) of a ``length``-sample clip :func:`keep_band` keeps."""
    f_keep = KEEP_FRACTION * low_rate / 2
    return int(torch.floor(torch.tensor(f_keep * length / rate)).item()) + 1


def keep_band(samples: Tensor, given: Tensor, rate: int, low_rate: int) -> Tensor:
    """``samples [B, C, L]`` with their rFFT bins below :data:`KEEP_FRACTION` of ``low_rate / 2``
    replaced by those of ``given`` (``[C, L]`` or ``[B, C, L]``, the band-limited input at ``rate``)."""
    n = samples.shape[-1]
    k = kept_bins(n, rate, low_rate)
    out = torch.fft.rfft(samples.double(), dim=-1)
    ref = torch.fft.rfft(given.double().expand_as(samples), dim=-1)
    out[..., :k] = ref[..., :k]
    return torch.fft.irfft(out, n=n, dim=-1).to(samples.dtype)
