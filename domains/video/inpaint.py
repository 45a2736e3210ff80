"""Video inputs for completion (``diffuse inpaint``): a clip file in the model's space and the mask
of its known frames (``VideoDomain.completion_input``). The sampling itself is the core's
completion (re-imposing the known frames from the forward process at every step).

The input clip (GIF, MP4, ``.npy`` / ``.npz``; ``clips.read_clip``) must have the model's frame
size and channels and at most the model's number of frames ``T``. Its frames are known, except:

* ``span``: one or more ``START:END`` frame ranges (``END`` exclusive, frames counted from 0) to
  generate: **interpolation** between the frames around each gap;
* frames past the clip's end: **prediction**. A clip of ``K < T`` frames gets its next ``T - K``
  frames; ``continue N`` asks for ``N`` (``K + N <= T``; the model draws whole ``T``-frame clips
  and the frames past ``K + N`` are cut off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffuse.core import Batch, DataError, DenseSpace, UserInputError

from .clips import read_clip

__all__ = ["video_completion_input", "parse_frame_spans", "frames_mask"]


def _whole(value: Any, what: str) -> int:
    try:
        v = int(str(value).strip())
    except (TypeError, ValueError):
        raise UserInputError(f"{what} must be a whole number of frames, got {value!r}") from None
    return v


def parse_frame_spans(value: Any, frames: int) -> list[tuple[int, int]]:
    """``"3:7"`` (or a list of them, or ``(start, end)`` pairs) -> frame ranges inside ``[0, frames)``."""
    items = [value] if isinstance(value, str) or (isinstance(value, (tuple, list)) and len(value) == 2
                                                   and not isinstance(value[0], (str, tuple, list))) else list(value)
    out = []
    for item in items:
        parts = item.split(":") if isinstance(item, str) else list(item)
        if len(parts) != 2:
            raise UserInputError(f"--span must be START:END in frames (e.g. 3:7), got {item!r}")
        a, b = (_whole(p, "--span") for p in parts)
        if not 0 <= a < b <= frames:
            raise UserInputError(f"--span {a}:{b} must have 0 <= START < END <= {frames} (the clip's frames)")
        out.append((a, b))
    return out


def frames_mask(frames: int, known: list[int]) -> Tensor:
    """The completion mask ``[1, 1, frames, 1, 1]`` (true = known) of the frames ``known``."""
    mask = torch.zeros(1, 1, frames, 1, 1, dtype=torch.bool)
    mask[0, 0, known] = True
    return mask


def video_completion_input(path: str | Path, options: dict[str, Any], info: dict[str, Any]) -> tuple[Batch, Tensor]:
    unknown = sorted(set(options) - {"span", "continue"})
    if unknown:
        raise UserInputError(f"video completion takes span (frames to generate) or continue (frames to predict), "
                             f"not {', '.join(unknown)}")
    c, t, h, w = (int(info[k]) for k in ("channels", "frames", "height", "width"))
    clips = read_clip(path)
    if len(clips) != 1:
        raise DataError(f"{path} holds {len(clips)} clips; give a file with one clip to complete")
    clip = clips[0]
    k = len(clip)
    if clip.shape[1:3] != (h, w):
        raise DataError(f"input clip {path} has {clip.shape[2]}x{clip.shape[1]} frames; this model makes {w}x{h}")
    if k > t:
        raise DataError(f"input clip {path} has {k} frames; this model makes clips of {t} (give at most {t})")
    gray = bool((clip[..., 0] == clip[..., 1]).all() and (clip[..., 0] == clip[..., 2]).all())
    if c == 1:
        if not gray:
            raise DataError(f"input clip {path} is in colour; this model makes grayscale clips")
        clip = clip[..., :1]
    x = torch.zeros(1, c, t, h, w)
    x[0, :, :k] = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2))).float().div(127.5).sub(1.0)
    known = set(range(k))
    keep = t
    if options.get("continue") is not None:
        n = _whole(options["continue"], "--continue")
        if n < 1 or k + n > t:
            raise UserInputError(f"--continue {n}: the clip has {k} frames and this model makes {t}; "
                                 f"continue by 1 to {t - k} frames")
        keep = k + n
    for a, b in parse_frame_spans(options["span"], k) if options.get("span") else []:
        known -= set(range(a, b))
    extras = {"keep_frames": keep} if keep < t else {}
    return Batch(x, DenseSpace(), None, extras), frames_mask(t, sorted(known))
