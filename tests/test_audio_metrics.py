"""Audio metrics against closed forms: STFT linearity, identical sets (the Frechet distance itself:
tests/test_layers.py)."""

import math

import pytest
import torch

from diffuse.domains.audio.domain import spectral_flatness
from diffuse.domains.audio.metrics import log_mel_l1, multi_resolution_stft, set_metrics

RATE = 16000


def tones(n: int, length: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    f = 200 + 1500 * torch.rand(n, 1, 1, generator=g)
    t = torch.arange(length) / RATE
    decay = torch.exp(-t / 0.08)
    return 0.8 * torch.sin(2 * math.pi * f * t + 6 * torch.rand(n, 1, 1, generator=g)) * decay


def noise(n: int, length: int = 4000, seed: int = 1) -> torch.Tensor:
    return 0.3 * torch.randn(n, 1, length, generator=torch.Generator().manual_seed(seed))


def test_stft_distances_closed_form():
    y = tones(3)
    d0 = multi_resolution_stft(y, y)
    assert torch.all(d0["total"] == 0)
    # |STFT(a y)| = a |STFT(y)|: spectral convergence |1 - a|, log magnitude |log a| (above the floor)
    d = multi_resolution_stft(0.5 * y + 1e-3 * noise(3), y)
    assert torch.allclose(d["spectral_convergence"], torch.full((3,), 0.5, dtype=torch.float64), atol=0.01)
    loud = multi_resolution_stft(2.0 * y, y)
    assert torch.allclose(loud["spectral_convergence"], torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert (loud["log_magnitude"] <= math.log(2) + 1e-5).all() and (loud["log_magnitude"] > 0.3).all()
    far = multi_resolution_stft(noise(3), y)
    assert (far["total"] > 2 * d["total"]).all()
    with pytest.raises(ValueError, match="equal shapes"):
        multi_resolution_stft(y, y[..., :100])


def test_log_mel_l1_zero_for_identical_and_log_gain_for_scaled():
    y = tones(2)
    assert torch.all(log_mel_l1(y, y, RATE) == 0)
    # a 20 dB gain changes log mel power by log(100) where the signal is far above the floor
    assert float(log_mel_l1(10 * y.clamp(-0.09, 0.09), y.clamp(-0.09, 0.09), RATE).max()) < math.log(100) + 1e-4
    assert (log_mel_l1(noise(2), y, RATE) > log_mel_l1(y + 0.01 * noise(2), y, RATE)).all()


def test_set_metrics_identical_near_zero_tone_vs_noise_large():
    ref = tones(24)
    same = set_metrics(ref, ref, RATE)
    vs_noise = set_metrics(noise(24), ref, RATE)
    vs_other_tones = set_metrics(tones(24, seed=5), ref, RATE)
    for key in ("fd_logmel", "fd_mfcc", "fd_net"):
        assert same[key] < 1e-6 * max(1.0, vs_noise[key])
        assert vs_noise[key] > 5 * vs_other_tones[key], key


def test_spectral_flatness_noise_vs_tone():
    assert float(spectral_flatness(noise(4)).mean()) > 0.4
    assert float(spectral_flatness(tones(4)).max()) < 0.05
