"""A user's clips: GIF (Pillow), MP4 / MOV / AVI / WebM / MKV (PyAV, or imageio where installed)
and NumPy arrays (``.npy``: one clip ``[T, H, W(, C)]`` or several ``[N, T, H, W(, C)]``;
``.npz``: every array in it, the same way), as a file or a folder of them.

Frames are ``uint8`` (or floats in ``[0, 1]`` in arrays); a clip whose frames are all gray is read
as one channel, and a set of clips is grayscale only if every clip is. ``size`` resizes every
frame to ``size x size`` (cover, then centre-crop); without it every clip must have the first
clip's frame size. A clip longer than ``frames`` is cut into consecutive windows of ``frames``
frames (the remainder dropped), and clips shorter than ``frames`` are skipped (one warning line
for the folder, by reason). A file that cannot be read, or whose frame size differs, is a
DataError naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError
from torch import Tensor

from diffuse.core import Batch, DataError, DenseSpace, DomainDataset, MissingPathError, log_skipped, scan_folder

__all__ = ["read_clip", "read_clips", "load_clips", "ClipDataset", "CLIP_SUFFIXES", "MOVIE_SUFFIXES"]

log = logging.getLogger(__name__)

MOVIE_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv")
CLIP_SUFFIXES = (".gif", ".npy", ".npz") + MOVIE_SUFFIXES


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def _gif(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)]
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read it as a GIF ({_why(exc)})") from None
    return np.stack(frames)


def _movie(path: Path) -> np.ndarray:
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        try:
            with av.open(str(path)) as container:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except (av.FFmpegError, ValueError, IndexError, OSError) as exc:
            raise DataError(f"{path}: cannot read it as a video ({_why(exc)})") from None
    else:
        try:
            import imageio.v3 as iio
        except ImportError:
            raise DataError(f"{path}: reading {path.suffix} files needs PyAV or imageio "
                            "(pip install \"diffuse[video]\")") from None
        try:
            frames = list(iio.imread(path, index=None))
        except Exception as exc:  # noqa: BLE001 - imageio's plugins raise many kinds
            raise DataError(f"{path}: cannot read it as a video ({_why(exc)})") from None
    if not frames:
        raise DataError(f"{path}: the video holds no frames")
    return np.stack(frames)


def _array(a: np.ndarray, path: Path, what: str) -> list[np.ndarray]:
    """One array of a .npy / .npz file -> clips ``uint8 [T, H, W, C]``."""
    if a.dtype == np.uint8:
        pass
    elif np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_:
        if a.size and not np.isfinite(a).all():
            raise DataError(f"{path}{what}: the array holds NaN or infinite values")
        if a.size and (a.min() < 0 or a.max() > 1):
            raise DataError(f"{path}{what}: float frames must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
        a = np.round(a.astype(np.float64) * 255).astype(np.uint8)
    else:
        raise DataError(f"{path}{what}: expected uint8 or float frames, got {a.dtype}")
    if a.ndim == 3:
        a = a[None, ..., None]
    elif a.ndim == 4:
        a = a[..., None] if a.shape[-1] not in (1, 3) else a[None]
    elif a.ndim == 5:
        pass
    else:
        raise DataError(f"{path}{what}: expected a clip [T, H, W(, C)] or clips [N, T, H, W(, C)], "
                        f"got shape {list(a.shape)}")
    if a.shape[-1] not in (1, 3) or min(a.shape[1:4]) < 1:
        raise DataError(f"{path}{what}: frames must have 1 or 3 channels and positive sides, got shape {list(a.shape)}")
    return [np.repeat(c, 3, -1) if c.shape[-1] == 1 else c for c in a]


def _arrays(path: Path) -> list[np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read it as a NumPy {path.suffix} file ({_why(exc)})") from None
    if isinstance(loaded, np.ndarray):
        return _array(loaded, path, "")
    with loaded as z:
        out = []
        for key in z.files:
            try:
                a = z[key]
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(f"{path}: array {key!r} is corrupt ({_why(exc)})") from None
            out += _array(a, path, f" (array {key!r})")
        if not out:
            raise DataError(f"{path}: the .npz file holds no arrays")
        return out


def read_clip(path: str | Path) -> list[np.ndarray]:
    """The clips in one file as ``uint8 [T, H, W, 3]`` arrays (one for GIF / MP4)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingPathError(f"{p}: no such file")
    if not p.is_file():
        raise DataError(f"{p} is not a file")
    suffix = p.suffix.lower()
    if suffix == ".gif":
        return [_gif(p)]
    if suffix in MOVIE_SUFFIXES:
        return [_movie(p)]
    if suffix in (".npy", ".npz"):
        return _arrays(p)
    raise DataError(f"{p}: not a clip file; expected one of {', '.join(CLIP_SUFFIXES)}")


