"""A noise-aware audio classifier: the waveform U-Net's encoder (dilated ``ResBlock1D`` with the
time embedding, strided ``Downsample1D``) from :mod:`diffuse.domains.audio.unet`, then global
average pooling over time and a linear head (Dhariwal & Nichol 2021's half U-Net, in 1-D).

``AudioClassifier(x [B, C, L], noise_level [B], space=None) -> [B, out_dim]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import timestep_embedding
from .unet import Downsample1D, ResBlock1D, _group_norm
from ...core.errors import UserInputError

__all__ = ["AudioClassifier", "DEFAULT_CLASSIFIER"]

DEFAULT_CLASSIFIER: dict[str, Any] = {"channels": [16, 32, 64, 64], "factors": [4, 4, 4], "num_res_blocks": 1,
                                      "dilations": [1, 3], "stem_kernel": 7}


class AudioClassifier(nn.Module):
    """``stem -> [ResBlock1D x n, Downsample1D] per level -> GN, SiLU, mean over time -> Linear``."""

    def __init__(self, in_channels: int, out_dim: int, channels: Sequence[int] = (16, 32, 64, 64),
                 factors: Sequence[int] = (4, 4, 4), num_res_blocks: int = 1, dilations: Sequence[int] = (1, 3),
                 stem_kernel: int = 7, dropout: float = 0.0) -> None:
        super().__init__()
        channels, factors = [int(c) for c in channels], [int(f) for f in factors]
        if len(factors) != len(channels) - 1:
            raise UserInputError(f"need len(factors) == len(channels) - 1, got {len(factors)} and {len(channels)}")
        self.base = channels[0]
        emb_dim = 4 * self.base
        self.time_mlp = nn.Sequential(nn.Linear(self.base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv1d(in_channels, channels[0], stem_kernel, padding=stem_kernel // 2)
        self.levels = nn.ModuleList()
        for i, ch in enumerate(channels):
            blocks = nn.ModuleList(ResBlock1D(ch, ch, emb_dim, dilations[j % len(dilations)], dropout)
                                   for j in range(int(num_res_blocks)))
            pool = Downsample1D(ch, channels[i + 1], factors[i]) if i < len(factors) else nn.Identity()
            self.levels.append(nn.ModuleList([blocks, pool]))
        self.norm = _group_norm(channels[-1])
        self.head = nn.Linear(channels[-1], int(out_dim))

    def forward(self, x: Tensor, noise_level: Tensor, space: Any = None) -> Tensor:
        emb = self.time_mlp(timestep_embedding(noise_level.reshape(-1).expand(x.shape[0]), self.base))
        h = self.stem(x)
        for blocks, pool in self.levels:
            for blk in blocks:
                h = blk(h, emb)
            h = pool(h)
        return self.head(F.silu(self.norm(h)).mean(-1))
