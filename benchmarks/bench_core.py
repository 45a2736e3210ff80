"""Core sampler benchmarks.

1. The samplers' own cost per step with the network excluded: the denoiser returns precomputed
   tensors, so only the sampler's arithmetic (coefficients, updates, noise) is timed; beside it the
   floors of that arithmetic (one ``a*x0 + b*eps`` and one ``randn`` of the batch).
2. Sample quality against the number of steps for the exact Gaussian-mixture denoiser
   (core/gaussian.py): the energy distance of DDPM / DDIM samples to a true sample, in units of
   the noise floor (the mean distance between two independent true samples of the same size).

    python benchmarks/bench_core.py [--device cpu|cuda] [--quick] [--threads N]

Prints tables and writes ``benchmarks/results/bench_core_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.process.parameterization import Prediction
from diffuse.core.sampling.ancestral import ddim, ddpm
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.core.process.schedule import LinearBetaSchedule
from diffuse.core.data.space import DenseSpace, per_sample_generators

RESULTS = Path(__file__).resolve().parent / "results"
SCHED = LinearBetaSchedule()
SPACE = DenseSpace()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def _row(name: str, shape, times: list[float], per: int) -> dict:
    us = [t / per * 1e6 for t in times]
    return {"case": name, "shape": list(shape), "us_per_step_median": statistics.median(us),
            "us_per_step_min": min(us), "repeats": len(us)}


# ------------------------------------------------------------------ 1. overhead per step
def bench_overhead(device: torch.device, quick: bool) -> list[dict]:
    steps, repeats = (20, 3) if quick else (50, 7)
    # "1 point" shows the fixed per-step cost (coefficients, bookkeeping) with almost no arithmetic
    shapes = {"points 20000x8": (20000, 8), "images 64x3x32x32": (64, 3, 32, 32), "1 point x8": (1, 8)}
    grid = time_grid(SCHED, steps)
    rows = []
    for label, shape in shapes.items():
        g = torch.Generator(device=device).manual_seed(0)
        x0 = torch.randn(shape, generator=g, device=device)
        eps = torch.randn(shape, generator=g, device=device)
        pred = Prediction(x0, eps)

        def const(x, t):                    # "network" that costs nothing: precomputed outputs
            return pred

        def run(sampler, **kw):
            return lambda: sampler(const, x0, grid, schedule=SCHED, space=SPACE,
                                   generator=torch.Generator(device=device).manual_seed(1), **kw)

        def axpby():
            for _ in range(steps):
                y = 0.5 * x0 + 0.3 * eps  # noqa: F841  (freed each step, as in the sampler)

        def randn():
            for _ in range(steps):
                y = torch.randn(shape, generator=g, device=device)  # noqa: F841

        rows.append(_row(f"{label}: floor a*x0 + b*eps", shape, _times(axpby, device, repeats), steps))
        rows.append(_row(f"{label}: floor randn", shape, _times(randn, device, repeats), steps))
        rows.append(_row(f"{label}: ddim eta=0", shape, _times(run(ddim), device, repeats), steps))
        rows.append(_row(f"{label}: ddim eta=1", shape, _times(run(ddim, eta=1.0), device, repeats), steps))
        rows.append(_row(f"{label}: ddpm", shape, _times(run(ddpm), device, repeats), steps))
        # the batch-size-independent mode: one generator (and one randn call) per sample
        few = time_grid(SCHED, 2 if quick else 5)
        n = shape[0]

        gens = per_sample_generators(0, n, device=device)          # made once, outside the timing

        def per_sample():
            ddpm(const, x0, few, schedule=SCHED, space=SPACE, generator=gens)

        rows.append(_row(f"{label}: ddpm, per-sample generators", shape,
                         _times(per_sample, device, 1 if quick else 3), len(few) - 1))
    return rows


# ------------------------------------------------------------------ 2. quality vs steps
def stratified_sample(gm: GaussianMixture, n: int, seed: int) -> torch.Tensor:
    """A true sample with exactly ``round(w_k n)`` points from component ``k``: without the binomial
    fluctuation of the component counts, which otherwise dominates the energy distance's noise."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.round(gm.weights * n).long()
    counts[-1] = n - counts[:-1].sum()
    chol = torch.linalg.cholesky(gm.covs)
    parts = [gm.means[k] + torch.randn(int(c), gm.D, generator=g, dtype=torch.float64) @ chol[k].T
             for k, c in enumerate(counts)]
    return torch.cat(parts)[torch.randperm(n, generator=g)]


