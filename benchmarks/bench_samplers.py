"""Samplers on the exact Gaussian-mixture model: distance vs evaluations, order of convergence,
per-step overhead and likelihood cost; side by side with diffusers' DPM-Solver++(2M) and UniPC.

    python benchmarks/bench_samplers.py [--device cpu|cuda] [--quick] [--threads 1]
    python benchmarks/bench_samplers.py --overhead      # only: Denoiser vs bare closure vs diffusers' DDIM step

Protocol (the model is exact, so every error is the sampler's):

* data: ``GaussianMixture.random(k=3, d=2, seed=0)``; process: the DDPM chain
  ``LinearBetaSchedule(num_steps=1000)`` (= diffusers' "linear" betas 1e-4..0.02). diffusers'
  schedulers get the exact eps at their integer timesteps ``k`` (our ``t = (k + 1) / 1000``).
* NFE are counted by wrapping the model (Heun: 2 per step, 1 on the step to sigma = 0; PC:
  predictor + corrector; RK45: what scipy used + the final denoise).
* grids: each sampler (and each diffusers scheduler) gets the best of a few grids, chosen on a
  separate tuning draw (seed 100), then evaluated on fresh draws: ours among ``trailing``,
  ``karras``, ``logsnr`` with a few low ends ``t_min``, and ``jump_logsnr_grid`` (one long first
  step from t = 1, then uniform log-SNR); diffusers among its ``linspace``
  (default), ``trailing``, Karras sigmas and (DPM-Solver) Lu's uniform-lambda timesteps.
* distances: energy distance (``core.process.gaussian.energy_distance``) to a fresh sample of the true
  mixture (mean over replicates; its noise floor is the same distance for the exact flow), and
  to the exact probability-flow transport of the same starting noise (RK45, rtol 1e-9): a
  low-noise distance that isolates the solver error.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from pathlib import Path

import torch

from diffuse.core import SAMPLERS, DenseSpace, LinearBetaSchedule, time_grid
from diffuse.core.process.gaussian import GaussianMixture, energy_distance
from diffuse.core.process.likelihood import log_likelihood
from diffuse.core.process.parameterization import Prediction
from diffuse.core.sampling.grids import jump_logsnr_grid

F64 = torch.float64
SPACE = DenseSpace()
RESULTS = Path(__file__).resolve().parent / "results"

# name -> (sampler, evals per step, options, step count for a budget)
HEUN_STEPS = lambda n: max((n + 1) // 2, 1)     # k steps with a final Euler step: 2k - 1 evaluations
OURS = {
    "ddpm": ("ddpm", {}, lambda n: n),
    "ddim": ("ddim", {}, lambda n: n),
    "euler_maruyama": ("euler_maruyama", {}, lambda n: n),
    "pc (snr 0.16)": ("pc", {"snr": 0.16}, lambda n: max(n // 2, 1)),
    "ode_euler": ("ode_euler", {}, lambda n: n),
    "ode_heun": ("ode_heun", {}, HEUN_STEPS),
    "edm_heun": ("edm_heun", {}, HEUN_STEPS),
    "edm_heun churn 5": ("edm_heun", {"s_churn": 5.0}, HEUN_STEPS),
    "dpmpp_2m": ("dpmpp_2m", {}, lambda n: n),
    "dpmpp_3m": ("dpmpp_3m", {}, lambda n: n),
}
T_MINS = (None, 0.02, 0.04, 0.08)
JUMPS = ((0.8, 0.02), (0.8, 0.04), (0.8, 0.06), (0.7, 0.02), (0.7, 0.04), (0.7, 0.06))


def counted(denoise):
    box = {"n": 0}

    def f(x, t):
        box["n"] += 1
        return denoise(x, t)
    return f, box


def our_grids(sch, steps):
    yield "trailing", time_grid(sch, steps, "trailing")
    yield "karras", torch.unique_consecutive(time_grid(sch, steps, "karras"))   # rounding can repeat times
    for lo in T_MINS:
        yield f"logsnr t_min={lo or 1 / sch.num_steps:g}", time_grid(sch, steps, "logsnr", t_min=lo)
    for hi, lo in JUMPS:
        yield f"jump {hi:g} logsnr {lo:g}", jump_logsnr_grid(sch, steps, t_jump=hi, t_min=lo)


def run_ours(den, sch, name, grid, x, seed):
    sampler, opts, _ = OURS[name]
    f, box = counted(den)
    y = SAMPLERS[sampler](f, x.clone(), grid, schedule=sch, space=SPACE,
                          generator=torch.Generator().manual_seed(seed), **opts)
    return y, box["n"]


def diffusers_variants():
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
    base = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    dpm = lambda **kw: DPMSolverMultistepScheduler(**base, solver_order=2, algorithm_type="dpmsolver++", **kw)
    uni = lambda **kw: UniPCMultistepScheduler(**base, solver_order=2, **kw)
    return {
        "diffusers DPM-Solver++(2M)": {"linspace": lambda: dpm(), "trailing": lambda: dpm(timestep_spacing="trailing"),
                                       "karras": lambda: dpm(use_karras_sigmas=True),
                                       "lu_lambdas": lambda: dpm(use_lu_lambdas=True)},
        "diffusers UniPC": {"linspace": lambda: uni(), "trailing": lambda: uni(timestep_spacing="trailing"),
                            "karras": lambda: uni(use_karras_sigmas=True)},
    }


def run_diffusers(den, make, nfe, x):
    sched = make()
    sched.set_timesteps(nfe)
    y, n = x.clone(), 0
    for k in sched.timesteps:
        t = torch.full((y.shape[0],), (int(k) + 1) / 1000, dtype=F64)
        eps = den(y, t).eps
        n += 1
        y = sched.step(eps, k, y).prev_sample
    return y, n


def exact_flow(den, sch, x):
    """The probability-flow ODE solved tightly to sigma(1/T), then denoised (the limit of every
    deterministic sampler here, and of diffusers' final step to sigma = 0)."""
    stats = {}
    y = SAMPLERS["rk45"](den, x.clone(), time_grid(sch, 2, "logsnr", t_min=1e-6), schedule=sch, space=SPACE,
                         rtol=1e-9, atol=1e-9, stats=stats)
    return y, stats["nfe"]


def distance_table(gm, sch, nfes, n, replicates, log, n_tune=1000):
    den = gm.denoiser(sch)
    # ---- tuning draw
    xt = torch.randn(n_tune, 2, dtype=F64, generator=torch.Generator().manual_seed(100))
    flow_t, _ = exact_flow(den, sch, xt)
    choice = {}
    for name, (_, _, steps_for) in OURS.items():
        for nfe in nfes:
            best = None
            for gname, grid in our_grids(sch, steps_for(nfe)):
                y, _ = run_ours(den, sch, name, grid, xt, 101)
                d = energy_distance(y, flow_t)
                if best is None or d < best[0]:
                    best = (d, gname)
            choice[(name, nfe)] = best[1]
    log("tuned our grids")
    dv = {}
    try:
        dv = diffusers_variants()
    except Exception as err:  # diffusers is a benchmark-only dependency
        log(f"diffusers unavailable ({err}); skipping the side-by-side rows")
    for name, variants in dv.items():
        for nfe in nfes:
            best = None
            for vname, make in variants.items():
                y, _ = run_diffusers(den, make, nfe, xt)
                d = energy_distance(y, flow_t)
                if best is None or d < best[0]:
                    best = (d, vname)
            choice[(name, nfe)] = best[1]
    log("tuned diffusers' options")
    # ---- evaluation draws
    rows = {}
    floor, floor_true = [], []
    for r in range(replicates):
        x = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(200 + r))
        ref = gm.sample(n, torch.Generator().manual_seed(300 + r))
        flow, flow_nfe = exact_flow(den, sch, x)
        floor.append(energy_distance(flow, ref))
        floor_true.append(energy_distance(gm.sample(n, torch.Generator().manual_seed(400 + r)), ref))
        for name, (_, _, steps_for) in OURS.items():
            for nfe in nfes:
                gname = choice[(name, nfe)]
                grid = dict(our_grids(sch, steps_for(nfe)))[gname]
                y, used = run_ours(den, sch, name, grid, x, 500 + r)
                rows.setdefault((name, nfe), []).append((energy_distance(y, ref), energy_distance(y, flow), used, gname))
        for name, variants in dv.items():
            for nfe in nfes:
                vname = choice[(name, nfe)]
                y, used = run_diffusers(den, variants[vname], nfe, x)
                rows.setdefault((name, nfe), []).append((energy_distance(y, ref), energy_distance(y, flow), used, vname))
        for tol in (1e-2, 1e-3, 1e-4):
            f, box = counted(den)
            y = SAMPLERS["rk45"](f, x.clone(), time_grid(sch, 2, "logsnr", t_min=1e-6), schedule=sch, space=SPACE,
                                 rtol=tol, atol=tol)
            rows.setdefault((f"rk45 tol {tol:g}", None), []).append(
                (energy_distance(y, ref), energy_distance(y, flow), box["n"], "adaptive"))
        log(f"replicate {r + 1}/{replicates} done")
    table = []
    for (name, nfe), vals in rows.items():
        table.append({"sampler": name, "budget": nfe, "nfe": vals[0][2], "grid": vals[0][3],
                      "dist_true": sum(v[0] for v in vals) / len(vals),
                      "dist_flow": sum(v[1] for v in vals) / len(vals)})
    return table, sum(floor) / len(floor), sum(floor_true) / len(floor_true), flow_nfe


