"""A 1-D convolutional autoencoder on waveforms for latent audio diffusion.

Encoder: ``conv7 -> [ResBlock (dilations 1, 3), strided conv (factor 4 or 2)] per level ->
GroupNorm-SiLU -> conv3`` to ``2 * latent_channels`` (mean and log-variance of a diagonal
Gaussian posterior, as the image KL autoencoder; a small KL term keeps the latent tame); the
decoder mirrors it with transposed convolutions. ``[B, C, L]`` clips map to
``[B, latent_channels, ceil(L / f)]`` latents (the clip is zero-padded inside to a multiple of
``f`` and the decoder's output cropped back to the data's length), ``f = downsample`` in
32, 64, 128, 256 (levels of factor 4, plus one of 2 for 32 and 128).

Loss: multi-resolution STFT (spectral convergence + L1 of log magnitudes at FFT sizes 256, 512,
1024, the Parallel WaveGAN loss, Yamamoto et al. 2020) + ``wave_weight`` x waveform L1 +
``kl_weight`` x KL.

Options (``--config {"model": {...}}`` of ``diffuse train-autoencoder --domain audio``):
``downsample``, ``latent_channels``, ``channels`` (per level; padded with its last value),
``kl_weight``, ``wave_weight``, ``fft_sizes``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.validation import AT_LEAST_ONE, NON_NEGATIVE, OneOf, check_kwargs
from ...core.data.domain import Batch
from ...core.models.latent import Autoencoder, gaussian_draw, gaussian_kl
from ...core.errors import UserInputError
from ..layers import norm_groups

__all__ = ["AudioAutoencoder", "DEFAULT_AUDIO_AUTOENCODER", "stft_distance", "logmel_distance"]

DEFAULT_AUDIO_AUTOENCODER: dict[str, Any] = {
    "downsample": 64, "latent_channels": 16, "channels": [32, 64, 128], "kl_weight": 1e-4, "wave_weight": 1.0,
    "fft_sizes": [256, 512, 1024]}
_FACTORS = {32: [4, 4, 2], 64: [4, 4, 4], 128: [4, 4, 4, 2], 256: [4, 4, 4, 4]}


def _stft_mag(x: Tensor, n_fft: int) -> Tensor:
    x = x.reshape(-1, x.shape[-1]).float()
    if x.shape[-1] < n_fft:
        x = F.pad(x, (0, n_fft - x.shape[-1]))
    win = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, n_fft // 4, window=win, return_complex=True).abs().clamp_min(1e-7)


def stft_distance(x: Tensor, y: Tensor, fft_sizes=(256, 512, 1024)) -> Tensor:
    """Multi-resolution STFT loss per clip ``[B]``: spectral convergence ``||Y| - |X||_F / ||Y||_F``
    plus mean ``|log |X| - log |Y||``, averaged over the FFT sizes (``y`` the reference)."""
    b = x.shape[0]
    out = x.new_zeros(b, dtype=torch.float32)
    for n in fft_sizes:
        mx, my = _stft_mag(x, n).reshape(b, -1), _stft_mag(y, n).reshape(b, -1)
        sc = (my - mx).norm(dim=1) / my.norm(dim=1).clamp_min(1e-7)
        mag = (mx.log() - my.log()).abs().mean(1)
        out = out + sc + mag
    return out / len(fft_sizes)


def logmel_distance(x: Tensor, y: Tensor, sample_rate: int, n_fft: int = 1024, n_mels: int = 64) -> Tensor:
    """Mean absolute difference of log10 mel spectrograms per clip ``[B]`` (in bels: x10 is dB)."""
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=n_mels).to(x.device)
    b = x.shape[0]
    mx = mel(x.reshape(-1, x.shape[-1]).float()).clamp_min(1e-8).log10()
    my = mel(y.reshape(-1, y.shape[-1]).float()).clamp_min(1e-8).log10()
    return (mx - my).abs().reshape(b, -1).mean(1)


def _group_norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with the largest power-of-two group count dividing ``ch``, up to 8."""
    return nn.GroupNorm(norm_groups(ch, 8, powers_of_two=True), ch)


class _Res1D(nn.Module):
    def __init__(self, ch: int, dilation: int) -> None:
        super().__init__()
        self.n1, self.c1 = _group_norm(ch), nn.Conv1d(ch, ch, 3, padding=dilation, dilation=dilation)
        self.n2, self.c2 = _group_norm(ch), nn.Conv1d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.c2(F.silu(self.n2(self.c1(F.silu(self.n1(x))))))


