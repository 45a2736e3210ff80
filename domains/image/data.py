"""Image data: folders of PNG/JPEG files, MNIST-format IDX files and the bundled MNIST subset.

Every reader returns an :class:`ImageDataset` holding the images as ``uint8`` ``[N, C, H, W]``
(plus optional integer labels); :meth:`ImageDataset.batch` scales them to ``[-1, 1]`` and applies
the optional random horizontal flip, drawing only from the generator.

A folder of PNG / JPEG files of at least :data:`CACHE_MIN_BYTES` is decoded (and resized) once
into the on-disk cache (``core.data.cache``: keyed by the image files' paths, mtimes and sizes and the
reading options) and memory-mapped afterwards: later runs neither decode it again nor hold it in
memory (subsets of a memory-mapped set keep row indices instead of copying).

IDX format (LeCun et al., the MNIST distribution): a 4-byte magic number ``0x00 0x00 <type>
<ndim>`` (type ``0x08`` = unsigned byte), then ``ndim`` big-endian int32 dimensions, then the
data in row-major order. Image files are ``[N, H, W]`` (or ``[N, H, W, C]``), label files ``[N]``.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import warnings

from ...core.data.cache import cached_arrays, file_key
from ...core.data.datafiles import log_skipped, scan_folder
from ...core.data.condition import Condition, ConcatKind, LabelKind
from ...core.data.domain import Batch, DomainDataset
from ...core.errors import DataError, UserInputError
from ...core.data.space import DenseSpace
from ..text import Captioner, generic_phrases, text_kind_for, with_article
from .imagefile import open_image
from .inpaint import check_lowres, lowres_pair

__all__ = ["ImageDataset", "load_images", "read_folder", "read_idx", "load_idx_dataset", "load_bundled",
           "write_idx", "BUNDLED_PATH", "BUNDLED_SOURCE", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_PATH = DATA_DIR / "mnist_5k.npz"
BUNDLED_SOURCE = "bundled:mnist_5k"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: image folders of at least this many bytes are decoded once into the cache, then memory-mapped
CACHE_MIN_BYTES = 16 << 20
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def image_phrases(class_names: Sequence[str] | None) -> list[list[str]]:
    """Caption phrasings per class for ``text`` conditioning. Digit classes ``"0".."9"`` get ten
    hand-written ones ("a handwritten seven", "the digit 7", "a picture of a seven", ...); other
    class names the generic ones of :func:`~diffuse.domains.text.generic_phrases`."""
    out = []
    for name in class_names or []:
        if str(name) in [str(i) for i in range(10)]:
            d, w = str(name), DIGIT_WORDS[int(name)]
            out.append([f"handwritten {w}", f"the digit {d}", f"{with_article('picture')} of {with_article(w)}",
                        f"the number {w}", with_article(w), d, w, f"a handwritten digit {d}",
                        f"an image of the number {d}", f"a drawing of {with_article(w)}"])
            out[-1][0] = with_article(out[-1][0])
        else:
            out.append(generic_phrases(str(name), "picture"))
    return out


class ImageDataset(DomainDataset):
    """Images ``uint8 [N, C, H, W]`` with optional labels ``[N]``.

    ``batch`` returns ``x`` in ``[-1, 1]`` and, when ``conditional``, the labels as the
    condition ``cond["label"]`` (a :class:`~diffuse.core.data.condition.Condition`). ``rows``: this
    dataset is those rows of ``images`` (a subset of a memory-mapped set, nothing copied).
    """

    def __init__(self, images: Tensor, labels: Tensor | None = None, class_names: Sequence[str] | None = None,
                 source: str = "", flip: bool = False, conditional: bool = False,
                 feature_net: str | None = None, text: bool = False, lowres: int | None = None,
                 rows: Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise UserInputError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if (conditional or text) and labels is None:
            raise DataError(f"{source}: conditional training needs class labels, and this data has none")
        self._images, self.rows = images, rows
        self.labels = labels.long() if labels is not None else None
        self.class_names = list(class_names) if class_names is not None else (
            [str(i) for i in range(int(self.labels.max()) + 1)] if self.labels is not None and len(self.labels) else None)
        self.source, self.flip, self.conditional, self.feature_net = source, bool(flip), bool(conditional), feature_net
        self.text = bool(text)
        self._captioner = Captioner(image_phrases(self.class_names), text_kind_for(self.class_names)) if self.text else None
        self.lowres = check_lowres(lowres, images.shape[2], images.shape[3], source)  # inpaint helper: SR3

    @property
    def images(self) -> Tensor:
        """Every image of this dataset, ``uint8 [N, C, H, W]`` (read into memory when mapped)."""
        return self._images if self.rows is None else self._images[self.rows]

    def __len__(self) -> int:
        return self._images.shape[0] if self.rows is None else len(self.rows)

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names is not None else None

    def info(self) -> dict[str, Any]:
        _, c, h, w = self._images.shape
        return {"channels": int(c), "height": int(h), "width": int(w), "num_images": len(self),
                "num_classes": self.num_classes, "class_names": self.class_names,
                "conditional": self.conditional, "source": self.source, "feature_net": self.feature_net,
                "text": self.text,
                **({"lowres": self.lowres} if self.lowres else {})}

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self._images[idx if self.rows is None else self.rows[idx]].float().div_(127.5).sub_(1.0)
        if self.flip and len(idx):
            mask = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        values, kinds = {}, {}
        if self.conditional:
            values["label"], kinds["label"] = self.labels[idx], LabelKind(self.num_classes, self.class_names)
        if self.lowres:       # SR3: the low-resolution image, upsampled back (inpaint helper)
            kinds["lowres"] = ConcatKind(x.shape[1], list(x.shape[2:]))
            values["lowres"] = kinds["lowres"].with_flag(lowres_pair(x, self.lowres)[1])
        cond = Condition(values, kinds) if values else None
        if self._captioner is not None:   # text: one caption per sample, drawn from the batch generator
            text = self._captioner.condition(self.labels[idx], generator)
            cond = text if cond is None else Condition({**cond.values, **text.values}, {**cond.kinds, **text.kinds})
        extras = {} if self.labels is None else {"labels": self.labels[idx]}
        return Batch(x, DenseSpace(), cond, extras)

    def all_images(self) -> Tensor:
        """Every image, ``uint8 [N, C, H, W]`` (no augmentation)."""
        return self.images

    def subset(self, indices: Tensor) -> "ImageDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        labels = None if self.labels is None else self.labels[idx]
        args = (self.class_names, self.source, self.flip, self.conditional, self.feature_net, self.text, self.lowres)
        if self.rows is not None or _mapped(self._images):
            return ImageDataset(self._images, labels, *args, rows=idx if self.rows is None else self.rows[idx])
        return ImageDataset(self._images[idx], labels, *args)


def _mapped(images: Tensor) -> bool:
    """Whether ``images`` lies over a read-only (memory-mapped) array."""
    return getattr(images, "_diffuse_mapped", False)


def _cached_folder(root: Path, hw: Any, channels: int | None, labels: Any,
                   max_images: int | None) -> tuple[Tensor, Tensor | None, list[str] | None]:
    """:func:`read_folder`, decoded once into the cache and memory-mapped afterwards when the
    image files hold at least :data:`CACHE_MIN_BYTES`."""
    files = _image_files(root)
    if sum(f.stat().st_size for f in files) < CACHE_MIN_BYTES:
        return read_folder(root, hw, channels, labels, max_images)
    key = file_key(files, image_size=hw, channels=channels, labels=labels, max_images=max_images)

    def convert():
        images, lab, names = read_folder(root, hw, channels, labels, max_images)
        return ({"images": images.numpy(), **({"labels": lab.numpy()} if lab is not None else {})},
                {"names": names})
    arrays, meta, built = cached_arrays("images", key, convert)
    if not built:
        log.info("%s: %d images from the cache (decoded once)", root, len(arrays["images"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "the given NumPy array is not writable": never written
        images = torch.from_numpy(np.asarray(arrays["images"]))
    images._diffuse_mapped = True
    lab = torch.from_numpy(np.array(arrays["labels"])) if "labels" in arrays else None
    return images, lab, meta["names"]


# ------------------------------------------------------------------------------ resizing
def _size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        hw = (image_size, image_size)
    else:
        hw = tuple(int(v) for v in image_size)
        if len(hw) != 2:
            raise DataError(f"image_size must be an integer or [height, width], got {image_size!r}")
    if min(hw) < 1:
        raise DataError(f"image_size must be positive, got {image_size!r}")
    return hw  # type: ignore[return-value]


def _fit(img: Image.Image, hw: tuple[int, int]) -> Image.Image:
    """Resize so the image covers ``hw`` (keeping its aspect ratio), then centre-crop to it."""
    h, w = hw
    if img.size == (w, h):
        return img
    scale = max(w / img.width, h / img.height)
    nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - w) // 2, (nh - h) // 2
    return img.crop((left, top, left + w, top + h))


def _resize_array(images: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a ``uint8 [N, H, W, C]`` array with :func:`_fit`."""
    if images.shape[1:3] == hw:
        return images
    mode = "L" if images.shape[-1] == 1 else "RGB"
    out = [np.asarray(_fit(Image.fromarray(im[..., 0] if mode == "L" else im, mode), hw)) for im in images]
    arr = np.stack(out)
    return arr[..., None] if arr.ndim == 3 else arr


