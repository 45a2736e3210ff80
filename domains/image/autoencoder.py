"""A convolutional KL autoencoder for latent image diffusion (Rombach et al. 2022, the "KL-f4 /
KL-f8" first stage, without the adversarial loss).

Encoder: ``conv3x3 -> [ResBlock x num_blocks, stride-2 conv] x log2(downsample) -> ResBlock ->
GroupNorm-SiLU -> conv3x3`` to ``2 * latent_channels`` (the mean and log-variance of a diagonal
Gaussian posterior); the decoder mirrors it with nearest-neighbour upsampling. ``[B, C, H, W]``
images in ``[-1, 1]`` map to ``[B, latent_channels, H / f, W / f]`` latents, ``f`` the
downsampling factor (4 or 8; ``H`` and ``W`` must be multiples of it).

Loss: L1 (or L2) reconstruction + ``kl_weight`` x KL(q(z | x) || N(0, I)) (mean per latent
element) + ``perceptual_weight`` x a feature-matching loss on the framework's own LeNet
(``features.bundled_lenet``: the squared distance of its two convolutional feature maps, images
averaged to gray for colour data). The LeNet is frozen and not part of the autoencoder's weights.

Options (``--config {"model": {...}}`` of ``diffuse train-autoencoder --domain image``):
``downsample`` (4 | 8), ``latent_channels``, ``base_channels``, ``channel_mult`` (one entry per
downsampling, default ``[1, 2, 2]`` / ``[1, 2, 2, 4]``... truncated or padded with its last value),
``num_blocks``, ``groups``, ``kl_weight``, ``recon`` (``l1`` | ``l2``), ``perceptual_weight``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.validation import AT_LEAST_ONE, NON_NEGATIVE, OneOf, check_kwargs
from ...core.data.domain import Batch
from ...core.models.latent import Autoencoder, gaussian_draw, gaussian_kl
from ..layers import norm_groups
from .unet import Upsample
from ...core.errors import UserInputError

__all__ = ["ImageAutoencoder", "DEFAULT_IMAGE_AUTOENCODER", "psnr"]

DEFAULT_IMAGE_AUTOENCODER: dict[str, Any] = {
    "downsample": 4, "latent_channels": 4, "base_channels": 32, "channel_mult": [1, 2], "num_blocks": 1,
    "groups": 8, "kl_weight": 1e-4, "recon": "l1", "perceptual_weight": 0.1}


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in ``[-1, 1]`` (peak-to-peak 2)."""
    mse = (x.float().clamp(-1, 1) - y.float().clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


class _Res(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(norm_groups(cin, groups), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(norm_groups(cout, groups), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


_LENET: list = []


def _lenet():
    """The bundled LeNet (frozen), loaded once per process and kept out of any state dict."""
    if not _LENET:
        from .features import bundled_lenet
        _LENET.append(bundled_lenet().requires_grad_(False))
    return _LENET[0]


def perceptual_distance(x: Tensor, y: Tensor) -> Tensor:
    """Mean squared distance of the LeNet's two convolutional feature maps (``[B]``)."""
    net = _lenet().to(x.device)
    if x.shape[1] != 1:
        x, y = x.mean(1, keepdim=True), y.mean(1, keepdim=True)
    out = x.new_zeros(x.shape[0])
    hx, hy = x, y
    for conv in (net.conv1, net.conv2):
        hx, hy = F.relu(conv(hx)), F.relu(conv(hy))
        out = out + (hx - hy).pow(2).flatten(1).mean(1)
        hx, hy = F.max_pool2d(hx, 2), F.max_pool2d(hy, 2)
    return out


class ImageAutoencoder(Autoencoder):
    """KL autoencoder ``[B, C, H, W] <-> [B, latent_channels, H / f, W / f]`` (module docstring)."""

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        cfg = {**DEFAULT_IMAGE_AUTOENCODER, **config}
        check_image_autoencoder(cfg)
        super().__init__(config, "image")
        self.channels = int(data_info.get("channels", 1))
        self.height, self.width = int(data_info.get("height", 28)), int(data_info.get("width", 28))
        f = int(cfg["downsample"])
        if self.height % f or self.width % f:
            raise UserInputError(f"image autoencoder: the images are {self.height}x{self.width}, not multiples of the "
                             f"downsampling factor {f}; resize them (data option image_size) or use another factor")
        levels = int(round(math.log2(f)))
        mult = list(cfg["channel_mult"])[:levels + 1]
        mult += [mult[-1]] * (levels + 1 - len(mult))
        chans = [int(cfg["base_channels"]) * int(m) for m in mult]
        g, nb, zc = int(cfg["groups"]), int(cfg["num_blocks"]), int(cfg["latent_channels"])
        self.latent_channels, self.factor = zc, f
        self.kl_weight, self.recon, self.perceptual_weight = (float(cfg["kl_weight"]), cfg["recon"],
                                                              float(cfg["perceptual_weight"]))
        enc: list[nn.Module] = [nn.Conv2d(self.channels, chans[0], 3, padding=1)]
        for i in range(levels):
            enc += [_Res(chans[i] if j == 0 else chans[i + 1], chans[i + 1], g) for j in range(nb)]
            enc.append(nn.Conv2d(chans[i + 1], chans[i + 1], 3, stride=2, padding=1))
        enc += [_Res(chans[-1], chans[-1], g), nn.GroupNorm(norm_groups(chans[-1], g), chans[-1]), nn.SiLU(),
                nn.Conv2d(chans[-1], 2 * zc, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(zc, chans[-1], 3, padding=1), _Res(chans[-1], chans[-1], g)]
        for i in reversed(range(levels)):
            # nearest 2x upsampling + conv3x3, as one transposed convolution (the Identity keeps
            # the Sequential's indices, so checkpoints written before load unchanged)
            dec += [nn.Identity(), Upsample(chans[i + 1])]
            dec += [_Res(chans[i + 1] if j == 0 else chans[i], chans[i], g) for j in range(nb)]
        dec += [nn.GroupNorm(norm_groups(chans[0], g), chans[0]), nn.SiLU(), nn.Conv2d(chans[0], self.channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    # ------------------------------------------------------------------ interface
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, batch: Batch, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        return gaussian_draw(*self.posterior(batch.x), generator, sample)

    def decode(self, z: Tensor, like: Batch) -> Tensor:
        return self.decoder(z)

    @torch.no_grad()
    def latent_template(self, batch: Batch) -> Tensor:
        b, _, h, w = batch.x.shape
        return batch.x.new_zeros(b, self.latent_channels, h // self.factor, w // self.factor)

    def latent_info(self, data_info: dict[str, Any]) -> dict[str, Any]:
        return {"channels": self.latent_channels, "height": int(data_info.get("height", 28)) // self.factor,
                "width": int(data_info.get("width", 28)) // self.factor}

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        x = batch.x
        mean, logvar = self.posterior(x)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        rec = self.decoder(mean + torch.exp(0.5 * logvar) * eps)
        err = (rec - x).abs() if self.recon == "l1" else (rec - x).pow(2)
        rec_loss = err.mean()
        kl = gaussian_kl(mean, logvar)
        total = rec_loss + self.kl_weight * kl
        parts = {"recon": float(rec_loss.detach()), "kl": float(kl.detach())}
        if self.perceptual_weight > 0:
            perc = perceptual_distance(rec, x).mean()
            total = total + self.perceptual_weight * perc
            parts["perceptual"] = float(perc.detach())
        return total, parts

    @torch.no_grad()
    def reconstruction_metrics(self, batch: Batch) -> dict[str, Tensor]:
        """Per-image PSNR (dB) and L1 of the reconstruction from the posterior mean."""
        rec = self.decode(self.encode(batch, sample=False), batch)
        return {"psnr": psnr(rec, batch.x), "l1": (rec.clamp(-1, 1) - batch.x).abs().flatten(1).mean(1)}


def check_image_autoencoder(cfg: dict[str, Any]) -> None:
    """Validate image autoencoder options (``ValueError`` naming the key)."""
    unknown = sorted(set(cfg) - set(DEFAULT_IMAGE_AUTOENCODER))
    if unknown:
        raise UserInputError(f"unknown image autoencoder option(s): {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(DEFAULT_IMAGE_AUTOENCODER))}")

    def _opts(downsample: int = 4, latent_channels: int = 4, base_channels: int = 32, channel_mult: list = (1, 2),
              num_blocks: int = 1, groups: int = 8, kl_weight: float = 1e-4, recon: str = "l1",
              perceptual_weight: float = 0.1) -> None: ...

    check_kwargs(_opts, cfg, "model", limits={
        "downsample": OneOf((2, 4, 8, 16)), "latent_channels": AT_LEAST_ONE, "base_channels": AT_LEAST_ONE,
        "num_blocks": AT_LEAST_ONE, "groups": AT_LEAST_ONE, "kl_weight": NON_NEGATIVE, "recon": OneOf(("l1", "l2")),
        "perceptual_weight": NON_NEGATIVE})
    mult = cfg.get("channel_mult", [1])
    if not mult or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mult):
        raise UserInputError(f"model.channel_mult must be a non-empty list of positive integers, got {mult!r}")