def print_distance_table(table, nfes, floor, floor_true):
    names = list(dict.fromkeys(r["sampler"] for r in table if r["budget"] is not None))
    by = {(r["sampler"], r["budget"]): r for r in table}
    head = f"{'sampler':27s}" + "".join(f"| NFE {n:<3d} to mixture / to flow  (grid)              " for n in nfes)
    print(head)
    print("-" * len(head))
    for name in names:
        line = f"{name:27s}"
        for n in nfes:
            r = by[(name, n)]
            line += f"| {r['nfe']:3d} {r['dist_true']:.5f} / {r['dist_flow']:.5f} ({r['grid'][:24]:24s}) "
        print(line)
    for r in table:
        if r["budget"] is None:
            print(f"{r['sampler']:28s}| NFE {r['nfe']:4d}: to mixture {r['dist_true']:.5f} / to flow {r['dist_flow']:.5f}")
    print(f"noise floor: exact flow vs mixture sample {floor:.5f}; two mixture samples {floor_true:.5f}")


def convergence_orders(gm, sch, n, log):
    """Error vs the tight PF-ODE solution from the same noise, on a log-SNR grid ending at
    t_min = 1/T (no final denoise, so every solver targets the same point)."""
    den = gm.denoiser(sch)
    x = torch.randn(n, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    ref = SAMPLERS["rk45"](den, x.clone(), time_grid(sch, 2, "logsnr", final=None), schedule=sch, space=SPACE,
                           rtol=1e-10, atol=1e-10)
    out = {}
    for name, steps_for in (("ddim", lambda k: k), ("ode_euler", lambda k: k), ("ode_heun", lambda k: k),
                            ("edm_heun", lambda k: k), ("dpmpp_2m", lambda k: k), ("dpmpp_3m", lambda k: k)):
        pts = []
        for k in (10, 20, 40, 80, 160):
            f, box = counted(den)
            y = SAMPLERS[name](f, x.clone(), time_grid(sch, steps_for(k), "logsnr", final=None), schedule=sch, space=SPACE)
            pts.append((box["n"], float((y - ref).norm(dim=1).mean())))
        (n1, e1), (n2, e2) = pts[-3], pts[-1]
        out[name] = {"points": pts, "order": math.log(e1 / e2) / math.log(n2 / n1)}
        log(f"order {name}: {out[name]['order']:.2f}")
    return out


def step_overhead(device, steps=50):
    """Seconds per step beside the network: a free 'network' on an image-sized batch."""
    sch = LinearBetaSchedule(num_steps=1000)
    x = torch.randn(16, 3, 32, 32, device=device)

    def free(x, t):
        return Prediction(x, x)
    out = {}
    for name, opts in (("ddpm", {}), ("ddim", {}), ("euler_maruyama", {}), ("pc", {}), ("ode_euler", {}), ("ode_heun", {}),
                       ("edm_heun", {}), ("edm_heun", {"s_churn": 5.0}), ("dpmpp_2m", {}), ("dpmpp_3m", {})):
        grid = time_grid(sch, steps, "logsnr")
        SAMPLERS[name](free, x, grid[:4], schedule=sch, space=SPACE, **opts)       # warm-up
        t0 = time.perf_counter()
        SAMPLERS[name](free, x, grid, schedule=sch, space=SPACE, generator=None, **opts)
        if device == "cuda":
            torch.cuda.synchronize()
        key = name + (" churn" if opts else "")
        out[key] = (time.perf_counter() - t0) / steps
    return out


def denoiser_overhead(device, n=20000, d=8, rounds=7, calls=100):
    """Per-call cost beside the network, side by side in one run (round-robin, best round):
    a bare closure (the eps model and ``x0 = (x - sigma eps) / alpha`` with numbers), our
    ``Denoiser`` on the same network, diffusers' ``DDIMScheduler.step`` (the scheduler's whole
    per-step work) and our DDIM step with the network excluded. The "network" is free (returns
    its input) so only overhead is timed; 20,000 points in 8-D."""
    from torch import nn

    from diffuse.core import Denoiser
    from diffuse.core.process.parameterization import EpsParam

    class Free(nn.Module):
        def forward(self, x, c_noise, cond=None, space=None):
            return x

    sch = LinearBetaSchedule(num_steps=1000)
    net = Free()
    den = Denoiser(net, sch, EpsParam()).bind(SPACE)
    x = torch.randn(n, d, device=device)
    t_val = 0.5
    a, s = (float(v) for v in sch.alpha_sigma(torch.tensor(t_val, dtype=F64)))

    def full_t():
        return torch.full((n,), t_val, dtype=F64, device=device)

    def bare():
        tv = full_t()
        eps = net(x, tv.to(torch.float32))
        return Prediction((x - s * eps) / a, eps)

    pred = Prediction(x, x)
    grid = torch.tensor([t_val, t_val - 0.02], dtype=F64)
    cases = {"network alone": lambda: net(x, full_t().to(torch.float32)),
             "bare closure": bare,
             "Denoiser": lambda: den(x, full_t()),
             "our DDIM step, network excluded": lambda: SAMPLERS["ddim"](lambda y, tt: pred, x, grid, schedule=sch, space=SPACE)}
    try:
        from diffusers import DDIMScheduler
        ds = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                           clip_sample=False)
        ds.set_timesteps(50)
        k = ds.timesteps[25]
        cases["diffusers DDIMScheduler.step"] = lambda: ds.step(x, k, x)
    except ImportError:
        pass
    best = {name: math.inf for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            for _ in range(3):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            if device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    return best


def likelihood_cost(n):
    out = {}
    for d, exact in ((2, True), (2, False), (16, True), (16, False)):
        gm = GaussianMixture.random(k=3, d=d, seed=1)
        sch = LinearBetaSchedule(num_steps=None)
        x = gm.sample(n, torch.Generator().manual_seed(2))
        t0 = time.perf_counter()
        res = log_likelihood(gm.denoiser(sch), x, sch, SPACE, exact_trace=exact, rtol=1e-5, atol=1e-5,
                             generator=torch.Generator().manual_seed(3))
        sec = time.perf_counter() - t0
        a, s = sch.alpha_sigma(torch.tensor(res["t_min"], dtype=F64))
        exact_logp = gm.log_prob(x, a, s)
        err = float((-res["nll_nats"] - exact_logp).abs().mean())
        a1, s1 = sch.alpha_sigma(torch.tensor(1.0, dtype=F64))
        err_ode = float((gm.log_prob(res["x_T"], a1, s1) + res["delta_logp"] - exact_logp).abs().mean())
        out[f"d={d} {'exact' if exact else 'hutchinson(1)'}"] = {"nfe": res["nfe"], "seconds": sec,
                                                                 "mean_abs_err_nats": err, "ode_err_nats": err_ode,
                                                                 "bpd": float(res["bits_per_dim"].mean())}
    return out


def print_overhead(ov):
    print("\nPer-call cost, 20,000 points in 8-D, free network (best of 7 interleaved rounds of 100 calls)")
    for k, v in ov.items():
        print(f"  {k:34s} {v * 1e6:8.1f} us")
    if "Denoiser" in ov and "diffusers DDIMScheduler.step" in ov:
        print(f"  Denoiser above the bare closure: {(ov['Denoiser'] - ov['bare closure']) * 1e6:.1f} us; "
              f"diffusers' DDIM step: {ov['diffusers DDIMScheduler.step'] * 1e6:.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--replicates", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable timings on shared cores)")
    ap.add_argument("--overhead", action="store_true", help="only the per-call overhead table (Denoiser vs a bare "
                    "closure vs diffusers' DDIM step)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.overhead:
        print_overhead(denoiser_overhead(args.device))
        return
    warnings.filterwarnings("ignore")
    n = args.samples or (1000 if args.quick else 4000)
    reps = args.replicates or (1 if args.quick else 3)
    nfes = (10, 20) if args.quick else (10, 20, 50, 100)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
    gm = GaussianMixture.random(k=3, d=2, seed=0)
    sch = LinearBetaSchedule(num_steps=1000)
    t0 = time.perf_counter()
    table, floor, floor_true, flow_nfe = distance_table(gm, sch, nfes, n, reps, log)
    print(f"\nEnergy distance vs NFE ({n} samples, mean of {reps} draws; exact flow used {flow_nfe} NFE)")
    print_distance_table(table, nfes, floor, floor_true)
    orders = convergence_orders(gm, sch, 256 if args.quick else 1000, log)
    print("\nOrder of convergence to the exact PF-ODE solution (log-SNR grid to t=1/T; slope over the last 3 grids)")
    for name, o in orders.items():
        print(f"  {name:12s} order {o['order']:.2f}   " + "  ".join(f"{k}:{e:.2e}" for k, e in o["points"]))
    overhead = step_overhead(args.device)
    print("\nPer-step overhead (network excluded; batch 16x3x32x32)")
    for k, v in overhead.items():
        print(f"  {k:18s} {v * 1e6:8.1f} us/step")
    overhead_calls = denoiser_overhead(args.device)
    print_overhead(overhead_calls)
    lik = likelihood_cost(64 if args.quick else 256)
    print(f"\nLikelihood evaluation ({64 if args.quick else 256} points; probability-flow ODE, RK45 rtol=atol=1e-5)")
    for k, v in lik.items():
        print(f"  {k:20s} NFE {v['nfe']:4d}  {v['seconds']:6.2f} s  |err| {v['mean_abs_err_nats']:.2e} nats "
              f"(ODE part {v['ode_err_nats']:.2e}; the rest is the N(0, I) prior vs the true p_1)  bpd {v['bpd']:.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"samples": n, "replicates": reps, "nfes": nfes, "table": table, "noise_floor_flow": floor,
           "noise_floor_true": floor_true, "orders": orders, "step_overhead_s": overhead,
           "call_overhead_s": overhead_calls, "likelihood": lik,
           "device": args.device, "torch": torch.__version__, "platform": platform.platform(),
           "threads": torch.get_num_threads(), "seconds": time.perf_counter() - t0}
    path = RESULTS / "bench_samplers.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