def _to_tensor(arr: np.ndarray) -> Tensor:
    """``uint8 [N, H, W, C]`` -> ``uint8 [N, C, H, W]`` (contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _channels(channels: Any) -> int | None:
    if channels is None:
        return None
    if int(channels) not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return int(channels)


# ------------------------------------------------------------------------------ folders
def _image_files(root: Path) -> list[Path]:
    """The non-empty PNG / JPEG files under ``root`` (hidden files and folders ignored)."""
    return scan_folder(root, IMAGE_SUFFIXES)[0]


def read_folder(root: str | Path, image_size: Any = None, channels: int | None = None, labels: Any = "auto",
                max_images: int | None = None) -> tuple[Tensor, Tensor | None, list[str] | None]:
    """Read every PNG/JPEG under ``root`` (recursively). Other files and empty files are
    skipped and summarised in one warning line; hidden files are ignored.

    Returns ``(images uint8 [N, C, H, W], labels [N] or None, class names or None)``. Labels are the
    names of the first-level sub-folders (sorted) when ``labels`` is true, or when it is ``"auto"``
    and every image lies in a sub-folder. ``channels`` ``None`` picks 1 if every image is
    grayscale, else 3. ``image_size`` ``None`` keeps the images' own size (which must then agree).
    """
    root = Path(root)
    files, skipped = scan_folder(root, IMAGE_SUFFIXES)
    log_skipped(root, skipped)
    if not files:
        raise DataError(f"{root}: no PNG or JPEG images found (looked recursively for {', '.join(IMAGE_SUFFIXES)})")
    if max_images:
        files = files[: int(max_images)]
    hw = _size(image_size)
    channels = _channels(channels)
    pics = []
    for f in files:
        pics.append(open_image(f))
    if channels is None:
        channels = 1 if all(_is_gray(p) for p in pics) else 3
    if hw is None:
        sizes = Counter(p.size for p in pics)
        if len(sizes) > 1:
            (w1, h1), (w2, h2) = list(sizes)[:2]
            raise DataError(f"{root}: images have different sizes ({w1}x{h1}, {w2}x{h2}, ...); "
                            f"set the data option image_size (e.g. 64)")
        w, h = pics[0].size
        hw = (h, w)
    mode = "L" if channels == 1 else "RGB"
    arrs = []
    for p in pics:
        q = _flatten_alpha(p).convert(mode)
        a = np.asarray(_fit(q, hw), dtype=np.uint8)
        arrs.append(a[..., None] if a.ndim == 2 else a)
    images = _to_tensor(np.stack(arrs))
    rel = [f.relative_to(root).parts for f in files]
    in_sub = all(len(r) > 1 for r in rel)
    use_labels = in_sub if labels == "auto" else bool(labels)
    if use_labels and not in_sub:
        loose = next(f for f, r in zip(files, rel) if len(r) == 1)
        raise DataError(f"{loose}: labels from sub-folder names were asked for, but this image is not in a sub-folder")
    if not use_labels:
        return images, None, None
    names = sorted({r[0] for r in rel})
    lookup = {n: i for i, n in enumerate(names)}
    return images, torch.tensor([lookup[r[0]] for r in rel], dtype=torch.long), names


def _is_gray(p: Image.Image) -> bool:
    """Grayscale by mode (L, LA, 1, I, F) or a palette whose used colours are all gray."""
    if p.mode in ("1", "L", "LA", "F") or p.mode.startswith("I"):
        return True
    if p.mode != "P":
        return False
    rgb = np.asarray(p.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _flatten_alpha(p: Image.Image) -> Image.Image:
    """Composite images with transparency onto black (the diffusion background)."""
    if p.mode in ("RGBA", "LA") or (p.mode == "P" and "transparency" in p.info):
        rgba = p.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if p.mode.startswith("I") or p.mode == "F":
        # integer modes come from 16-bit PNGs (I;16, I;16B, or I in older Pillow): the bit
        # depth sets the scale, whatever values the picture happens to hold
        a = np.asarray(p, dtype=np.float64)
        hi = 65535.0 if p.mode.startswith("I") else 255.0
        return Image.fromarray(np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8), "L")
    return p


# ------------------------------------------------------------------------------ IDX
def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            return gzip.decompress(raw)
        return raw
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file ({type(exc).__name__}: {exc})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its declared shape."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
                        f"expected 0000 <type 08-0e> <ndim>)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header (expected {header} bytes, got {len(raw)})")
    dims = struct.unpack(f">{ndim}i", raw[4:header])
    if min(dims) < 0:
        raise DataError(f"{path}: negative dimension in IDX header {dims}")
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header < need:
        raise DataError(f"{path}: truncated IDX data (header says {'x'.join(map(str, dims))} "
                        f"= {need} bytes, file has {len(raw) - header})")
    return np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims, dtype=np.int64)), offset=header).reshape(dims)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _label_file_for(image_file: Path) -> Path | None:
    name = image_file.name
    for a, b in (("images-idx3", "labels-idx1"), ("images", "labels")):
        if a in name:
            cand = image_file.with_name(name.replace(a, b))
            if cand.exists():
                return cand
    return None


def _is_idx_name(p: Path) -> bool:
    n = p.name.lower()
    return "idx" in n or n.endswith(("-ubyte", "-ubyte.gz", ".idx", ".idx.gz"))


def load_idx_dataset(image_files: Sequence[Path], label_file: str | Path | None = None,
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Images ``uint8 [N, H, W, C]`` (and labels) from one or more IDX image files."""
    imgs, labs = [], []
    for f in image_files:
        a = read_idx(f)
        if a.dtype != np.uint8 or a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[-1] not in (1, 3)):
            raise DataError(f"{f}: expected an IDX image file of unsigned bytes [N, H, W] or [N, H, W, C], "
                            f"got {a.dtype} {list(a.shape)}")
        imgs.append(a[..., None] if a.ndim == 3 else a)
        lf = Path(label_file) if label_file is not None and len(image_files) == 1 else _label_file_for(Path(f))
        if lf is not None:
            lab = read_idx(lf)
            if lab.ndim != 1 or lab.shape[0] != a.shape[0]:
                raise DataError(f"{lf}: expected {a.shape[0]} labels to match {Path(f).name}, got shape {list(lab.shape)}")
            labs.append(lab.astype(np.int64))
    if len({i.shape[1:] for i in imgs}) > 1:
        raise DataError(f"{image_files[0]}: IDX files have different image shapes {[list(i.shape[1:]) for i in imgs]}")
    images = np.concatenate(imgs)
    labels = np.concatenate(labs) if labs and len(labs) == len(imgs) else None
    return images, labels


