"""Tracking digits through clips and fitting the rules of their motion: what the identity and
physics metrics (``metrics.py``) measure on.

* :func:`track`: each digit's intensity centroid in every frame. Ink is the frame in ``[0, 1]``
  less its median (the background; a digit covers far less than half of a frame), clipped at 0,
  so on a drawn clip the centroid is exactly the digit's. One digit: the centroid of the frame.
  Several: weighted k-means of the ink pixels (Lloyd's iterations; the first frame started from
  the principal axis of the ink, later frames from the previous centroids moved by the last
  velocity), clusters matched to tracks by the permutation nearest the tracks' predictions. A
  frame where two centroids lie closer than ``0.85 * digit_size`` is *occluded* (the digits
  overlap and their centroids are not their own): it is left out of the fit and the crops.
* :func:`digit_crops`: a ``28 x 28`` crop of each digit, centred on its centroid and scaled by
  ``28 / digit_size`` (bilinear), the other digits' pixels removed: MNIST's own framing (digits
  centred by their centre of mass), for the image domain's LeNet.
* :func:`fit_motion`: per track and axis, the best constant-velocity motion with elastic bounces,
  ``c_t = lo + tri(p0 + v t)`` with walls ``lo`` and ``lo + room`` (``tri`` folds into
  ``[0, room]``, ``room = size - digit_size``; ``lo`` is where the centroid sits when the digit's
  box touches the wall, limited to the range real digits' centroids span inside their box, so a
  bounce in mid-frame cannot be explained away). A grid search over ``(p0, v)`` with the best
  ``lo`` for each (the mean residual, clipped to its range), finer grids around the best few
  points, then Gauss-Newton rounds from each: with the folds fixed, the model is linear in
  ``(lo, p0, v)`` (least squares); the best wins. Returns the per-frame
  deviation (pixels) and the fitted velocity. A drawn clip's deviation is 0 to round-off.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Tracks", "ink", "track", "digit_crops", "fit_motion", "OCCLUSION"]

#: two centroids closer than this many digit sizes mark an occluded frame
OCCLUSION = 0.85
#: grid points of the motion fit refined further
STARTS = 4


@dataclass
class Tracks:
    """``centroids [B, T, k, 2]`` (row, column), ``visible [B, T, k]`` (found and not occluded) and
    ``owner [B, T, H, W]`` (the track each pixel's ink belongs to; -1: none)."""

    centroids: Tensor
    visible: Tensor
    owner: Tensor


def ink(clips: Tensor) -> Tensor:
    """Model-space clips ``[B, 1, T, H, W]`` or ``[B, T, H, W]`` in ``[-1, 1]`` -> ink ``[B, T, H, W]``:
    intensity in ``[0, 1]`` less each frame's median, clipped at 0 (float64)."""
    x = clips.detach().double().cpu()
    if x.ndim == 5:
        x = x.mean(1)                     # channels to gray
    v = ((x + 1) / 2).clamp(0, 1)
    med = v.flatten(2).median(-1).values[..., None, None]
    return (v - med).clamp_min(0)


def _centroid(w: Tensor, ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
    mass = w.sum((-2, -1))
    c = torch.stack([(w * ys).sum((-2, -1)), (w * xs).sum((-2, -1))], -1) / mass.clamp_min(1e-12)[..., None]
    return c, mass


def track(clips: Tensor, num_digits: int, digit_size: int, iterations: int = 8) -> Tracks:
    """Each digit's centroid through ``clips`` (model space; see the module docstring)."""
    w = ink(clips)
    b, t, h, wd = w.shape
    ys = torch.arange(h, dtype=w.dtype)[:, None].expand(h, wd)
    xs = torch.arange(wd, dtype=w.dtype)[None, :].expand(h, wd)
    if num_digits == 1:
        c, mass = _centroid(w, ys, xs)
        visible = (mass > 1e-6)[..., None]
        owner = torch.where(w > 0, 0, -1)
        return Tracks(c[:, :, None], visible, owner)
    k = num_digits
    pix = torch.stack([ys, xs], -1).reshape(1, h * wd, 2)                  # [1, P, 2]
    cents = torch.zeros(b, t, k, 2, dtype=w.dtype)
    owner = torch.full((b, t, h, wd), -1, dtype=torch.long)
    masses = torch.zeros(b, t, k, dtype=w.dtype)
    prev = vel = None
    for f in range(t):
        wf = w[:, f].reshape(b, -1)                                          # [B, P]
        if prev is None:                                                     # principal-axis start
            mu, _ = _centroid(w[:, f], ys, xs)
            d = pix - mu[:, None]
            cov = torch.einsum("bp,bpi,bpj->bij", wf, d, d) / wf.sum(1).clamp_min(1e-12)[:, None, None]
            evals, evecs = torch.linalg.eigh(cov + 1e-9 * torch.eye(2, dtype=w.dtype))
            axis = evecs[..., -1] * evals[..., -1:].clamp_min(1e-6).sqrt()
            offs = torch.linspace(-1, 1, k, dtype=w.dtype)
            centers = mu[:, None] + offs[None, :, None] * axis[:, None]
        else:
            centers = prev + (vel if vel is not None else 0)
        pred = centers.clone()
        for _ in range(iterations):
            dist = torch.cdist(pix.expand(b, -1, -1), centers)               # [B, P, k]
            assign = dist.argmin(-1)
            onehot = F.one_hot(assign, k).to(w.dtype) * wf[..., None]       # [B, P, k]
            m = onehot.sum(1)                                                # [B, k]
            new = torch.einsum("bpk,pi->bki", onehot, pix[0]) / m.clamp_min(1e-12)[..., None]
            centers = torch.where(m[..., None] > 1e-9, new, centers)
        # match clusters to tracks: the permutation nearest the prediction
        best = None
        for perm in itertools.permutations(range(k)):
            cost = (centers[:, list(perm)] - pred).norm(dim=-1).sum(-1)
            best = (cost, torch.tensor(perm).expand(b, k).clone()) if best is None else (
                torch.minimum(best[0], cost), torch.where((cost < best[0])[:, None], torch.tensor(perm), best[1]))
        order = best[1]
        centers = torch.gather(centers, 1, order[..., None].expand(b, k, 2))
        m = torch.gather(m, 1, order)
        inverse = torch.argsort(order, 1)
        assign = torch.gather(inverse, 1, assign)
        cents[:, f], masses[:, f] = centers, m
        owner[:, f] = torch.where(wf > 0, assign, -1).reshape(b, h, wd)
        if prev is not None:
            vel = centers - prev
        prev = centers
    visible = masses > 1e-6
    sep = torch.cdist(cents.reshape(b * t, k, 2), cents.reshape(b * t, k, 2)).reshape(b, t, k, k)
    sep = sep + torch.eye(k, dtype=sep.dtype) * 1e9
    visible &= sep.amin(-1) >= OCCLUSION * digit_size
    return Tracks(cents, visible, owner)


def digit_crops(clips: Tensor, tracks: Tracks, digit_size: int, out: int = 28) -> Tensor:
    """``[B, T, k, 1, out, out]`` crops in ``[-1, 1]`` of each tracked digit (module docstring)."""
    w = ink(clips)                                                           # [B, T, H, W]
    b, t, h, wd = w.shape
    k = tracks.centroids.shape[2]
    own = tracks.owner[:, :, None] == torch.arange(k)[None, None, :, None, None]   # [B, T, k, H, W]
    layers = (w[:, :, None] * own).reshape(b * t * k, 1, h, wd)
    scale = digit_size / out
    step = (torch.arange(out, dtype=w.dtype) - (out - 1) / 2) * scale         # offsets from the centroid
    c = tracks.centroids.reshape(b * t * k, 2)
    rows = c[:, 0, None] + step[None]                                        # [N, out]
    cols = c[:, 1, None] + step[None]
    # grid_sample's normalised coordinates (align_corners=True: -1 and 1 are the outer pixel centres)
    gy = (2 * rows / (h - 1) - 1)[:, :, None].expand(-1, out, out)
    gx = (2 * cols / (wd - 1) - 1)[:, None, :].expand(-1, out, out)
    grid = torch.stack([gx, gy], -1)
    crops = F.grid_sample(layers, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return (crops * 2 - 1).float().reshape(b, t, k, 1, out, out)


def _fold(u: Tensor, room: float) -> tuple[Tensor, Tensor, Tensor]:
    """``tri(u)`` and its local form ``tri(u) = sign * u + offset``."""
    r = u % (2 * room)
    m = torch.div(u - r, 2 * room, rounding_mode="floor")
    up = r <= room
    sign = torch.where(up, 1.0, -1.0).to(u.dtype)
    offset = torch.where(up, -2 * room * m, 2 * room * (m + 1))
    return sign * u + offset, sign, offset


def fit_motion(positions: Tensor, valid: Tensor, room: float, lo_range: tuple[float, float], vmax: float,
               grid_step: float = 1.0, levels: int = 2, rounds: int = 4) -> tuple[Tensor, Tensor]:
    """Fit ``c_t = lo + tri(p0 + v t)`` to each 1-D track (module docstring).

    A grid over ``p0 in [0, 2 room)`` (step ``grid_step``) and ``|v| <= vmax`` (step
    ``grid_step / 5``), each with its best ``lo``; around each of the :data:`STARTS` best points
    ``levels`` finer grids (7 x 7 points, 3x finer each), then ``rounds`` of Gauss-Newton with the
    folds fixed (the least-squares solution in ``(lo, p0, v)``, and in ``(p0, v)`` at the current
    ``lo``, which decides a track without a bounce, where ``lo`` and ``p0`` trade off), each kept
    only if it lowers the error; the best start wins.

    Args:
        positions: ``[N, T]`` centroid coordinates along one axis; ``valid [N, T]`` which to use.
        room: ``size - digit_size``; ``lo_range``: the allowed ``lo``; ``vmax``: the largest speed tried.
    Returns:
        ``(residual [N, T], velocity [N])``: ``positions - fit`` (0 where not valid) and ``v``.
    """
    n, t = positions.shape
    S = STARTS
    ts = torch.arange(t, dtype=torch.float64)
    lo_a, lo_b = float(lo_range[0]), float(lo_range[1])
    x0 = torch.where(valid, positions.double(), torch.zeros(n, t, dtype=torch.float64))
    w0 = valid.double()

    def errors(x: Tensor, wv: Tensor, p0: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(best lo, squared error)`` of candidates ``p0, v [m, G]`` for the tracks ``x [m, T]``."""
        tri = _fold(p0[..., None] + v[..., None] * ts, room)[0]             # [m, G, T]
        resid = x[:, None] - tri
        count = wv.sum(1).clamp_min(1)[:, None]
        lo = ((resid * wv[:, None]).sum(-1) / count).clamp(lo_a, lo_b)
        return lo, (((resid - lo[..., None]) ** 2) * wv[:, None]).sum(-1)

    p0s = torch.arange(0.0, 2 * room, grid_step, dtype=torch.float64)
    vs = torch.arange(-vmax, vmax + 1e-9, grid_step / 5, dtype=torch.float64)
    cand = torch.cartesian_prod(p0s, vs)                                     # [G, 2]
    best = torch.zeros(n, S, 2, dtype=torch.float64)
    for s in range(0, n, 256):                                               # chunks of tracks: bounded memory
        sl = slice(s, s + 256)
        _, err = errors(x0[sl], w0[sl], cand[None, :, 0], cand[None, :, 1])
        best[sl] = cand[err.topk(S, 1, largest=False).indices]
    # every start as a track of its own from here: [n S]
    x, wv, best = x0.repeat_interleave(S, 0), w0.repeat_interleave(S, 0), best.reshape(n * S, 2)
    m = n * S
    local = torch.cartesian_prod(torch.linspace(-1, 1, 7, dtype=torch.float64),
                                 torch.linspace(-1, 1, 7, dtype=torch.float64))                  # [49, 2]
    step = torch.tensor([grid_step, grid_step / 5], dtype=torch.float64) / 2
    for _ in range(levels):
        c = best[:, None] + local[None] * step                               # [m, 49, 2]
        _, err = errors(x, wv, c[..., 0], c[..., 1])
        best = c[torch.arange(m), err.argmin(1)]
        step = step / 3
    p0, v = best[:, 0], best[:, 1]
    lo, err = (a[:, 0] for a in errors(x, wv, p0[:, None], v[:, None]))
    for _ in range(rounds):                   # Gauss-Newton: folds fixed, the model is linear in (lo, p0, v)
        _, sign, offset = _fold(p0[:, None] + v[:, None] * ts, room)
        design = torch.stack([torch.ones_like(sign), sign, sign * ts], -1) * wv[..., None]     # [m, T, 3]
        target = ((x - offset) * wv)[..., None]
        joint = torch.linalg.lstsq(design, target, driver="gelsd").solution[..., 0]
        fixed = torch.linalg.lstsq(design[..., 1:], target - lo[:, None, None] * wv[..., None],
                                   driver="gelsd").solution[..., 0]
        for p0_c, v_c in ((joint[:, 1], joint[:, 2]), (fixed[:, 0], fixed[:, 1])):
            lo_c, err_c = (a[:, 0] for a in errors(x, wv, p0_c[:, None], v_c[:, None]))
            better = err_c < err
            p0, v = torch.where(better, p0_c, p0), torch.where(better, v_c, v)
            lo, err = torch.where(better, lo_c, lo), torch.where(better, err_c, err)
    pick = err.reshape(n, S).argmin(1) + torch.arange(n) * S
    lo, p0, v = lo[pick], p0[pick], v[pick]
    fit = lo[:, None] + _fold(p0[:, None] + v[:, None] * ts, room)[0]
    return (x0 - fit) * w0, v