class AudioAutoencoder(Autoencoder):
    """Waveform KL autoencoder ``[B, C, L] <-> [B, latent_channels, ceil(L / f)]`` (module docstring)."""

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        cfg = {**DEFAULT_AUDIO_AUTOENCODER, **config}
        check_audio_autoencoder(cfg)
        super().__init__(config, "audio")
        self.channels = int(data_info.get("channels", 1))
        self.length = int(data_info["length"])
        self.sample_rate = int(data_info.get("sample_rate", 16000))
        factors = _FACTORS[int(cfg["downsample"])]
        chans = list(cfg["channels"])[:len(factors)]
        chans += [chans[-1]] * (len(factors) - len(chans))
        zc = int(cfg["latent_channels"])
        self.factor, self.latent_channels = int(cfg["downsample"]), zc
        self.kl_weight, self.wave_weight = float(cfg["kl_weight"]), float(cfg["wave_weight"])
        self.fft_sizes = tuple(int(n) for n in cfg["fft_sizes"])
        enc: list[nn.Module] = [nn.Conv1d(self.channels, chans[0], 7, padding=3)]
        prev = chans[0]
        for f, ch in zip(factors, chans):
            enc += [_Res1D(prev, 1), _Res1D(prev, 3), nn.Conv1d(prev, ch, 2 * f, stride=f, padding=f // 2)]
            prev = ch
        enc += [_Res1D(prev, 1), _group_norm(prev), nn.SiLU(), nn.Conv1d(prev, 2 * zc, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv1d(zc, prev, 3, padding=1), _Res1D(prev, 1)]
        for f, ch in zip(reversed(factors), [*reversed(chans[:-1]), chans[0]]):
            dec += [nn.ConvTranspose1d(prev, ch, 2 * f, stride=f, padding=f // 2), _Res1D(ch, 1), _Res1D(ch, 3)]
            prev = ch
        dec += [_group_norm(prev), nn.SiLU(), nn.Conv1d(prev, self.channels, 7, padding=3)]
        self.decoder = nn.Sequential(*dec)

    def _pad(self, x: Tensor) -> Tensor:
        pad = (-x.shape[-1]) % self.factor
        return F.pad(x, (0, pad)) if pad else x

    # ------------------------------------------------------------------ interface
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.encoder(self._pad(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, batch: Batch, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        return gaussian_draw(*self.posterior(batch.x), generator, sample)

    def decode(self, z: Tensor, like: Batch) -> Tensor:
        return self.decoder(z)[..., :self.length]

    @torch.no_grad()
    def latent_template(self, batch: Batch) -> Tensor:
        b, _, n = batch.x.shape
        return batch.x.new_zeros(b, self.latent_channels, -(-n // self.factor))

    def latent_info(self, data_info: dict[str, Any]) -> dict[str, Any]:
        return {"channels": self.latent_channels, "length": -(-int(data_info["length"]) // self.factor)}

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        x = batch.x
        mean, logvar = self.posterior(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        rec = self.decoder(mean + torch.exp(0.5 * logvar) * eps)[..., :x.shape[-1]]
        spec = stft_distance(rec, x, self.fft_sizes).mean()
        wave = (rec - x).abs().mean()
        kl = gaussian_kl(mean, logvar)
        total = spec + self.wave_weight * wave + self.kl_weight * kl
        return total, {"stft": float(spec.detach()), "wave": float(wave.detach()), "kl": float(kl.detach())}

    @torch.no_grad()
    def reconstruction_metrics(self, batch: Batch) -> dict[str, Tensor]:
        """Per-clip multi-resolution STFT distance and log-mel distance (bels) of the
        reconstruction from the posterior mean."""
        rec = self.decode(self.encode(batch, sample=False), batch)[..., :batch.x.shape[-1]]
        return {"stft": stft_distance(rec, batch.x, self.fft_sizes),
                "logmel": logmel_distance(rec, batch.x, self.sample_rate)}


def check_audio_autoencoder(cfg: dict[str, Any]) -> None:
    """Validate audio autoencoder options (``ValueError`` naming the key)."""
    unknown = sorted(set(cfg) - set(DEFAULT_AUDIO_AUTOENCODER))
    if unknown:
        raise UserInputError(f"unknown audio autoencoder option(s): {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(DEFAULT_AUDIO_AUTOENCODER))}")

    def _opts(downsample: int = 64, latent_channels: int = 16, channels: list = (32,), kl_weight: float = 1e-4,
              wave_weight: float = 1.0, fft_sizes: list = (256,)) -> None: ...

    check_kwargs(_opts, cfg, "model", limits={
        "downsample": OneOf(tuple(_FACTORS)), "latent_channels": AT_LEAST_ONE, "kl_weight": NON_NEGATIVE,
        "wave_weight": NON_NEGATIVE})
    for key in ("channels", "fft_sizes"):
        v = cfg.get(key)
        if not v or not all(isinstance(m, int) and not isinstance(m, bool) and m >= (8 if key == "fft_sizes" else 1)
                            for m in v):
            raise UserInputError(f"model.{key} must be a non-empty list of positive integers, got {v!r}")
