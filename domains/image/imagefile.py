"""One rule for reading every image file (training folders, inpainting inputs and masks,
super-resolution inputs): the whole file decoded into memory, or one DataError line.

An image whose header declares more than PIL's ``Image.MAX_IMAGE_PIXELS`` pixels (about 89
million; a "decompression bomb": a small PNG that says 60000x60000 would need gigabytes) is
refused before it is decoded, whatever reads it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ...core.errors import DataError

__all__ = ["open_image"]


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """The decoded image at ``path`` (a copy, the file closed); a DataError naming the file for
    anything unreadable, a declared size over ``Image.MAX_IMAGE_PIXELS`` included."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()
                return im.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        size = _declared_size(p)
        raise DataError(f"{what} {p}: its header declares {size} pixels, more than the {Image.MAX_IMAGE_PIXELS:,} an "
                        "image may have (a decompression bomb?); resize it or remove it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what} {p}: cannot read it as an image ({type(exc).__name__}: {why}); expected a PNG or "
                        "JPEG file") from None


def _declared_size(p: Path) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(p) as im:
                    w, h = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        return f"{w}x{h} = {w * h:,}"
    except Exception:  # noqa: BLE001 - only for the message
        return "too many"
