"""Image inputs for completion (inpainting) and editing: an image file in the model's space and
its mask (``ImageDomain.completion_input``). The sampling itself is ``core.sampling.completion``.

Options: ``mask`` (a PNG / JPEG the size of the image: white = generate, black = keep; gray
levels are thresholded at 50 %) or ``rect`` (``x0,y0,x1,y1`` in pixels, the half-open box
``[x0, x1) x [y0, y1)`` to generate); neither: the whole image is known (an edit's input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ...core.data.domain import Batch
from ...core.errors import DataError, MissingPathError, UserInputError
from ...core.data.space import DenseSpace
from .imagefile import open_image

__all__ = ["read_image", "image_completion_input", "parse_rect", "lowres_pair", "check_lowres", "lowres_condition"]


def read_image(path: str | Path, channels: int, what: str = "input image") -> np.ndarray:
    """``uint8 [H, W, C]`` with ``channels`` 1 (grayscale) or 3 (RGB); one-line DataError otherwise."""
    p = Path(path)
    if not p.exists():
        raise MissingPathError(f"{what} {p} does not exist")
    if not p.is_file():
        raise DataError(f"{what} {p} is not a file")
    img = open_image(p, what)
    try:
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(bg, img)
        img = img.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(img)
    except (OSError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} {p}: cannot read it as an image ({why})") from None
    return arr[..., None] if arr.ndim == 2 else arr


def parse_rect(value: Any, height: int, width: int) -> tuple[int, int, int, int]:
    """``"x0,y0,x1,y1"`` (or four integers) -> a box inside an ``height x width`` image."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        if len(parts) != 4:
            raise ValueError
        x0, y0, x1, y1 = (int(str(v).strip()) for v in parts)
    except (TypeError, ValueError):
        raise UserInputError(f"--rect must be four whole numbers x0,y0,x1,y1, got {value!r}") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UserInputError(f"--rect {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {width} and "
                         f"0 <= y0 < y1 <= {height} (the image is {width}x{height})")
    return x0, y0, x1, y1


def image_completion_input(path: str | Path, options: dict[str, Any], data_info: dict[str, Any]) -> tuple[Batch, Tensor]:
    unknown = sorted(set(options) - {"mask", "rect"})
    if unknown:
        raise UserInputError(f"image completion takes mask or rect, not {', '.join(unknown)}")
    if options.get("mask") is not None and options.get("rect") is not None:
        raise UserInputError("give either --mask or --rect, not both")
    c, h, w = int(data_info.get("channels", 1)), int(data_info.get("height", 28)), int(data_info.get("width", 28))
    arr = read_image(path, c)
    if arr.shape[:2] != (h, w):
        raise DataError(f"input image {path} is {arr.shape[1]}x{arr.shape[0]}; this model makes {w}x{h} images")
    x = torch.from_numpy(np.array(arr.transpose(2, 0, 1))).float().div(127.5).sub(1.0)[None]
    known = torch.ones(1, 1, h, w, dtype=torch.bool)
    if options.get("mask") is not None:
        m = read_image(options["mask"], 1, "mask")
        if m.shape[:2] != (h, w):
            raise DataError(f"mask {options['mask']} is {m.shape[1]}x{m.shape[0]} but the image is {w}x{h}; "
                            "give a mask of the same size")
        known = torch.from_numpy(m[..., 0] < 128)[None, None]
    elif options.get("rect") is not None:
        x0, y0, x1, y1 = parse_rect(options["rect"], h, w)
        known[..., y0:y1, x0:x1] = False
    return Batch(x, DenseSpace()), known


# ------------------------------------------------------------------ super-resolution (SR3)
def check_lowres(factor: Any, height: int, width: int, source: str = "") -> int | None:
    """The SR factor (``None``: off); the image size must be a multiple of it."""
    if factor is None or factor is False:
        return None
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise DataError(f"lowres must be a whole factor >= 2 (e.g. 4: 7x7 -> 28x28), got {factor!r}")
    if height % factor or width % factor:
        raise DataError(f"{source or 'images'}: {width}x{height} is not a multiple of the lowres factor {factor}")
    return int(factor)


def upsample(small: Tensor, height: int, width: int) -> Tensor:
    """Bicubic upsampling ``[B, C, h, w] -> [B, C, height, width]`` in [-1, 1] (SR3's input and
    the bicubic baseline)."""
    return F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)


def lowres_pair(x: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """``(low-resolution image, its bicubic upsampling)`` of ``x [B, C, H, W]``: area
    averaging over ``factor x factor`` blocks, then bicubic back to ``H x W``."""
    small = F.avg_pool2d(x, factor)
    return small, upsample(small, x.shape[2], x.shape[3])


def lowres_condition(path: str | Path, data_info: dict[str, Any]) -> dict[str, Tensor]:
    """``{"lowres": [C, H, W]}`` from a low-resolution image file of the model's low size."""
    factor = data_info.get("lowres")
    if not factor:
        raise UserInputError("this model was not trained for super-resolution; train with --condition lowres")
    c, h, w = int(data_info.get("channels", 1)), int(data_info.get("height", 28)), int(data_info.get("width", 28))
    arr = read_image(path, c)
    if arr.shape[:2] != (h // factor, w // factor):
        raise DataError(f"input image {path} is {arr.shape[1]}x{arr.shape[0]}; this model upscales "
                        f"{w // factor}x{h // factor} images to {w}x{h}")
    small = torch.from_numpy(np.array(arr.transpose(2, 0, 1))).float().div(127.5).sub(1.0)[None]
    return {"lowres": upsample(small, h, w)[0]}
