"""Video metrics that need no downloaded network.

* **Per-frame FID** (``frame_fid``): the Frechet distance (the one of ``diffuse.core``) between
  feature sets of all frames of the samples and of the reference clips, on the image domain's
  LeNet (``diffuse.domains.image.bundled_lenet`` for grayscale frames; for other clips a LeNet
  trained on the reference frames' rotations, as the image domain does for unlabelled images).
  It scores how each frame looks, not how frames follow each other.
* **Identity** (``identity``): the fraction of clips in which every tracked digit keeps its class
  through the clip. The identity classifier (``features.digit_classifier``) reads each digit's
  crop in every frame where it is visible (``tracking``); the digit's class is the one of highest
  mean log-probability over those frames, and it is kept when no frame rules it out (gives it a
  probability below :data:`IDENTITY_TAU` = 0.05). ``identity_strict`` asks every frame's most
  likely class to be that class: a classifier's coin flips between, say, 4 and 9 on one frame of
  an ambiguous digit count against it, so real clips score 96-98 % there and 100 % on
  ``identity``. The threshold was chosen on clips of the training digits (real: 99.8 % kept; the
  second half swapped for a digit of another class: 1.5 % kept) and holds on clips of the
  held-out digits (100 % and 1.3 %; ``tests/test_video_metrics.py``).
* **Physics** (``physics_median_px``, ``physics_within_1px``): each digit's centroid track fitted
  with constant-velocity motion and elastic bounces off the frame (``tracking.fit_motion``); the
  median deviation of the visible frames' centroids from the fit, in pixels, and the fraction of
  them within 1 pixel. A drawn clip scores 0 and 1 exactly (to round-off).
* **Speed** (``speed_w1``): the 1-D Wasserstein distance between the fitted speeds of the
  samples' digits and of the reference clips' (pixels per frame): frozen or sluggish digits obey
  the motion rules (a digit at rest moves with constant velocity zero) but not the data's speeds.
* **FVD** (``fvd``; Unterthiner et al. 2018): the Frechet distance of I3D features of whole clips,
  only with a local I3D TorchScript file (data option ``i3d``; ``features.I3DFeatures``).
* **Prediction and interpolation** (``psnr``, ``ssim``, ``copy_last_frame``, ``linear_blend``):
  per-frame PSNR and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, ``K1 = 0.01``,
  ``K2 = 0.03``, data range 1) against the true frames, and the two baselines every video
  predictor must beat: repeat the last given frame, or blend linearly between the given frames
  around a gap.

Identity and physics read the Moving-MNIST geometry from ``data_info`` (``num_digits``,
``digit_size``, ``height``, ``speed``, ``centroid_range``): they exist for digit clips only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffuse.domains.image import bundled_lenet, extract_features, train_lenet

from .features import I3DFeatures, digit_classifier
from .tracking import Tracks, digit_crops, fit_motion, track

#: a frame rules out a class when the identity classifier gives it less than this probability
IDENTITY_TAU = 0.05

__all__ = ["IDENTITY_TAU", "frames_of", "frame_network", "frame_features", "motion_report", "wasserstein_1d", "psnr", "ssim",
           "copy_last_frame", "linear_blend", "is_digit_data", "clip_features"]


def is_digit_data(info: dict[str, Any]) -> bool:
    """Whether ``info`` describes Moving-MNIST clips (identity and physics apply)."""
    return all(k in info for k in ("num_digits", "digit_size", "centroid_range", "speed"))


def frames_of(clips: Tensor) -> Tensor:
    """``[B, C, T, H, W]`` -> the frames ``[B T, C, H, W]``."""
    b, c, t, h, w = clips.shape
    return clips.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def frame_network(info: dict[str, Any], reference_frames: Tensor | None = None):
    """The feature network of per-frame FID: the image domain's shipped LeNet for one channel,
    else a LeNet trained on rotations of ``reference_frames`` (``[N, C, H, W]`` in ``[-1, 1]``)."""
    if int(info.get("channels", 1)) == 1:
        return bundled_lenet()
    return train_lenet(reference_frames[:20000], None, steps=300)


def frame_features(net: Any, clips: Tensor) -> Tensor:
    """Features ``[B T, D]`` (float64) of every frame of ``clips`` in model space."""
    return extract_features(net, frames_of(clips.float().cpu()))


def clip_features(net: I3DFeatures, clips: Tensor, batch_size: int = 16) -> Tensor:
    """I3D features ``[B, D]`` (float64) of clips in model space, in batches."""
    return torch.cat([net.features(clips[i:i + batch_size]).double() for i in range(0, len(clips), batch_size)])


def _tracks(clips: Tensor, info: dict[str, Any]) -> Tracks:
    return track(clips, int(info["num_digits"]), int(info["digit_size"]))


def motion_report(clips: Tensor, info: dict[str, Any]) -> dict[str, Any]:
    """Identity, physics and the fitted speeds of digit clips (module docstring):
    ``{"identity", "identity_strict", "physics_median_px", "physics_within_1px", "speeds" [n], "kept" [B] bool,
    "deviation" [B, T, k] (nan where not visible)}``."""
    tr = _tracks(clips, info)
    b, t, k, _ = tr.centroids.shape
    s = int(info["digit_size"])
    # identity: no visible frame of a digit rules out the digit's class of the clip
    net = digit_classifier(s)
    crops = digit_crops(clips, tr, s).reshape(-1, 1, 28, 28)
    with torch.no_grad():
        logp = torch.cat([torch.log_softmax(net(c), 1) for c in crops.split(4096)]).double().reshape(b, t, k, -1)
    vis = tr.visible[..., None]
    consensus = (logp * vis).sum(1).argmax(-1)                               # [B, k]: highest mean log-prob
    p_cons = logp.exp().gather(3, consensus[:, None, :, None].expand(b, t, k, 1))[..., 0]
    kept = ((p_cons >= IDENTITY_TAU) | ~tr.visible).all(1).all(1)
    pred = logp.argmax(-1)
    strict = ((pred == consensus[:, None]) | ~tr.visible).all(1).all(1)
    # physics: per axis, per digit
    room = float(info["height"]) - s
    vmax = 1.5 * float(info["speed"][1]) + 0.5
    valid = tr.visible.permute(0, 2, 1).reshape(b * k, t)
    resid, vel = [], []
    for axis in range(2):
        pos = tr.centroids[..., axis].permute(0, 2, 1).reshape(b * k, t)
        room_a = float(info["height"] if axis == 0 else info["width"]) - s
        r, v = fit_motion(pos, valid & (valid.sum(1, keepdim=True) >= 3), room_a, tuple(info["centroid_range"][axis]),
                          vmax)
        resid.append(r)
        vel.append(v)
    dev = torch.sqrt(resid[0] ** 2 + resid[1] ** 2)
    fitted = valid & (valid.sum(1, keepdim=True) >= 3)
    d = dev[fitted]
    speeds = torch.sqrt(vel[0] ** 2 + vel[1] ** 2)[fitted.any(1)]
    deviation = torch.where(fitted, dev, torch.full_like(dev, math.nan)).reshape(b, k, t).permute(0, 2, 1)
    del room
    return {"identity": float(kept.double().mean()) if b else math.nan,
            "identity_strict": float(strict.double().mean()) if b else math.nan,
            "physics_median_px": float(d.median()) if len(d) else math.nan,
            "physics_within_1px": float((d <= 1.0).double().mean()) if len(d) else math.nan,
            "speeds": speeds, "kept": kept, "deviation": deviation}


def wasserstein_1d(a: Tensor, b: Tensor) -> float:
    """The 1-Wasserstein distance between the empirical distributions of ``a`` and ``b``
    (the integral of ``|F_a - F_b|``; exact for samples of any sizes)."""
    a, b = a.double().flatten().sort().values, b.double().flatten().sort().values
    if not len(a) or not len(b):
        return math.nan
    grid = torch.cat([a, b]).sort().values
    fa = torch.searchsorted(a, grid[:-1], right=True).double() / len(a)
    fb = torch.searchsorted(b, grid[:-1], right=True).double() / len(b)
    return float(((fa - fb).abs() * grid.diff()).sum())


# ---------------------------------------------------------------------------- prediction quality
def _unit(x: Tensor) -> Tensor:
    return ((x.double() + 1) / 2).clamp(0, 1)


def psnr(pred: Tensor, true: Tensor) -> Tensor:
    """PSNR (dB, data range 1) of each frame: ``[B, C, T, H, W]`` pairs in model space -> ``[B, T]``."""
    mse = (_unit(pred) - _unit(true)).square().mean((1, 3, 4))
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(pred: Tensor, true: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM (Wang et al. 2004; module docstring) of each frame, averaged over its pixels and
    channels: ``[B, C, T, H, W]`` pairs in model space -> ``[B, T]``."""
    b, c, t, h, w = pred.shape
    x, y = frames_of(_unit(pred)), frames_of(_unit(true))
    g = torch.exp(-(torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2 / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None]).expand(c, 1, window, window)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.pad(z, [window // 2] * 4, mode="reflect"), kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).reshape(b, t)


def copy_last_frame(clips: Tensor, given: int) -> Tensor:
    """The copy-last-frame prediction: frames ``given ..`` replaced by frame ``given - 1``."""
    out = clips.clone()
    out[:, :, given:] = clips[:, :, given - 1:given]
    return out


def linear_blend(clips: Tensor, start: int, stop: int) -> Tensor:
    """The linear-blend interpolation of the gap ``[start, stop)``: frame ``f`` is
    ``(1 - a) x_{start-1} + a x_stop`` with ``a = (f - start + 1) / (stop - start + 1)``."""
    out = clips.clone()
    before, after = clips[:, :, start - 1], clips[:, :, stop]
    for f in range(start, stop):
        a = (f - start + 1) / (stop - start + 1)
        out[:, :, f] = (1 - a) * before + a * after
    return out
