"""Flow matching vs DDPM-style training, and flow samplers on the exact Gaussian-mixture problem.

1. ``domains``: for each domain, train the same backbone with the same budget (optimizer steps,
   batch size, seed, threads) twice through ``diffuse.api``: the domain's own diffusion defaults
   (``training="ddpm"``) and flow matching (``training="flow"``: linear path, velocity,
   logit-normal times), then sample with DDIM and DPM-Solver++(2M) at 10 / 20 / 50 steps (the
   same solvers on both: they read only ``(alpha, sigma)``) and score with the domain's metrics
   (image: FID / KID on the LeNet features; audio: Frechet distances on log-mel / MFCC / the
   feature net; molecules: atom / molecule stability, valid, valid & connected). Training wall
   time is measured per run; the machine is shared, so compare the two columns of one run.

       python benchmarks/bench_flow.py domains --domain image --steps 600 [--threads 1] [--num 256]

2. ``exact``: the Gaussian mixture of ``benchmarks/bench_samplers.py`` (3 components in 2-D)
   on the linear flow path with its exact denoiser (:meth:`GaussianMixture.denoiser`, whose
   velocity is closed form), every flow sampler at 5-50 evaluations, energy distance to the
   mixture's own samples (``dist_true``) next to the VP (DDPM linear-beta) model with DDIM /
   DPM-Solver++(2M) at the same budgets. The noise floor (two independent sets of samples of
   the mixture) is printed too.

       python benchmarks/bench_flow.py exact [--n 4000]

Both write ``benchmarks/results/bench_flow_<part>[_<domain>].json``; ``table`` prints the domain
results as the README's markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_STEPS = (10, 20, 50)


def _save(name: str, payload: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- 1. domains
def run_domain(args) -> None:
    import diffuse.api as api

    torch.set_num_threads(args.threads)
    rows = []
    for training in args.trainings:
        out = tempfile.mkdtemp(prefix=f"bench_flow_{args.domain}_{training}_")
        diffusion = {"training": training} if training == "flow" else {}
        over = dict(steps=args.steps, checkpoint_every=0, final_eval=False, device="cpu", seed=0, eval_samples=0)
        if args.batch_size:
            over["batch_size"] = args.batch_size
        t0 = time.perf_counter()
        res = api.train(args.domain, out=out, progress=False, diffusion=diffusion, **over)
        train_s = time.perf_counter() - t0
        model = api.load(out, device="cpu")
        reference = model.reference_data()
        for sampler in args.samplers:
            for steps in SAMPLE_STEPS:
                t0 = time.perf_counter()
                samples = model.sample(args.num, sampler=sampler, steps=steps, seed=1, batch_size=args.num)
                sample_s = time.perf_counter() - t0
                metrics = model.domain.metrics(samples, reference)
                row = {"domain": args.domain, "training": training, "train_steps": args.steps,
                       "train_s": round(train_s, 1), "final_loss": res.final_loss, "sampler": sampler,
                       "sample_steps": steps, "sample_s": round(sample_s, 1),
                       **{k: float(v) for k, v in metrics.items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    tag = "" if sorted(args.trainings) == ["ddpm", "flow"] else "_" + "_".join(args.trainings)
    _save(f"bench_flow_domains_{args.domain}{tag}", {"rows": rows, "threads": args.threads,
                                                "machine": platform.platform(), "cpus": os.cpu_count()})


# ----------------------------------------------------------------------------- 2. exact problem
def run_exact(args) -> None:
    from diffuse.core import SAMPLERS, DenseSpace, LinearBetaSchedule, time_grid
    from diffuse.core.process.gaussian import GaussianMixture, energy_distance
    from diffuse.core.process.paths import FlowSchedule

    torch.set_num_threads(args.threads)
    gm = GaussianMixture.random(3, 2, seed=0)
    space = DenseSpace()
    g = torch.Generator().manual_seed(0)
    ref = gm.sample(args.n, generator=g)
    floor = energy_distance(gm.sample(args.n, generator=g), ref)
    x1 = torch.randn(args.n, 2, generator=g, dtype=torch.float64)
    flow = FlowSchedule()
    vp = LinearBetaSchedule(num_steps=None)     # the continuous VP-SDE (Song et al.), same samplers
    evals = {"flow_euler": lambda n: n, "flow_heun": lambda n: (n + 1) // 2, "flow_midpoint": lambda n: n // 2,
             "flow_sde": lambda n: n, "ddim": lambda n: n, "dpmpp_2m": lambda n: n, "dpmpp_3m": lambda n: n}
    rows = []
    for sched_name, sch, samplers, spacing in (
            ("flow linear", flow, ["flow_euler", "flow_heun", "flow_midpoint", "flow_sde", "ddim", "dpmpp_2m",
                                   "dpmpp_3m"], "uniform"),
            ("flow linear shift 3", FlowSchedule(shift=3.0), ["flow_euler", "flow_heun", "dpmpp_2m"], "uniform"),
            ("VP (linear beta)", vp, ["ddim", "dpmpp_2m", "dpmpp_3m", "flow_heun"], "logsnr")):
        den = gm.denoiser(sch)
        for name in samplers:
            for nfe in args.nfes:
                steps = evals[name](nfe)
                if steps < 1:
                    continue
                grid = time_grid(sch, steps, spacing)
                calls = [0]

                def counted(x, t, den=den):
                    calls[0] += 1
                    return den(x, t)
                y = SAMPLERS[name](counted, x1.clone() * (1.0 if spacing == "uniform" else 1.0), grid, schedule=sch,
                                   space=space, generator=torch.Generator().manual_seed(1))
                d = energy_distance(y, ref)
                rows.append({"schedule": sched_name, "sampler": name, "budget": nfe, "nfe": calls[0],
                             "grid": spacing, "dist_true": d})
        stats: dict = {}
        y = SAMPLERS["flow_rk45"](den, x1.clone(), time_grid(sch, 2, spacing), schedule=sch, space=space, stats=stats)
        rows.append({"schedule": sched_name, "sampler": "flow_rk45", "budget": None, "nfe": stats["nfe"],
                     "grid": spacing, "dist_true": energy_distance(y, ref)})
    print(f"noise floor (two independent sets of {args.n} mixture samples): {floor:.5f}")
    head = f"{'schedule':22s}{'sampler':15s}" + "".join(f"| NFE {n:<8d}" for n in args.nfes)
    print(head)
    for key in dict.fromkeys((r["schedule"], r["sampler"]) for r in rows):
        line = f"{key[0]:22s}{key[1]:15s}"
        for r in rows:
            if (r["schedule"], r["sampler"]) == key:
                line += f"| {r['nfe']:3d} {r['dist_true']:.5f} "
        print(line)
    _save("bench_flow_exact", {"rows": rows, "floor": floor, "n": args.n})


# ----------------------------------------------------------------------------- 3. table
KEYS = {"image": ["fid", "kid"], "audio": ["fd_logmel", "fd_mfcc", "fd_net"],
        "molecules": ["atom_stability", "mol_stability", "validity", "connected"]}


def run_table(args) -> None:
    """A markdown table of every ``bench_flow_domains_*.json`` in the results folder."""
    rows = []
    for path in sorted(RESULTS.glob("bench_flow_domains_*.json")):
        rows += json.loads(path.read_text())["rows"]
    print("| domain | training | train steps | train s | sampler | steps | metrics |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["domain"], r["sampler"], r["sample_steps"], r["training"])):
        m = ", ".join(f"{k} {r[k]:.3g}" for k in KEYS[r["domain"]] if k in r)
        print(f"| {r['domain']} | {r['training']} | {r['train_steps']} | {r['train_s']:.0f} | {r['sampler']} | "
              f"{r['sample_steps']} | {m} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    d = sub.add_parser("domains")
    d.add_argument("--domain", required=True, choices=["image", "audio", "molecules"])
    d.add_argument("--steps", type=int, required=True)
    d.add_argument("--batch-size", type=int, default=None)
    d.add_argument("--num", type=int, default=256, help="samples per evaluation")
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--trainings", nargs="+", default=["ddpm", "flow"])
    d.add_argument("--samplers", nargs="+", default=["ddim", "dpmpp_2m"])
    e = sub.add_parser("exact")
    e.add_argument("--n", type=int, default=4000)
    e.add_argument("--nfes", type=int, nargs="+", default=[5, 10, 20, 50])
    e.add_argument("--threads", type=int, default=1)
    sub.add_parser("table")
    args = ap.parse_args()
    {"domains": run_domain, "exact": run_exact, "table": run_table}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
