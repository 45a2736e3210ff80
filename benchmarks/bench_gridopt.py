"""Per-model optimised grids (``diffuse optimize-grid``) against the default grid, out of sample.

    python benchmarks/bench_gridopt.py [--quick] [--threads 1] [--samplers ddim,dpmpp_2m]
        [--image RUN] [--audio RUN] [--molecules RUN] [--no-exact] [--domain-samplers ddim]
        [--domain-evals N] [--out FILE]

1. Exact problems (where the truth is known): random Gaussian mixtures of several dimensions,
   numbers and widths of components on the DDPM linear and cosine schedules (T = 1000), each
   with its exact denoiser (``core.process.gaussian``). For each problem, sampler and NFE (5, 10) the grid
   is optimised on 256 prior draws (seed 0) with ``core.sampling.gridopt.optimize_grid`` and then judged on
   HELD-OUT noise (seeds 1..R, ``--eval`` draws each), default grid vs optimised grid:
   * ``flow``: RMS distance per coordinate to the exact probability-flow solution of the same
     noise (scipy RK45, rtol 1e-9): the solver error itself;
   * ``ED x`` / ``SW x``: energy distance and sliced 2-Wasserstein distance (64 fixed directions)
     to a fresh sample of the true mixture, as a multiple of the noise floor (the same distance
     for the exact flow's samples: what a perfect solver would get with these samples).
2. Trained models (``--image`` / ``--audio`` / ``--molecules`` run folders, e.g. small models
   trained in a few minutes on CPU, or ``pretrained``: the model shipped in the package): the grid is optimised at 10 NFE on ``--opt-num`` prior draws
   (seed 0; reference: ``--domain-ref-steps`` steps); then samples from held-out noise (seed 1) on the default and on the optimised grid
   are scored by the domain's own metrics (image FID / KID on the framework's LeNet features,
   audio Frechet distances, molecule stability / validity) against the held-out data.

Prints tables and writes ``benchmarks/results/bench_gridopt.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

from diffuse.core import SAMPLERS, CosineSchedule, DenseSpace, LinearBetaSchedule, time_grid
from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.sampling.generate import sampling_grid
from diffuse.core.sampling.gridopt import grid_error, optimize_grid

F64 = torch.float64
SPACE = DenseSpace()
RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (dimension, components, seed, component scale, schedule)
PROBLEMS = {
    "d2 k3 linear": (2, 3, 0, 0.5, "linear"),
    "d4 k6 narrow linear": (4, 6, 1, 0.15, "linear"),
    "d8 k4 wide linear": (8, 4, 2, 1.0, "linear"),
    "d3 k8 narrow cosine": (3, 8, 3, 0.2, "cosine"),
    "d6 k3 cosine": (6, 3, 4, 0.6, "cosine"),
    "d2 k5 narrow cosine": (2, 5, 5, 0.1, "cosine"),
}


def make_schedule(kind: str):
    return LinearBetaSchedule(num_steps=1000) if kind == "linear" else CosineSchedule(num_steps=1000)


def sliced_w2(x: torch.Tensor, y: torch.Tensor, directions: int = 64, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between equal-size samples (fixed random unit directions)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape[1], directions, generator=g, dtype=F64)
    u = u / u.norm(dim=0, keepdim=True)
    px, _ = (x.to(F64) @ u).sort(dim=0)
    py, _ = (y.to(F64) @ u).sort(dim=0)
    return float(((px - py) ** 2).mean().sqrt())


def exact_flow(den, sch, x):
    return SAMPLERS["rk45"](den, x.clone(), time_grid(sch, 2, "logsnr", t_min=1e-6), schedule=sch, space=SPACE,
                            rtol=1e-9, atol=1e-9)


def exact_problems(args, log) -> list[dict]:
    rows = []
    for pname, (d, k, seed, scale, kind) in PROBLEMS.items():
        sch = make_schedule(kind)
        gm = GaussianMixture.random(k=k, d=d, seed=seed, scale=scale)
        den = gm.denoiser(sch)
        held = []
        for r in range(1, args.replicates + 1):
            x = torch.randn(args.eval, d, dtype=F64, generator=torch.Generator().manual_seed(1000 * r + seed))
            flow = exact_flow(den, sch, x)
            true = gm.sample(args.eval, torch.Generator().manual_seed(5000 + 1000 * r + seed))
            held.append((x, flow, true, energy_distance(flow, true), sliced_w2(flow, true)))
        x_opt = torch.randn(args.opt_num, d, dtype=F64, generator=torch.Generator().manual_seed(seed))
        for sampler in args.samplers:
            for nfe in args.nfes:
                start = sampling_grid(sch, sampler, nfe, None)
                t0 = time.perf_counter()
                res = optimize_grid([(den, x_opt, SPACE)], sch, start, sampler=sampler, seed=0)
                secs = time.perf_counter() - t0
                row = {"problem": pname, "sampler": sampler, "nfe": nfe, "opt_objective_default": res.start_objective,
                       "opt_objective": res.objective, "evaluations": res.evaluations, "opt_seconds": secs,
                       "grid_default": start.tolist(), "grid": res.grid.tolist()}
                for label, grid in (("default", start), ("optimised", res.grid)):
                    fl, ed, sw = [], [], []
                    for x, flow, true, ed_floor, sw_floor in held:
                        y = SAMPLERS[sampler](den, x.clone(), grid, schedule=sch, space=SPACE)
                        fl.append(grid_error([y], [flow], [(den, x, SPACE)]))
                        ed.append(energy_distance(y, true) / ed_floor)
                        sw.append(sliced_w2(y, true) / sw_floor)
                    row[label] = {"flow": statistics.mean(fl), "ed_x": statistics.mean(ed), "sw_x": statistics.mean(sw)}
                rows.append(row)
                log(f"{pname:22s} {sampler:9s} NFE {nfe:2d}: flow {row['default']['flow']:.4f} -> "
                    f"{row['optimised']['flow']:.4f}  ED x{row['default']['ed_x']:.2f} -> x{row['optimised']['ed_x']:.2f}"
                    f"  SW x{row['default']['sw_x']:.2f} -> x{row['optimised']['sw_x']:.2f}  ({secs:.0f} s)")
    return rows


def print_exact(rows, samplers, nfes) -> None:
    print("\nExact Gaussian mixtures, HELD-OUT noise: default grid -> optimised grid")
    print("(flow: RMS distance to the exact PF-ODE solution; ED x / SW x: distance to the true mixture as a "
          "multiple of the noise floor)")
    print(f"{'problem':22s} {'sampler':9s} {'NFE':>3s}  {'flow':>17s}  {'ED x':>13s}  {'SW x':>13s}")
    for r in rows:
        a, b = r["default"], r["optimised"]
        print(f"{r['problem']:22s} {r['sampler']:9s} {r['nfe']:3d}  {a['flow']:7.4f} -> {b['flow']:7.4f}  "
              f"{a['ed_x']:5.2f} -> {b['ed_x']:5.2f}  {a['sw_x']:5.2f} -> {b['sw_x']:5.2f}")
    print("\nSummary over problems (geometric mean of the ratio optimised / default, and its range)")
    for s in samplers:
        for n in nfes:
            sel = [r for r in rows if r["sampler"] == s and r["nfe"] == n]
            if not sel:
                continue
            parts = []
            for key in ("flow", "ed_x", "sw_x"):
                ratios = [r["optimised"][key] / r["default"][key] for r in sel]
                gm = math.exp(statistics.mean(math.log(v) for v in ratios))
                parts.append(f"{key} {gm:.2f} [{min(ratios):.2f}, {max(ratios):.2f}]")
            better = sum(r["optimised"]["flow"] < r["default"]["flow"] for r in sel)
            print(f"  {s:9s} NFE {n:2d}: " + "   ".join(parts) + f"   flow better on {better}/{len(sel)}")


def domain_models(args, log) -> list[dict]:
    from diffuse import api

    rows = []
    for domain, run in (("image", args.image), ("audio", args.audio), ("molecules", args.molecules)):
        if run is None:
            continue
        model = (api.load_pretrained(domain, device="cpu") if str(run) == "pretrained"
                 else api.load(run, device="cpu"))
        opt_num, eval_num = {"image": (64, 256), "audio": (16, 64), "molecules": (64, 256)}[domain]
        opt_num, eval_num = args.domain_opt_num or opt_num, args.domain_eval_num or eval_num
        reference = model.reference_data()
        for sampler in args.domain_samplers:
            t0 = time.perf_counter()
            res = model.optimize_grid(10, sampler=sampler, num=opt_num, seed=0, save=False,
                                      max_evals=args.domain_evals, ref_steps=args.domain_ref_steps)
            secs = time.perf_counter() - t0
            row = {"domain": domain, "run": str(run), "sampler": sampler, "nfe": 10, "opt_num": opt_num,
                   "eval_num": eval_num, "opt_objective_default": res.start_objective, "opt_objective": res.objective,
                   "evaluations": res.evaluations, "opt_seconds": secs, "grid_default": res.start_grid.tolist(),
                   "grid": res.grid.tolist()}
            for label, grid in (("default", res.start_grid), ("optimised", res.grid)):
                samples = model.sample(eval_num, sampler=sampler, steps=10, seed=1, grid=grid)
                row[label] = {k: float(v) for k, v in model.domain.metrics(samples, reference).items()
                              if isinstance(v, (int, float))}
            rows.append(row)
            log(f"{domain} {sampler}: objective {res.start_objective:.4g} -> {res.objective:.4g} ({secs:.0f} s); "
                f"default {row['default']}; optimised {row['optimised']}")
    return rows


def print_domains(rows) -> None:
    if not rows:
        return
    print("\nTrained models at 10 NFE, held-out noise (seed 1): default grid -> optimised grid")
    for r in rows:
        print(f"  {r['domain']} ({r['sampler']}; optimised on {r['opt_num']} draws, scored on {r['eval_num']}): "
              f"error to the fine-grid solution {r['opt_objective_default']:.4g} -> {r['opt_objective']:.4g}")
        for key in r["default"]:
            print(f"      {key:24s} {r['default'][key]:10.4f} -> {r['optimised'].get(key, float('nan')):10.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer held-out draws, one replicate")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samplers", default="ddim,dpmpp_2m")
    ap.add_argument("--nfes", default="5,10")
    ap.add_argument("--opt-num", type=int, default=256, help="prior draws the grid is optimised on")
    ap.add_argument("--eval", type=int, default=None, help="held-out draws per replicate")
    ap.add_argument("--replicates", type=int, default=None)
    ap.add_argument("--no-exact", action="store_true", help="skip the exact problems")
    ap.add_argument("--image", type=Path, default=None, help="a trained image run folder, or 'pretrained' (the shipped model)")
    ap.add_argument("--audio", type=Path, default=None, help="a trained audio run folder, or 'pretrained' (the shipped model)")
    ap.add_argument("--molecules", type=Path, default=None, help="a trained molecules run folder, or 'pretrained' (the shipped model)")
    ap.add_argument("--domain-opt-num", type=int, default=None)
    ap.add_argument("--domain-eval-num", type=int, default=None)
    ap.add_argument("--domain-evals", type=int, default=None, help="max_evals of the domain searches (default 20 x NFE)")
    ap.add_argument("--domain-ref-steps", type=int, default=200, help="steps of the domain searches' reference")
    ap.add_argument("--domain-samplers", default=None, help="samplers for the trained models (default --samplers)")
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_gridopt.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.samplers = [s for s in args.samplers.split(",") if s]
    args.nfes = [int(n) for n in args.nfes.split(",") if n]
    args.domain_samplers = [s for s in (args.domain_samplers or ",".join(args.samplers)).split(",") if s]
    args.eval = args.eval or (1000 if args.quick else 2000)
    args.replicates = args.replicates or (1 if args.quick else 3)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    t0 = time.perf_counter()
    exact = [] if args.no_exact else exact_problems(args, log)
    if exact:
        print_exact(exact, args.samplers, args.nfes)
    domains = domain_models(args, log)
    print_domains(domains)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"exact": exact, "domains": domains, "args": {k: (str(v) if isinstance(v, Path) else v)
                                                          for k, v in vars(args).items()},
           "torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
           "seconds": time.perf_counter() - t0}
    path = args.out
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
