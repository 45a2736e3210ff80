"""Audio metrics (no network, no downloaded weights).

Paired (reconstruction, inpainting: ``x`` against its target ``y``, both ``[B, C, L]``):

* :func:`multi_resolution_stft` - the multi-resolution STFT distance of Yamamoto et al. 2020
  (Parallel WaveGAN, eq. 4-6), averaged over FFT sizes 256 / 512 / 1024 (hop = size / 4,
  Hann window): *spectral convergence* ``||S_y - S_x||_F / ||S_y||_F`` (0 = identical, 1 = as
  far as silence is from ``y``) plus *log magnitude* ``mean |log S_y - log S_x|`` (natural log,
  magnitudes floored at 1e-5). Returns per-sample values ``[B]``.
* :func:`log_mel_l1` - mean absolute difference of natural-log mel spectrograms (64 bands at
  16 kHz, power floored at about -60 dBFS), per sample ``[B]``; 1.0 means the mel energies
  differ by a factor e on average.

Sets (generated vs reference, unpaired), see :func:`set_metrics`:

* ``fd_logmel`` - Frechet distance between Gaussians fitted to per-clip log-mel statistics
  (mean and std over time of 64 log-mel bands, 128-d). Measures spectral balance and how
  energy varies over time.
* ``fd_mfcc`` - the same on 20 MFCCs' mean and std (40-d): timbre / spectral envelope.
* ``fd_net`` - the same on the 64-d embedding of the small feature CNN trained on the bundled
  percussion categories (see ``features.FeatureNet``); like FID / FAD but with a network
  trained here. Most discriminative between "percussion-like" and "noise-like".

All are 0 for identical sets and grow with the mismatch; Frechet distances are biased upwards
for small sets, so compare numbers only at equal set sizes. Waveforms are clipped to [-1, 1]
(what a listener hears) and NaNs set to 0 before features are computed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...core.frechet import frechet_from_features
from .features import load_feature_net, log_mel, mel_stats, mfcc_stats
from ...core.errors import UserInputError

__all__ = ["multi_resolution_stft", "log_mel_l1", "set_metrics", "FFT_SIZES"]

FFT_SIZES = (256, 512, 1024)


def _mag(x: Tensor, n_fft: int) -> Tensor:
    if x.shape[-1] < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.shape[-1]))
    win = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, n_fft // 4, window=win, return_complex=True).abs()


def multi_resolution_stft(x: Tensor, y: Tensor, fft_sizes: Sequence[int] = FFT_SIZES) -> dict[str, Tensor]:
    """Per-sample multi-resolution STFT distances of ``x`` to ``y`` (``[B, C, L]`` or ``[B, L]``):
    ``{"spectral_convergence", "log_magnitude", "total"}`` each ``[B]`` (``total`` is the sum)."""
    if x.shape != y.shape:
        raise UserInputError(f"paired audio metrics need equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    b = x.shape[0]
    xf, yf = x.reshape(-1, x.shape[-1]).float(), y.reshape(-1, y.shape[-1]).float()
    sc = torch.zeros(b, dtype=torch.float64)
    lm = torch.zeros(b, dtype=torch.float64)
    for n in fft_sizes:
        sx, sy = _mag(xf, n).reshape(b, -1), _mag(yf, n).reshape(b, -1)
        sc += ((sy - sx).norm(dim=1) / sy.norm(dim=1).clamp(min=1e-8)).double().cpu()
        lm += (torch.log(sy.clamp(min=1e-5)) - torch.log(sx.clamp(min=1e-5))).abs().mean(1).double().cpu()
    sc, lm = sc / len(fft_sizes), lm / len(fft_sizes)
    return {"spectral_convergence": sc, "log_magnitude": lm, "total": sc + lm}


def log_mel_l1(x: Tensor, y: Tensor, rate: int) -> Tensor:
    """Per-sample mean ``|log mel(x) - log mel(y)|`` (64 bands at 16 kHz), ``[B]``."""
    if x.shape != y.shape:
        raise UserInputError(f"paired audio metrics need equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    return (log_mel(x, rate) - log_mel(y, rate)).abs().flatten(1).mean(1).double()


def set_metrics(generated: Tensor, reference: Tensor, rate: int, feature_net: bool = True) -> dict[str, float]:
    """Frechet distances ``fd_logmel``, ``fd_mfcc`` and (if ``feature_net``) ``fd_net`` between
    two sets of waveforms ``[N, C, L]`` (each ``N >= 2``) at sample rate ``rate``; also the
    mean RMS level in dBFS of the generated set (``rms_db``) as a sanity figure."""
    out = {
        "fd_logmel": frechet_from_features(mel_stats(generated, rate), mel_stats(reference, rate)),
        "fd_mfcc": frechet_from_features(mfcc_stats(generated, rate), mfcc_stats(reference, rate)),
    }
    if feature_net:
        net = load_feature_net()
        out["fd_net"] = frechet_from_features(net.embed(generated, rate), net.embed(reference, rate))
    g = torch.nan_to_num(generated.detach().float().cpu()).clamp(-1, 1)
    rms = g.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-5)
    out["rms_db"] = float((20 * torch.log10(rms)).mean())
    return out