def _fit(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize ``uint8 [T, H, W, 3]`` frames to cover ``size x size``, then centre-crop."""
    t, h, w, _ = frames.shape
    if (h, w) == (size, size):
        return frames
    scale = max(size / w, size / h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    out = [np.asarray(Image.fromarray(f).resize((nw, nh), Image.Resampling.BICUBIC))[top:top + size, left:left + size]
           for f in frames]
    return np.stack(out)


def read_clips(path: str | Path, frames: int, size: int | None = None, channels: int | None = None,
               max_clips: int | None = None) -> tuple[Tensor, int]:
    """Clips of ``frames`` frames from a file or a folder (module docstring): ``uint8 [N, C, T, H, W]``
    and the number of skipped (too short) clips."""
    root = Path(path).expanduser()
    if not root.exists():
        raise MissingPathError(f"{root}: no such file or folder (expected clips: {', '.join(CLIP_SUFFIXES)})")
    if root.is_dir():
        files, skipped = scan_folder(root, CLIP_SUFFIXES)
        if not files:
            raise DataError(f"{root}: no clip files ({', '.join(CLIP_SUFFIXES)}) in the folder")
    else:
        files, skipped = [root], []
    windows: list[np.ndarray] = []
    shape = None
    short = []
    for f in files:
        for clip in read_clip(f):
            if size is not None:
                clip = _fit(clip, size)
            if shape is None:
                shape = clip.shape[1:3]
            elif clip.shape[1:3] != shape:
                raise DataError(f"{f}: frames are {clip.shape[2]}x{clip.shape[1]} but earlier clips' are "
                                f"{shape[1]}x{shape[0]}; give data option size to resize them all")
            if len(clip) < frames:
                short.append(f)
                continue
            windows += [clip[s:s + frames] for s in range(0, len(clip) - frames + 1, frames)]
            if max_clips is not None and len(windows) >= max_clips:
                break
        if max_clips is not None and len(windows) >= max_clips:
            windows = windows[:max_clips]
            break
    skipped += [(f, f"shorter than {frames} frames") for f in short]
    log_skipped(root, skipped)
    if not windows:
        raise DataError(f"{root}: no clip of at least {frames} frames")
    arr = np.stack(windows)                                                  # [N, T, H, W, 3]
    gray = bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 0] == arr[..., 2]).all())
    c = channels or (1 if gray else 3)
    if c not in (1, 3):
        raise DataError(f"video data option channels must be 1 or 3, got {channels!r}")
    arr = arr[..., :1] if c == 1 and gray else (
        np.round(arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))[..., None].astype(np.uint8) if c == 1 else arr)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 4, 1, 2, 3))), len(short)


class ClipDataset(DomainDataset):
    """Clips ``uint8 [N, C, T, H, W]``; ``batch`` scales them to ``[-1, 1]``."""

    def __init__(self, clips: Tensor, source: str, extra_info: dict[str, Any] | None = None) -> None:
        if clips.dtype != torch.uint8 or clips.ndim != 5:
            raise DataError(f"clips must be uint8 [N, C, T, H, W], got {clips.dtype} {list(clips.shape)}")
        self.clips, self.source, self.extra_info = clips, source, dict(extra_info or {})

    def __len__(self) -> int:
        return len(self.clips)

    def info(self) -> dict[str, Any]:
        _, c, t, h, w = self.clips.shape
        return {"channels": int(c), "frames": int(t), "height": int(h), "width": int(w), "source": self.source,
                "num_clips": len(self), "conditional": False, **self.extra_info}

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(self.clips[idx].float().div_(127.5).sub_(1.0), DenseSpace())

    def subset(self, indices: Tensor) -> "ClipDataset":
        return ClipDataset(self.clips[torch.as_tensor(indices, dtype=torch.long)], self.source, self.extra_info)


def load_clips(path: str | Path, options: dict[str, Any]) -> ClipDataset:
    """A user's clips for the video domain's data ``options`` (``frames``, ``size``, ``channels``, ``max_clips``)."""
    clips, _ = read_clips(path, int(options["frames"]), options.get("size"), options.get("channels"),
                          options.get("max_clips"))
    extra = {"i3d": options["i3d"]} if options.get("i3d") else {}
    return ClipDataset(clips, str(Path(path).expanduser()), extra)
