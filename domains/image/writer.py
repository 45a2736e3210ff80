"""Write image samples as PNG files with Pillow: a grid (``grid.png``) and one file per sample."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["to_uint8", "make_grid", "write_pngs"]


def to_uint8(x: Tensor) -> np.ndarray:
    """Model-space images ``[B, C, H, W]`` in ``[-1, 1]`` -> ``uint8 [B, H, W, C]`` (clamped, rounded)."""
    x = x.detach().float().cpu().clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile ``uint8 [B, H, W, C]`` into one ``[rows*(H+pad)+pad, nrow*(W+pad)+pad, C]`` image."""
    b, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = max(1, math.ceil(b / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(b):
        r, k = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def _pil(a: np.ndarray) -> Image.Image:
    c = a.shape[-1]
    if c == 1:
        return Image.fromarray(a[..., 0], "L")
    if c == 3:
        return Image.fromarray(a, "RGB")
    if c == 4:
        return Image.fromarray(a, "RGBA")
    return Image.fromarray(a[..., 0], "L")  # other channel counts: the first channel as grayscale


def write_pngs(x: Tensor, out_dir: str | Path, grid: bool = True, each: bool = True) -> list[Path]:
    """Write ``grid.png`` and ``sample_0000.png``, ... for model-space images ``x``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(x)
    paths: list[Path] = []
    if grid and len(arr):
        p = out / "grid.png"
        _pil(make_grid(arr)).save(p)
        paths.append(p)
    if each:
        width = max(4, len(str(len(arr) - 1)))
        for i, a in enumerate(arr):
            p = out / f"sample_{i:0{width}d}.png"
            _pil(a).save(p)
            paths.append(p)
    return paths
