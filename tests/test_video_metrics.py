"""Video metrics against truths no one chose: real clips score perfect identity and zero physics
deviation; each corruption (shuffled frames, frozen digits, swapped identities, blur) is caught
by its own metric; the motion fit, Wasserstein distance, SSIM and the baselines are exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffuse.core import DataError, frechet_from_features
from diffuse.domains.video.features import I3DFeatures
from diffuse.domains.video.metrics import (copy_last_frame, frame_features, frame_network, linear_blend, motion_report,
                                           psnr, ssim, wasserstein_1d)
from diffuse.domains.video.moving import fold, load_moving, render_clip
from diffuse.domains.video.tracking import fit_motion

pytestmark = pytest.mark.usefixtures("one_thread")

N = 96


def _data(num_digits: int):
    ds = load_moving(dict(frames=10, size=32, digit_size=14, num_digits=num_digits, speed=[1.0, 2.5],
                          num_clips=4000, seed=0, conditional=False))
    return ds, ds.split(0.1, seed=0)[1]                                      # clips of held-out digits


@pytest.fixture(scope="module")
def held():
    ds, part = _data(1)
    c = part.clips(torch.arange(N))
    return ds.info(), part, c, (c["frames"][:, None] * 2 - 1).float()


@pytest.fixture(scope="module")
def real_report(held):
    info, _, _, x = held
    return motion_report(x, info)


def test_real_clips_keep_identity_and_obey_physics(real_report):
    assert real_report["identity"] == 1.0
    assert real_report["identity_strict"] >= 0.9
    assert real_report["physics_median_px"] < 1e-4          # float32 frames: round-off only
    assert real_report["physics_within_1px"] == 1.0


def test_the_fitted_speeds_are_the_drawn_ones(held, real_report):
    _, _, c, _ = held
    true = c["velocity"][:, 0].norm(dim=-1)
    assert torch.allclose(real_report["speeds"], true, atol=1e-5)


def test_shuffled_frames_break_physics_only(held, real_report):
    info, _, _, x = held
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([clip[:, torch.randperm(10, generator=g)] for clip in x])
    rep = motion_report(shuffled, info)
    assert rep["physics_median_px"] > 1.5 and rep["physics_within_1px"] < 0.5
    assert rep["identity"] == 1.0


def test_frozen_digits_are_caught_by_speed(held, real_report):
    info, part, _, x = held
    frozen = x[:, :, :1].expand_as(x).contiguous()
    rep = motion_report(frozen, info)
    other = motion_report((part.clips(torch.arange(N, 2 * N))["frames"][:, None] * 2 - 1).float(), info)
    assert wasserstein_1d(rep["speeds"], real_report["speeds"]) > 1.0
    assert wasserstein_1d(other["speeds"], real_report["speeds"]) < 0.2
    assert rep["identity"] == 1.0 and rep["physics_median_px"] < 1e-3   # a resting digit obeys the rules


def test_swapped_identities_are_caught_by_identity(held):
    """The second half of each clip shows a digit of another class on the same path."""
    info, part, c, x = held
    labels = part.digit_labels
    other = torch.arange(N) * 7 % len(labels)
    for i in range(N):
        while labels[other[i]] == c["labels"][i, 0]:
            other[i] = (other[i] + 1) % len(labels)
    frames, _ = render_clip(part.digit_images[other][:, None], c["start"], c["velocity"], 10, 32)
    swapped = x.clone()
    swapped[:, 0, 5:] = (frames[:, 5:] * 2 - 1).float()
    rep = motion_report(swapped, info)
    assert rep["identity"] < 0.1 and rep["identity_strict"] < 0.05


def test_two_digit_clips_are_tracked():
    ds, part = _data(2)
    x = (part.clips(torch.arange(48))["frames"][:, None] * 2 - 1).float()
    rep = motion_report(x, ds.info())
    assert rep["physics_median_px"] < 0.05 and rep["physics_within_1px"] > 0.9
    assert rep["identity"] >= 0.9


def test_per_frame_fid_sees_blur(held):
    info, part, _, x = held
    net = frame_network(info)
    ref = frame_features(net, (part.clips(torch.arange(N, 3 * N))["frames"][:, None] * 2 - 1).float())
    real = frechet_from_features(frame_features(net, x), ref)
    blurred = torch.nn.functional.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1))
    blur = frechet_from_features(frame_features(net, blurred), ref)
    noisy = frechet_from_features(frame_features(net, (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)), ref)
    assert blur > 3 * real and noisy > 3 * real


# ------------------------------------------------------------------------------ exact pieces
def test_the_motion_fit_recovers_folded_lines_exactly():
    g = torch.Generator().manual_seed(0)
    n, t, room = 300, 16, 18.0
    p0 = torch.rand(n, generator=g, dtype=torch.float64) * room
    v = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 3
    lo = 6.5 + torch.rand(n, generator=g, dtype=torch.float64) * 0.5
    pos = lo[:, None] + fold(p0[:, None] + v[:, None] * torch.arange(t, dtype=torch.float64), room)
    resid, vel = fit_motion(pos, torch.ones(n, t, dtype=torch.bool), room, (6.5, 7.0), vmax=4.0)
    assert float(resid.abs().max()) < 1e-8
    assert torch.allclose(vel.abs(), v.abs(), atol=1e-8)
    # a bounce in mid-frame is not elastic motion off the frame's walls
    bent = 6.7 + torch.cat([torch.arange(8.0), 7 - torch.arange(8.0)]).double() * 1.5
    r, _ = fit_motion(bent[None], torch.ones(1, 16, dtype=torch.bool), room, (6.5, 7.0), vmax=4.0)
    assert float(r.abs().max()) > 1.0


def test_wasserstein_matches_scipy():
    from scipy.stats import wasserstein_distance
    g = np.random.default_rng(0)
    a, b = g.normal(size=37), g.exponential(size=53)
    assert wasserstein_1d(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(wasserstein_distance(a, b), rel=1e-12)


def test_psnr_ssim_and_the_baselines():
    from scipy.ndimage import correlate
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 5, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    assert torch.allclose(ssim(x, x), torch.ones(2, 5, dtype=torch.float64))
    mse = (((x + 1) / 2 - (y + 1) / 2) ** 2).mean((1, 3, 4))
    assert torch.allclose(psnr(y, x), -10 * torch.log10(mse))
    # SSIM against the formula with scipy's filter (Gaussian window 11, sigma 1.5, mirrored edges)
    w = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2))
    k = np.outer(w, w) / np.outer(w, w).sum()
    a, b = ((x[0, 0, 2] + 1) / 2).numpy(), ((y[0, 0, 2] + 1) / 2).numpy()
    f = lambda z: correlate(z, k, mode="mirror")  # noqa: E731
    ma, mb = f(a), f(b)
    va, vb, cab = f(a * a) - ma ** 2, f(b * b) - mb ** 2, f(a * b) - ma * mb
    ref = ((2 * ma * mb + 1e-4) * (2 * cab + 9e-4) / ((ma ** 2 + mb ** 2 + 1e-4) * (va + vb + 9e-4))).mean()
    assert float(ssim(y, x)[0, 2]) == pytest.approx(ref, rel=1e-10)
    last = copy_last_frame(x, 3)
    assert torch.equal(last[:, :, 3], x[:, :, 2]) and torch.equal(last[:, :, :3], x[:, :, :3])
    blend = linear_blend(x, 1, 4)
    assert torch.allclose(blend[:, :, 2], (x[:, :, 0] + x[:, :, 4]) / 2) and torch.equal(blend[:, :, 4], x[:, :, 4])


def test_fvd_reads_a_local_torchscript_network(tmp_path):
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3, 4))
    path = tmp_path / "i3d.pt"
    torch.jit.script(Tiny()).save(str(path))
    net = I3DFeatures(path)
    clips = torch.rand(3, 1, 4, 8, 8) * 2 - 1
    f = net.features(clips, size=16)
    assert f.shape == (3, 3) and torch.allclose(f[:, 0], f[:, 2])
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    with pytest.raises(DataError, match="cannot load as a TorchScript I3D"):
        I3DFeatures(tmp_path / "bad.pt")
    assert math.isfinite(frechet_from_features(f.double().repeat(2, 1) + torch.randn(6, 3).double(),
                                               f.double().repeat(2, 1)))
