"""Write clips as files a person can open: per clip an animated GIF (Pillow), an MP4 (H.264,
through PyAV where it is installed: ``pip install "diffuse[video]"``) and a PNG strip of its
frames; for the whole set ``strips.png`` (one clip per row) and ``grid.gif`` (all clips playing
side by side).

Frames are written at their own size (the GIF exactly: it reads back to the same pixels), at
:data:`FPS` frames per second, looping.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffuse.domains.image import make_grid

__all__ = ["clips_to_uint8", "write_clips", "write_gif", "write_mp4", "have_pyav", "FPS"]

log = logging.getLogger(__name__)
#: frames per second of the written GIFs and MP4s
FPS = 8


def clips_to_uint8(x: Tensor) -> np.ndarray:
    """Model-space clips ``[B, C, T, H, W]`` in ``[-1, 1]`` -> ``uint8 [B, T, H, W, C]`` (clamped, rounded)."""
    x = x.detach().float().cpu().clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def _pil(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(frame[..., 0], "L") if frame.shape[-1] == 1 else Image.fromarray(frame[..., :3], "RGB")


def write_gif(frames: np.ndarray, path: Path, fps: int = FPS) -> Path:
    """An animated, looping GIF of ``uint8 [T, H, W, C]`` frames (grayscale written losslessly)."""
    images = [_pil(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0,
                   optimize=False, disposal=1)
    return path


def have_pyav() -> bool:
    """Whether PyAV (the ``av`` package) can be imported: MP4 output and input."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def write_mp4(frames: np.ndarray, path: Path, fps: int = FPS) -> Path:
    """An H.264 MP4 (yuv420p, CRF 18) of ``uint8 [T, H, W, C]`` frames through PyAV; odd sides
    are padded by one black pixel (H.264 needs even sides)."""
    import av

    t, h, w, c = frames.shape
    rgb = np.repeat(frames, 3, axis=-1) if c == 1 else frames[..., :3]
    rgb = np.pad(rgb, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = rgb.shape[2], rgb.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for f in rgb:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _strip(frames: np.ndarray, pad: int = 1) -> np.ndarray:
    """``uint8 [T, H, W, C]`` -> one row ``[H + 2 pad, T (W + pad) + pad, C]``."""
    return make_grid(frames, nrow=len(frames), pad=pad, pad_value=128)


def write_clips(x: Tensor, out_dir: str | Path, keep_frames: int | None = None) -> list[Path]:
    """Write clips ``[B, C, T, H, W]`` (model space) into ``out_dir`` (module docstring); only the
    first ``keep_frames`` frames of each when given (a completion that continued a clip)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arr = clips_to_uint8(x)
    if keep_frames is not None:
        arr = arr[:, :keep_frames]
    paths: list[Path] = []
    if not len(arr):
        return paths
    mp4 = have_pyav()
    if not mp4:
        log.info("PyAV is not installed: writing GIF and PNG only (pip install \"diffuse[video]\" for MP4)")
    width = max(4, len(str(len(arr) - 1)))
    strips = []
    for i, clip in enumerate(arr):
        stem = out / f"clip_{i:0{width}d}"
        paths.append(write_gif(clip, stem.with_suffix(".gif")))
        strip = _strip(clip)
        strips.append(strip)
        _pil(strip).save(stem.with_suffix(".png"))
        paths.append(stem.with_suffix(".png"))
        if mp4:
            paths.append(write_mp4(clip, stem.with_suffix(".mp4")))
    p = out / "strips.png"
    _pil(np.concatenate(strips, 0)).save(p)
    paths.append(p)
    grid = np.stack([make_grid(arr[:, f], pad=2, pad_value=128) for f in range(arr.shape[1])])
    paths.append(write_gif(grid, out / "grid.gif"))
    return paths
