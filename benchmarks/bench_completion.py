"""Completion, editing and restoration, measured (the README's tables).

1. ``--gaussian``: exact truth. A correlated 4-D Gaussian with two coordinates known (2.5 sd in
   the tail); with the exact denoiser, the 2-Wasserstein distance between the completions and
   the closed-form conditional ``p(unknown | known)`` against RePaint resamplings, per sampler.
2. ``--image RUN``: held-out digits with their centre 14x14 box regenerated: FID / KID vs the
   held-out set, beside the originals (floor) and the box filled black / with noise; the
   known-region error.
3. ``--sr RUN``: a ``--condition lowres`` image run: PSNR / SSIM of 4x super-resolution
   (7x7 -> 28x28) against the high-resolution truth, beside bicubic upsampling.
4. ``--audio RUN``: held-out clips with a gap (0.1-0.2 s) filled: multi-resolution STFT and
   log-mel distances to the original, beside a silence-filled and a noise-filled gap.
5. ``--molecules RUN`` (or ``pretrained``, the shipped model): held-out molecules with their
   first half of atoms fixed and the rest generated (DDPM ``--mol-steps``, one pass, and with
   ``--mol-resample R`` also R RePaint resamplings of ``--mol-jump``-step blocks): valid &
   connected / stable shares, fragment kept (pairwise distances), beside unconditional samples of
   the same sizes and the originals.

    python benchmarks/bench_completion.py --gaussian --image runs/image --sr runs/sr \\
        --audio runs/audio --molecules runs/molecules [--num 64] [--device cpu]

Prints tables and writes ``benchmarks/results/bench_completion.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def _table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    keys = list(rows[0])
    print("  " + "  ".join(f"{k:>14}" for k in keys))
    for r in rows:
        print("  " + "  ".join(f"{v:>14.4f}" if isinstance(v, float) else f"{str(v):>14}" for v in r.values()))


# ---------------------------------------------------------------------------- 1. Gaussian
def bench_gaussian(n: int = 3000) -> list[dict]:
    from diffuse.core.sampling.completion import complete
    from diffuse.core.process.gaussian import GaussianMixture, gaussian_w2
    from diffuse.core.sampling.common import prior_sample
    from diffuse.core.sampling.grids import time_grid
    from diffuse.core.process.schedule import LinearBetaSchedule
    from diffuse.core.data.space import DenseSpace

    sched, space = LinearBetaSchedule(), DenseSpace()
    a = torch.tensor([[1.0, 0.9, 0.5, 0.2], [0.0, 0.4, 0.3, 0.1], [0.0, 0.0, 0.5, 0.3], [0.0, 0.0, 0.0, 0.4]],
                     dtype=torch.float64)
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 4), (a.T @ a)[None])
    known_idx = torch.tensor([True, False, True, False])
    values = torch.tensor([2.5, -1.0], dtype=torch.float64)
    mean, cov = gm.conditional(known_idx, values)
    known = torch.zeros(n, 4, dtype=torch.float64)
    known[:, known_idx] = values
    rows = []
    prior = gm.sample(n, torch.Generator().manual_seed(0))[:, ~known_idx]
    rows.append({"sampler": "prior", "steps": 0, "jump": 0, "resample": 0,
                 "w2": gaussian_w2(prior.mean(0), torch.cov(prior.T), mean, cov), "known_err": float("nan")})
    for sampler, steps, jump in (("ddpm", 100, 5), ("ddim", 100, 5), ("ddpm", 250, 5)):
        for r in (1, 2, 4, 8, 16):
            g = torch.Generator().manual_seed(0)
            x = prior_sample(sched, space, known, generator=g)
            out = complete(sampler, gm.denoiser(sched), x, time_grid(sched, steps), known=known,
                           mask=known_idx.expand(n, 4), schedule=sched, space=space, generator=g,
                           jump_length=jump, resample=r)
            u = out[:, ~known_idx]
            rows.append({"sampler": sampler, "steps": steps, "jump": jump, "resample": r,
                         "w2": gaussian_w2(u.mean(0), torch.cov(u.T), mean, cov),
                         "known_err": float((out[:, known_idx] - values).abs().max())})
    _table(f"Gaussian conditioning ({n} completions): W2 to the closed-form conditional", rows)
    return rows


# ---------------------------------------------------------------------------- 2. image inpainting
def _held_out(model, num: int):
    ref = model.reference_data()
    idx = torch.arange(min(num, len(ref)))
    return ref, ref.batch(idx, torch.Generator().manual_seed(0))


def bench_image(run: str, num: int, device: str) -> dict:
    import diffuse.api as api
    from diffuse.core.data.domain import Batch

    model = api.load(run, device=device)
    ref, batch = _held_out(model, num)
    x = batch.x
    known = torch.ones(1, 1, 28, 28, dtype=torch.bool)
    known[..., 7:21, 7:21] = False
    out: dict = {}
    t0 = time.time()
    rows = []
    for r in (1, 2):
        samples = model.complete((Batch(x, batch.space), known.expand(len(x), 1, 28, 28)), 1, sampler="ddpm",
                                 steps=50, seed=0, jump_length=10, resample=r)
        m = model.domain.metrics(samples, ref)
        err = float((samples.x - x).abs()[known.expand_as(x)].max())
        rows.append({"filled by": f"ddpm50 R={r}", "fid": m["fid"], "kid": m["kid"], "known_err": err})
    black = torch.where(known, x, torch.full_like(x, -1.0))
    noise = torch.where(known, x, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1))
    for name, imgs in (("originals", x), ("black box", black), ("noise box", noise)):
        m = model.domain.metrics(Batch(imgs, batch.space), ref)
        rows.append({"filled by": name, "fid": m["fid"], "kid": m["kid"], "known_err": 0.0})
    _table(f"Image inpainting: {len(x)} held-out digits, centre 14x14 regenerated; FID / KID vs the held-out set", rows)
    out["rows"], out["seconds"] = rows, time.time() - t0
    return out


# ---------------------------------------------------------------------------- 3. super-resolution
def _ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03),
    images in [0, 1], ``[B, C, H, W]``; 'same' padding by reflection."""
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = (g[:, None] * g[None, :]) / g.sum() ** 2
    c = a.shape[1]
    w = w.expand(c, 1, 11, 11).to(a.dtype)

    def filt(z):
        return F.conv2d(F.pad(z, (5, 5, 5, 5), mode="reflect"), w, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    saa, sbb, sab = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2, filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return s.flatten(1).mean(1)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(1.0 / mse)


def bench_sr(run: str, num: int, device: str) -> list[dict]:
    import diffuse.api as api
    from diffuse.domains.image.inpaint import lowres_pair

    model = api.load(run, device=device)
    factor = int(model.data_info["lowres"])
    _, batch = _held_out(model, num)
    x = batch.x
    _, up = lowres_pair(x, factor)
    rows = []
    to01 = lambda z: ((z.clamp(-1, 1) + 1) / 2).double()
    for name, steps in (("bicubic", None), ("SR3 ddim50", 50), ("SR3 ddpm100", 100)):
        if steps is None:
            y = up
        else:
            sampler = "ddim" if "ddim" in name else "ddpm"
            y = model.sample(len(x), cond={"lowres": up}, sampler=sampler, steps=steps, seed=0).x
        rows.append({"method": name, "psnr_db": float(_psnr(to01(y), to01(x)).mean()),
                     "ssim": float(_ssim(to01(y), to01(x)).mean())})
    _table(f"Super-resolution {factor}x ({28 // factor}x{28 // factor} -> 28x28), {len(x)} held-out digits", rows)
    return rows


# ---------------------------------------------------------------------------- 4. audio gap filling
def bench_audio(run: str, num: int, device: str, gap: tuple[float, float] = (0.1, 0.2)) -> list[dict]:
    import diffuse.api as api
    from diffuse.core.data.domain import Batch
    from diffuse.domains.audio.metrics import log_mel_l1, multi_resolution_stft

    model = api.load(run, device=device)
    rate = int(model.data_info["sample_rate"])
    _, batch = _held_out(model, num)
    x = batch.x
    a, b = int(gap[0] * rate), int(gap[1] * rate)
    known = torch.ones(1, 1, x.shape[-1], dtype=torch.bool)
    known[..., a:b] = False
    mask = known.expand(len(x), 1, x.shape[-1])
    rows = []
    rms = x[..., :a].pow(2).mean((1, 2), keepdim=True).sqrt()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * rms
    fills = {"silence": torch.where(mask, x, torch.zeros_like(x)), "noise (ctx RMS)": torch.where(mask, x, noise)}
    for r in (1, 3):
        s = model.complete((Batch(x, batch.space), mask), 1, sampler="ddpm", steps=50, seed=0, jump_length=10,
                           resample=r)
        fills[f"model R={r}"] = s.x
    for name, y in fills.items():
        st = multi_resolution_stft(y, x)
        rows.append({"gap filled by": name, "mr_stft": float(st["total"].mean()),
                     "log_mel_l1": float(log_mel_l1(y, x, rate).mean()),
                     "known_err": float((y - x).abs()[mask].max())})
    _table(f"Audio gap filling: {len(x)} held-out clips, gap {gap[0]}-{gap[1]} s; distance to the original", rows)
    return rows


# ---------------------------------------------------------------------------- 5. molecules
def bench_molecules(run: str, num: int, device: str, steps: int = 500, resample: int = 1,
                    jump_length: int = 10) -> list[dict]:
    import numpy as np

    import diffuse.api as api
    from diffuse.core.data.domain import Batch
    from diffuse.domains.molecules.chem import validity_table
    from diffuse.domains.molecules.domain import analyze_samples

    model = api.load_pretrained("molecules", device=device) if run == "pretrained" else api.load(run, device=device)
    _, batch = _held_out(model, num)
    space = batch.space
    order = torch.argsort(space.batch, stable=True)
    rank = torch.empty_like(space.batch)
    starts = torch.cumsum(space.counts, 0) - space.counts
    rank[order] = torch.arange(len(order)) - starts[space.batch[order]]
    fixed = rank < (space.counts[space.batch] // 2)
    mask = fixed[:, None]
    rows = []
    _, ref_reports = analyze_samples(batch, model.data_info)
    rows.append({"molecules": "originals", **_mol_row(validity_table(ref_reports)), "frag_dist_err": 0.0})
    for r in sorted({1, resample}):
        samples = model.complete((Batch(batch.x, space, None, batch.extras), mask), 1, sampler="ddpm", steps=steps,
                                 seed=0, jump_length=1 if r == 1 else jump_length, resample=r)
        _, reports = analyze_samples(samples, model.data_info)
        err = 0.0
        for g in range(space.num_graphs):
            sel = fixed & (space.batch == g)
            d0 = torch.cdist(batch.x[sel, :3].double(), batch.x[sel, :3].double())
            d1 = torch.cdist(samples.x[sel, :3].double(), samples.x[sel, :3].double())
            err = max(err, float((d0 - d1).abs().max()))
        label = "completed" if r == 1 else f"completed, R={r} J={jump_length}"
        rows.append({"molecules": label, **_mol_row(validity_table(reports)), "frag_dist_err": err})
    free = model.sample(space.num_graphs, sampler="ddpm", steps=steps, seed=0, structure=space.counts.tolist())
    _, free_reports = analyze_samples(free, model.data_info)
    rows.append({"molecules": "unconditional", **_mol_row(validity_table(free_reports)), "frag_dist_err": float("nan")})
    _table(f"Molecule completion: {space.num_graphs} held-out molecules, first half of the atoms fixed", rows)
    return rows


def _mol_row(t: dict) -> dict:
    return {"valid_connected": t["valid_connected"], "mol_stable": t["mol_stability"],
            "atom_stable": t["atom_stability"], "valid": t["validity"], "connected": t["connected"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gaussian", action="store_true")
    p.add_argument("--image")
    p.add_argument("--sr")
    p.add_argument("--audio")
    p.add_argument("--molecules")
    p.add_argument("--mol-steps", type=int, default=500, help="DDPM steps of the molecule rows")
    p.add_argument("--mol-resample", type=int, default=1, help="also a molecule row with R RePaint resamplings")
    p.add_argument("--mol-jump", type=int, default=10, help="the jump length of that row")
    p.add_argument("--num", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(RESULTS / "bench_completion.json"))
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    record: dict = {}
    path = Path(args.out)
    if path.exists():
        record = json.loads(path.read_text())
    if args.gaussian:
        record["gaussian"] = bench_gaussian()
    if args.image:
        record["image"] = bench_image(args.image, args.num, args.device)
    if args.sr:
        record["sr"] = bench_sr(args.sr, args.num, args.device)
    if args.audio:
        record["audio"] = bench_audio(args.audio, min(args.num, 16), args.device)
    if args.molecules:
        key = "molecules" if args.molecules != "pretrained" else "molecules_pretrained"
        record[key] = bench_molecules(args.molecules, min(args.num, 32), args.device, args.mol_steps,
                                      args.mol_resample, args.mol_jump)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
