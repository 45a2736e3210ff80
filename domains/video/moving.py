"""Moving-MNIST-style clips made from the bundled MNIST digits (Srivastava et al. 2015,
"Unsupervised Learning of Video Representations using LSTMs", section 3).

Each clip holds ``num_digits`` digits that move with constant velocity inside a square frame
and bounce off its edges elastically. Here the digits are the 5,000 bundled MNIST digits
(``diffuse.domains.image.load_bundled``) shrunk by area averaging to ``digit_size`` pixels (14 in
a 32-pixel frame: the proportions of the 28-pixel digits in Srivastava's 64-pixel frames).

The rules, per digit and axis (top-left corner ``p`` of the digit's box, room ``L = size -
digit_size``)::

    p(t) = tri(p0 + v t),   tri(u) = r if r <= L else 2L - r,   r = u mod 2L

``p0`` uniform in ``[0, L]``, speed ``|v|`` uniform in ``speed = [lo, hi]`` pixels per frame, the
direction uniform on the circle: a straight line folded back at the walls, i.e. constant velocity
with elastic bounces. Positions are real numbers; a digit is drawn at ``p`` by bilinear splatting
(the shift of a bilinear image), so the intensity centroid of its layer is exactly ``p`` plus the
digit's own centroid: a drawn clip obeys the rules exactly, not up to rounding to whole pixels
(``tests/test_video_data.py``). Several digits are joined by the pixel-wise maximum, as in
Srivastava's generator.

Clip ``i`` is drawn from its own seeded stream (``numpy.random.default_rng([seed, stream, i])``),
so a data set is a deterministic function of its options and no clip is stored. The held-out split
(:meth:`MovingDigits.split`) takes a seeded share of the *digits* (not of the clips) and draws its
clips from those digits only, from a stream of their own: no digit of a held-out clip appears in
training.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffuse.core import Batch, Condition, DataError, DenseSpace, DomainDataset, LabelKind
from diffuse.domains.image import load_bundled

__all__ = ["MovingDigits", "bundled_digits", "fold", "render_clip", "digit_centroids", "BUNDLED_SOURCE",
           "DIGIT_NAMES", "DIGIT_WORDS", "label_kind"]

BUNDLED_SOURCE = "bundled:moving_mnist"
DIGIT_NAMES = [str(i) for i in range(10)]
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def label_kind() -> LabelKind:
    """The ``label`` condition of digit clips: 10 classes, names ``"0".."9"``, English words as aliases."""
    return LabelKind(10, DIGIT_NAMES, {w: i for i, w in enumerate(DIGIT_WORDS)})


def fold(u: np.ndarray | Tensor, room: float) -> np.ndarray | Tensor:
    """``tri(u)``: the unfolded coordinate ``u`` folded into ``[0, room]`` (elastic bounces at
    ``0`` and ``room``). Works on numpy arrays and tensors alike."""
    r = u % (2 * room)
    return np.where(r <= room, r, 2 * room - r) if isinstance(r, np.ndarray) else torch.where(r <= room, r, 2 * room - r)


def bundled_digits(digit_size: int) -> tuple[Tensor, Tensor]:
    """The 5,000 bundled MNIST digits as float ``[5000, s, s]`` in ``[0, 1]`` (area-averaged from
    28x28 to ``s = digit_size``) and their labels ``[5000]``."""
    images, labels = load_bundled()
    x = torch.from_numpy(images[..., 0]).double().div(255.0)[:, None]
    if digit_size != x.shape[-1]:
        x = F.interpolate(x, size=(digit_size, digit_size), mode="area")
    return x[:, 0].clamp(0.0, 1.0), torch.from_numpy(labels)


def digit_centroids(digits: Tensor) -> Tensor:
    """Intensity centroids ``[N, 2]`` (row, column; pixel centres at integers) of digits ``[N, s, s]``."""
    s = digits.shape[-1]
    idx = torch.arange(s, dtype=digits.dtype)
    mass = digits.sum((-2, -1)).clamp_min(1e-12)
    return torch.stack([(digits.sum(-1) * idx).sum(-1) / mass, (digits.sum(-2) * idx).sum(-1) / mass], -1)


def render_clip(digits: Tensor, start: Tensor, velocity: Tensor, frames: int, size: int) -> tuple[Tensor, Tensor]:
    """Draw clips: ``digits [B, k, s, s]`` in ``[0, 1]`` moving from top-left corners ``start
    [B, k, 2]`` with ``velocity [B, k, 2]`` (pixels per frame, row and column). Returns the frames
    ``[B, frames, size, size]`` and the corners ``[B, frames, k, 2]`` (module docstring), in the
    digits' dtype. Each digit is splatted bilinearly (four shifted, weighted copies scattered into
    a canvas one pixel larger, then cropped); digits are joined by the pixel-wise maximum."""
    b, k, s = digits.shape[0], digits.shape[1], digits.shape[-1]
    room = size - s
    t = torch.arange(frames, dtype=digits.dtype)[None, :, None, None]
    pos = fold(start[:, None].to(digits.dtype) + velocity[:, None].to(digits.dtype) * t, room)   # [B, T, k, 2]
    corner = pos.floor().clamp(max=room)
    frac = pos - corner
    corner = corner.long()
    side = size + 1
    ar = torch.arange(s)
    canvas = torch.zeros(b, frames, k, side * side, dtype=digits.dtype)
    src = digits[:, None].expand(b, frames, k, s, s)
    for dy in (0, 1):
        for dx in (0, 1):
            wy = frac[..., 0] if dy else 1 - frac[..., 0]
            wx = frac[..., 1] if dx else 1 - frac[..., 1]
            rows = (corner[..., 0, None] + dy + ar)[..., :, None]            # [B, T, k, s, 1]
            cols = (corner[..., 1, None] + dx + ar)[..., None, :]            # [B, T, k, 1, s]
            index = (rows * side + cols).reshape(b, frames, k, s * s)
            canvas.scatter_add_(-1, index, (src * (wy * wx)[..., None, None]).reshape(b, frames, k, s * s))
    out = canvas.amax(2).reshape(b, frames, side, side)[..., :size, :size]
    return out.contiguous(), pos


class MovingDigits(DomainDataset):
    """Moving-MNIST clips drawn on demand (module docstring).

    Items are clips ``[1, frames, size, size]`` in ``[-1, 1]`` (``Batch.x`` is ``[B, 1, T, H, W]``);
    ``extras["digits"]`` holds each clip's digit classes ``[B, num_digits]``. With ``conditional``
    the class of the (single) digit is the condition ``label``.

    Args:
        digits / labels: the digit images ``[N, s, s]`` in ``[0, 1]`` and classes ``[N]`` clips are made of.
        frames, size, num_digits, speed: the clip length, frame side, digits per clip, and the
            range ``[lo, hi]`` of speeds (pixels per frame).
        num_clips: the number of clips (items); ``seed`` and ``stream`` seed clip ``i``.
        info: the ``data_info`` (a split keeps its base's).
    """

    shared_attributes = ("digit_images", "digit_labels", "frames", "size", "num_digits", "speed")

    def __init__(self, digits: Tensor, labels: Tensor, *, frames: int, size: int, num_digits: int,
                 speed: Sequence[float], num_clips: int, seed: int = 0, stream: int = 0, conditional: bool = False,
                 info: dict[str, Any] | None = None) -> None:
        self.digit_images, self.digit_labels = digits.double(), labels.long()
        self.frames, self.size, self.num_digits = int(frames), int(size), int(num_digits)
        self.speed = (float(speed[0]), float(speed[1]))
        self.num_clips, self.seed, self.stream, self.conditional = int(num_clips), int(seed), int(stream), bool(conditional)
        self._info = info if info is not None else self._make_info()

    def _make_info(self) -> dict[str, Any]:
        cent = digit_centroids(self.digit_images)
        s = int(self.digit_images.shape[-1])
        return {"channels": 1, "frames": self.frames, "height": self.size, "width": self.size,
                "source": BUNDLED_SOURCE, "num_digits": self.num_digits, "digit_size": s,
                "speed": list(self.speed), "num_clips": self.num_clips, "seed": self.seed,
                "centroid_range": [[float(cent[:, a].min()), float(cent[:, a].max())] for a in range(2)],
                "num_classes": 10, "class_names": DIGIT_NAMES, "conditional": self.conditional}

    def __len__(self) -> int:
        return self.num_clips

    def info(self) -> dict[str, Any]:
        return dict(self._info)

    # ------------------------------------------------------------------ clips
    def clip_params(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Clip ``index``'s digits (rows of :attr:`digit_images`) ``[k]``, start corners ``[k, 2]``
        and velocities ``[k, 2]`` (row, column; pixels per frame)."""
        rng = np.random.default_rng([self.seed, self.stream, int(index)])
        which = rng.integers(0, len(self.digit_images), self.num_digits)
        room = self.size - self.digit_images.shape[-1]
        start = rng.uniform(0.0, room, (self.num_digits, 2))
        angle = rng.uniform(0.0, 2 * math.pi, self.num_digits)
        speed = rng.uniform(self.speed[0], self.speed[1], self.num_digits)
        velocity = np.stack([speed * np.sin(angle), speed * np.cos(angle)], -1)
        return which, start, velocity

    def clips(self, indices: Tensor | Sequence[int]) -> dict[str, Tensor]:
        """The clips at ``indices`` with everything that made them: ``frames`` float64 ``[B, T, H, W]``
        in ``[0, 1]``, ``corners [B, T, k, 2]``, ``velocity [B, k, 2]``, ``start [B, k, 2]``,
        ``digits`` (rows of :attr:`digit_images`) and ``labels`` ``[B, k]``."""
        which, start, velocity = [], [], []
        for i in torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist():
            if not 0 <= i < self.num_clips:
                raise IndexError(f"clip {i} of {self.num_clips}")
            w, p, v = self.clip_params(i)
            which.append(w), start.append(p), velocity.append(v)
        k = self.num_digits
        rows = torch.from_numpy(np.array(which, dtype=np.int64).reshape(-1, k))
        start_t = torch.from_numpy(np.array(start, dtype=np.float64).reshape(-1, k, 2))
        velocity_t = torch.from_numpy(np.array(velocity, dtype=np.float64).reshape(-1, k, 2))
        frames, corners = render_clip(self.digit_images[rows], start_t, velocity_t, self.frames, self.size)
        return {"frames": frames, "corners": corners, "velocity": velocity_t, "start": start_t, "digits": rows,
                "labels": self.digit_labels[rows]}

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        c = self.clips(indices)
        x = (c["frames"].float() * 2.0 - 1.0)[:, None]
        labels = c["labels"]
        cond = Condition({"label": labels[:, 0].clone()}, {"label": label_kind()}) if self.conditional else None
        return Batch(x, DenseSpace(), cond, {"digits": labels})

    # ------------------------------------------------------------------ held-out digits
    def split(self, fraction: float, seed: int = 0) -> tuple["MovingDigits", "MovingDigits"]:
        """``(training clips, held-out clips)``: a seeded ``fraction`` of the digits is held out,
        and ``fraction`` of the clips are drawn from those digits only (stream ``2 * stream + 2``;
        training clips from the other digits, stream ``2 * stream + 1``). Both report this set's
        ``info()``."""
        n = len(self.digit_images)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
        k = min(n - 1, max(1, int(round(n * fraction))))
        held_clips = min(self.num_clips - 1, max(1, int(round(self.num_clips * fraction))))
        parts = []
        for rows, clips, stream in ((perm[k:], self.num_clips - held_clips, 2 * self.stream + 1),
                                    (perm[:k], held_clips, 2 * self.stream + 2)):
            rows = rows.sort().values
            parts.append(MovingDigits(self.digit_images[rows], self.digit_labels[rows], frames=self.frames,
                                      size=self.size, num_digits=self.num_digits, speed=self.speed,
                                      num_clips=clips, seed=self.seed, stream=stream,
                                      conditional=self.conditional, info=self._info))
        return parts[0], parts[1]


def check_moving_options(options: dict[str, Any]) -> None:
    """One DataError line for a Moving-MNIST option out of range."""
    frames, size, digit_size = options["frames"], options["size"], options["digit_size"]
    for name, value, lo in (("frames", frames, 2), ("size", size, 8), ("digit_size", digit_size, 4),
                            ("num_digits", options["num_digits"], 1), ("num_clips", options["num_clips"], 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise DataError(f"video data option {name} must be a whole number >= {lo}, got {value!r}")
    if digit_size > min(28, size - 1):
        raise DataError(f"video data option digit_size must be at most 28 and smaller than size ({size}), got {digit_size}")
    speed = options["speed"]
    ok = isinstance(speed, (list, tuple)) and len(speed) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in speed)
    if not ok or not 0 <= speed[0] <= speed[1]:
        raise DataError(f"video data option speed must be [lo, hi] pixels per frame with 0 <= lo <= hi, got {speed!r}")


def load_moving(options: dict[str, Any]) -> MovingDigits:
    """The bundled Moving-MNIST data set for the video domain's data ``options``."""
    check_moving_options(options)
    if options.get("conditional") and options["num_digits"] != 1:
        raise DataError("the label condition needs clips of one digit (data option num_digits 1); "
                        f"got num_digits {options['num_digits']}")
    digits, labels = bundled_digits(options["digit_size"])
    return MovingDigits(digits, labels, frames=options["frames"], size=options["size"],
                        num_digits=options["num_digits"], speed=options["speed"], num_clips=options["num_clips"],
                        seed=int(options.get("seed") or 0), conditional=bool(options.get("conditional")))