# ------------------------------------------------------------------------------ bundled
def load_bundled() -> tuple[np.ndarray, np.ndarray]:
    """The bundled 5,000 MNIST digits: ``uint8 [5000, 28, 28, 1]`` and labels ``[5000]``."""
    with np.load(BUNDLED_PATH) as z:
        return z["images"][..., None], z["labels"].astype(np.int64)


# ------------------------------------------------------------------------------ entry point
def load_images(path: str | Path | None, options: dict[str, Any]) -> ImageDataset:
    """Read images at ``path`` (a folder of PNG/JPEG, an IDX file, a folder of IDX files) or,
    when ``path`` is ``None``, the bundled MNIST subset. See :class:`ImageDomain` for ``options``."""
    opts = dict(options)
    hw = _size(opts.get("image_size"))
    channels = _channels(opts.get("channels"))
    max_images = opts.get("max_images")
    labels: Tensor | None
    names: list[str] | None = None
    if path is None:
        arr, lab = load_bundled()
        source = BUNDLED_SOURCE
    else:
        p = Path(path).expanduser()
        source = str(p)
        if not p.exists():
            raise DataError(f"{p}: no such file or folder (expected a folder of PNG/JPEG images or an IDX file)")
        if p.is_file():
            if p.suffix.lower() in IMAGE_SUFFIXES:
                raise DataError(f"{p}: a single image is not a data set; give the folder that holds the images")
            arr, lab = load_idx_dataset([p], opts.get("labels_file"))
        elif _image_files(p):
            images, labels, names = _cached_folder(p, hw, channels, opts.get("labels", "auto"), max_images)
            return ImageDataset(images, labels, names, source, opts.get("flip", False),
                                opts.get("conditional", False), opts.get("feature_net"), opts.get("text", False),
                                opts.get("lowres"))
        else:
            idx = sorted(f for f in p.rglob("*") if f.is_file() and _is_idx_name(f) and "label" not in f.name.lower())
            if not idx:
                raise DataError(f"{p}: no PNG or JPEG images and no IDX image files found in this folder")
            arr, lab = load_idx_dataset(idx)
    if max_images:
        arr, lab = arr[: int(max_images)], None if lab is None else lab[: int(max_images)]
    if len(arr) == 0:
        raise DataError(f"{source}: the data set holds no images")
    if channels is not None and channels != arr.shape[-1]:
        arr = np.repeat(arr, 3, axis=-1) if channels == 3 else np.round(
            arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    if hw is not None:
        arr = _resize_array(arr, hw)
    labels = None if lab is None or opts.get("labels", "auto") is False else torch.from_numpy(lab)
    if labels is not None and labels.min() < 0:
        raise DataError(f"{source}: class labels must be non-negative integers")
    return ImageDataset(_to_tensor(arr), labels, names, source, opts.get("flip", False),
                        opts.get("conditional", False), opts.get("feature_net"), opts.get("text", False),
                        opts.get("lowres"))