def bench_quality(device: torch.device, quick: bool) -> dict:
    n = 1000 if quick else 3000
    gm = GaussianMixture.random(k=3, d=2, seed=0)
    gm_dev = GaussianMixture(gm.weights.to(device), gm.means.to(device), gm.covs.to(device))
    denoise = gm_dev.denoiser(SCHED)
    seeds = [1] if quick else list(range(1, 9))
    n_pairs = 5 if quick else 20
    ref = stratified_sample(gm, n, seed=99)
    # the floor: what an exact sampler scores, i.e. an independent true sample of the same size
    pairs = [energy_distance(gm.sample(n, torch.Generator().manual_seed(100 + i)), ref) for i in range(n_pairs)]
    floor = statistics.mean(pairs)
    configs = []
    for steps in ([10, 50, 250] if quick else [10, 20, 50, 100, 250, 1000]):
        configs.append(("ddpm", "trailing", steps))
    for spacing in ("linspace", "trailing", "karras"):
        for steps in ([5, 20, 50] if quick else [5, 10, 20, 50, 100]):
            configs.append(("ddim", spacing, steps))
    results = []
    for name, spacing, steps in configs:
        grid = time_grid(SCHED, steps, spacing)
        sampler = ddpm if name == "ddpm" else ddim
        eds, seconds = [], 0.0
        for seed in seeds:
            g = torch.Generator(device=device).manual_seed(seed)
            x = prior_sample(SCHED, SPACE, torch.zeros(n, 2, dtype=torch.float64, device=device), generator=g)
            _sync(device)
            t0 = time.perf_counter()
            out = sampler(denoise, x, grid, schedule=SCHED, space=SPACE, generator=g)
            _sync(device)
            seconds += time.perf_counter() - t0
            eds.append(energy_distance(out.cpu(), ref))
        ed = statistics.mean(eds)
        spread = statistics.stdev(eds) / len(eds) ** 0.5 if len(eds) > 1 else float("nan")
        results.append({"sampler": name, "spacing": spacing, "steps": steps, "energy_distance": ed,
                        "energy_distance_per_seed": eds, "ratio_to_floor": ed / floor,
                        "ratio_standard_error": spread / floor,
                        "seconds_per_run": seconds / len(seeds)})
    return {"n": n, "data": "GaussianMixture.random(k=3, d=2, seed=0)", "reference": "stratified, seed 99",
            "sampler_seeds": seeds,
            "floor_mean": floor, "floor_pairs": pairs, "results": results}


# ------------------------------------------------------------------ report
def _print_overhead(rows: list[dict]) -> None:
    print("\n1. Sampler cost per step, network excluded (microseconds)")
    print(f"{'case':58s} {'median':>10s} {'min':>10s}")
    for r in rows:
        print(f"{r['case']:58s} {r['us_per_step_median']:10.1f} {r['us_per_step_min']:10.1f}")


def _print_quality(q: dict) -> None:
    print(f"\n2. Energy distance to a true sample (n={q['n']}, mean over sampler seeds {q['sampler_seeds']}), "
          f"in units of the noise floor "
          f"{q['floor_mean']:.5f} (mean over {len(q['floor_pairs'])} independent true samples vs the same "
          f"stratified reference; "
          f"range {min(q['floor_pairs']):.5f}..{max(q['floor_pairs']):.5f})")
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    for r in q["results"]:
        rows.setdefault((r["sampler"], r["spacing"]), {})[r["steps"]] = r
    print("  (each cell: mean ratio over the seeds; its standard error is in the JSON)")
    for (name, spacing), by_steps in rows.items():
        cells = "  ".join(f"{s:>5d}: {r['ratio_to_floor']:6.2f}x" for s, r in sorted(by_steps.items()))
        print(f"  {name:5s} {spacing:9s} {cells}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, steps and samples")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = {"device": args.device, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "quick": args.quick,
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print(f"bench_core: {meta}")
    overhead = bench_overhead(device, args.quick)
    _print_overhead(overhead)
    quality = bench_quality(device, args.quick)
    _print_quality(quality)
    result = {"meta": meta, "overhead": overhead, "quality": quality}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_core_{args.device}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
