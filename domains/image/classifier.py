"""A noise-aware image classifier: the U-Net's down path (ResBlocks with the time embedding,
strided convolutions) followed by global average pooling and a linear head, as the
classifier of Dhariwal & Nichol 2021 (the "half U-Net"), built from
:mod:`diffuse.domains.image.unet`'s blocks.

``ImageClassifier(x [B, C, H, W], noise_level [B], space=None) -> [B, out_dim]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import timestep_embedding
from .unet import GroupNormSiLU, ResBlock

__all__ = ["ImageClassifier", "DEFAULT_CLASSIFIER"]

DEFAULT_CLASSIFIER: dict[str, Any] = {"base_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1,
                                      "dropout": 0.0, "groups": 8}


class ImageClassifier(nn.Module):
    """Down path of the U-Net: ``conv_in -> [n x ResBlock, stride-2 conv] per level -> GN, SiLU,
    mean over pixels -> Linear``; every ResBlock reads the noise-level embedding."""

    def __init__(self, in_channels: int, out_dim: int, base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2),
                 num_blocks: int = 1, dropout: float = 0.0, groups: int = 8) -> None:
        super().__init__()
        self.base = int(base_channels)
        emb_dim = 4 * self.base
        self.time_mlp = nn.Sequential(nn.Linear(self.base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, self.base, 3, padding=1)
        self.blocks, self.proj, self.down = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        ch = self.base
        for lvl, m in enumerate(channel_mult):
            for _ in range(int(num_blocks)):
                self.blocks.append(ResBlock(ch, self.base * int(m), groups, dropout))
                self.proj.append(nn.Linear(emb_dim, self.base * int(m)))
                ch = self.base * int(m)
            self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if lvl < len(channel_mult) - 1
                             else nn.Identity())
        self.per_level = int(num_blocks)
        self.norm = GroupNormSiLU(groups, ch)
        self.head = nn.Linear(ch, int(out_dim))

    def forward(self, x: Tensor, noise_level: Tensor, space: Any = None) -> Tensor:
        emb = F.silu(self.time_mlp(timestep_embedding(noise_level.reshape(-1).expand(x.shape[0]), self.base)
                                   .to(x.dtype)))
        h = self.conv_in(x)
        for i, (blk, proj) in enumerate(zip(self.blocks, self.proj)):
            h = blk(h, proj(emb))
            if (i + 1) % self.per_level == 0:
                h = self.down[i // self.per_level](h)
        return self.head(self.norm(h).mean(dim=(2, 3)))
