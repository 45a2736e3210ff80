"""Few-step models against the truth and against the solvers.

1. ``exact``: exact Gaussian mixtures (2-D, 4 components, ``tests/fewstep_toy.mixture(seed)``).
   Consistency distillation with the *exact* denoiser as teacher (``cd``; EDM preconditioning on
   the DDPM linear schedule), consistency training from scratch (``ct``, iCT) and a shortcut model
   from scratch (``shortcut``, linear flow path), each with the same small MLP and budget; then

   * the one-step map's error against the exact probability-flow map of the same noise (RMSE;
     the exact map is DPM-Solver++(3M) with 400 log-SNR steps on the exact denoiser), and the
     shortcut model's 1 / 2 / 4-step maps (deterministic) likewise, next to the best solver at
     the same evaluations (DDIM, DPM-Solver++(2M), UniPC on their default grids, each on the
     exact denoiser: every error of theirs is the solver's);
   * the energy distance to fresh data of samples at 1 / 2 / 4 evaluations (multistep
     consistency sampling for cd / ct), next to the same solvers.

   Settings are chosen on the TUNE mixtures (seeds 0-2) and reported on the HELD-OUT ones
   (seeds 10-15), never tuned on:

       python benchmarks/bench_fewstep.py exact [--steps 2000] [--seeds 10,11,12,13,14,15] [--threads 1]

2. ``domain``: the quality-vs-evaluations table of one domain: a teacher (run folder or
   ``pretrained:NAME``) with solvers at 1-50 evaluations against few-step models (run folders)
   at their 1-8 steps, the same samples count, seed and conditions for all, the domain's metrics
   against the held-out reference, and sampling seconds per sample (one thread):

       python benchmarks/bench_fewstep.py domain --teacher pretrained:image --few RUN[,RUN] --num 500 \\
           [--nfe 1,2,4,8,16,50] [--solvers ddim,dpmpp_2m,unipc] [--cond train|none] [--seeds 0]

Both write ``benchmarks/results/bench_fewstep_<part>[_<name>].json`` and print a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT / "tests"))   # the toy problems: tests/fewstep_toy.py

F64 = torch.float64
SOLVERS = ("ddim", "dpmpp_2m", "unipc")


def _save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {path}")
    return path


def _machine() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}


# ----------------------------------------------------------------------------- 1. exact mixtures
#: the recipes of the exact study (chosen on the TUNE seeds)
EXACT_RECIPES = {
    "cd": {"diffusion": {"parameterization": "edm", "schedule": {"kind": "linear"}, "training": "continuous",
                         "sigma_data": 1.0},
           "objective": {"name": "cd", "levels": 18, "solver": "heun"}},
    "ct": {"diffusion": {"parameterization": "edm", "schedule": {"kind": "linear"}, "training": "continuous",
                         "sigma_data": 1.0},
           "objective": {"name": "ct", "levels": 160, "levels_start": 10}},
    "shortcut": {"diffusion": {"training": "flow"}, "objective": {"name": "shortcut", "max_steps": 64}},
}


def exact_study(seed: int, methods, steps: int, n: int = 1000, lr: float = 2e-3) -> list[dict]:
    from fewstep_toy import TimeMLP, mixture, train

    from diffuse.core.data.space import DenseSpace
    from diffuse.core.process.diffusion import Diffusion
    from diffuse.core.process.flowmap import time_pair
    from diffuse.core.process.gaussian import energy_distance
    from diffuse.core.process.objectives import build_objective, make_denoiser, objective_options
    from diffuse.core.sampling.common import prior_sample
    from diffuse.core.sampling.grids import time_grid
    from diffuse.core.sampling.registry import SAMPLERS

    space = DenseSpace()
    gm = mixture(seed)
    truth = gm.sample(4000, torch.Generator().manual_seed(10_000 + seed))
    rows = []
    for method in methods:
        recipe = EXACT_RECIPES[method]
        diff = Diffusion(recipe["diffusion"])
        schedule = diff.schedule
        x_T = prior_sample(schedule, space, torch.zeros(n, gm.D, dtype=F64), 1.0,
                           torch.Generator().manual_seed(20_000 + seed))
        exact_den = gm.denoiser(schedule)
        exact = SAMPLERS["dpmpp_3m"].fn(exact_den, x_T, time_grid(schedule, 400, "logsnr" if schedule.path is None
                                                                    else "uniform"), schedule=schedule, space=space)
        record, _ = objective_options(recipe["objective"])
        torch.manual_seed(seed)
        model = make_denoiser(recipe["objective"], diff, TimeMLP(dim=gm.D, time_inputs=record.time_inputs))
        teacher = gm.conditional_model(schedule) if record.teacher else None
        objective = build_objective(recipe["objective"], diff, teacher, steps)
        t0 = time.process_time()
        model = train(objective, model, gm, steps, lr=lr, seed=seed)
        cpu = time.process_time() - t0
        for nfe in (1, 2, 4):
            grid = time_grid(schedule, nfe, "uniform")
            fn = SAMPLERS[record.sampler].fn
            with torch.no_grad():
                den = lambda x, t: model(x.float(), t, space=space)   # noqa: E731
                y = fn(den, x_T.float(), grid, schedule=schedule, space=space,
                       generator=torch.Generator().manual_seed(30_000 + seed)).double()
            row = {"seed": seed, "method": method, "nfe": nfe, "train_steps": steps, "train_cpu_s": round(cpu, 1),
                   "energy": energy_distance(y, truth)}
            if nfe == 1 or SAMPLERS[record.sampler].deterministic:
                row["map_rmse"] = float(((y - exact) ** 2).sum(1).mean().sqrt())
            rows.append(row)
        for solver in SOLVERS:          # the exact denoiser with each solver, same noise
            for nfe in (1, 2, 4):
                y = SAMPLERS[solver].fn(exact_den, x_T, time_grid(schedule, nfe, "auto" if schedule.path is None
                                                                   else "uniform"), schedule=schedule, space=space)
                rows.append({"seed": seed, "method": f"{solver} (exact, {'flow' if schedule.path else 'vp'})",
                             "nfe": nfe, "energy": energy_distance(y, truth),
                             "map_rmse": float(((y - exact) ** 2).sum(1).mean().sqrt())})
        floor = energy_distance(exact, truth)
        rows.append({"seed": seed, "method": f"exact map ({'flow' if schedule.path else 'vp'})", "nfe": 400,
                     "energy": floor, "map_rmse": 0.0})
        for r in rows[-(3 * len(SOLVERS) + 4):]:
            print(json.dumps(r), flush=True)
    return rows


def _mean_table(rows: list[dict]) -> str:
    keys = sorted({(r["method"], r["nfe"]) for r in rows}, key=lambda k: (k[0], k[1]))
    out = ["| method | evaluations | map RMSE | energy distance |", "|---|---|---|---|"]
    for method, nfe in keys:
        sel = [r for r in rows if r["method"] == method and r["nfe"] == nfe]
        rm = [r["map_rmse"] for r in sel if "map_rmse" in r]
        en = [r["energy"] for r in sel]
        out.append(f"| {method} | {nfe} | {sum(rm) / len(rm):.3f} | {sum(en) / len(en):.4f} |" if rm else
                   f"| {method} | {nfe} | (stochastic) | {sum(en) / len(en):.4f} |")
    return "\n".join(out)


def run_exact(args) -> None:
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        rows += exact_study(seed, args.methods.split(","), args.steps)
    table = _mean_table(rows)
    print(table)
    _save(f"bench_fewstep_exact{args.tag}", {"seeds": seeds, "steps": args.steps, "recipes": EXACT_RECIPES,
                                             "machine": _machine(), "rows": rows, "table": table})


# ----------------------------------------------------------------------------- 2. a domain
def _load(source: str):
    import diffuse.api as api

    if source.startswith("pretrained:"):
        return api.load_pretrained(source.split(":", 1)[1], device="cpu")
    return api.load(source, device="cpu")


def _sample(model, num, sampler, steps, seed, cond, batch_size, spacing=None):
    t0 = time.perf_counter()
    c0 = time.process_time()
    samples = model.sample(num, sampler=sampler, steps=steps, seed=seed, cond=cond, batch_size=batch_size,
                           spacing=spacing)
    return samples, time.perf_counter() - t0, time.process_time() - c0


def run_domain(args) -> None:
    torch.set_num_threads(args.threads)
    teacher = _load(args.teacher)
    reference = teacher.reference_data()
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]

    def conditions(model, seed):
        if args.cond == "train":
            return model.training_conditions(args.num, seed)
        return None

    def record(name, model, sampler, steps, evals, seed, spacing=None):
        cond = conditions(teacher, seed)
        samples, wall, cpu = _sample(model, args.num, sampler, steps, seed, cond, args.batch_size, spacing)
        metrics = teacher.domain.metrics(samples, reference)
        row = {"model": name, "sampler": sampler, "steps": steps, "evaluations": evals, "seed": seed, "num": args.num,
               "cond": args.cond, "sample_s_per_item": wall / args.num, "sample_cpu_s_per_item": cpu / args.num,
               **{k: float(v) for k, v in metrics.items()}}
        rows.append(row)
        print(json.dumps(row), flush=True)

    from diffuse.core.sampling.registry import sampler_record

    for seed in seeds:
        for solver in (args.solvers.split(",") if args.solvers else []):
            per = sampler_record(solver).evals_per_step or 1
            for nfe in [int(n) for n in args.nfe.split(",")]:
                steps = max(1, nfe // per)
                record("teacher", teacher, solver, steps, steps * per, seed)
        for run in (args.few.split(",") if args.few else []):
            model = _load(run)
            sampler, default = model.default_sampling()
            for steps in [int(n) for n in args.few_steps.split(",")]:
                record(Path(run).name, model, sampler, steps, steps, seed, model.objective_spacing(sampler))
    name = args.name or Path(args.teacher.replace("pretrained:", "")).name
    _save(f"bench_fewstep_domain_{name}", {"teacher": args.teacher, "few": args.few, "num": args.num,
                                           "cond": args.cond, "machine": _machine(), "rows": rows})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    ex = sub.add_parser("exact")
    ex.add_argument("--seeds", default="10,11,12,13,14,15")
    ex.add_argument("--methods", default="cd,ct,shortcut")
    ex.add_argument("--steps", type=int, default=2000)
    ex.add_argument("--threads", type=int, default=1)
    ex.add_argument("--tag", default="")
    dm = sub.add_parser("domain")
    dm.add_argument("--teacher", required=True)
    dm.add_argument("--few", default="")
    dm.add_argument("--few-steps", default="1,2,4,8")
    dm.add_argument("--solvers", default=",".join(SOLVERS))
    dm.add_argument("--nfe", default="1,2,4,8,16,50")
    dm.add_argument("--num", type=int, default=500)
    dm.add_argument("--batch-size", type=int, default=100)
    dm.add_argument("--cond", choices=("train", "none"), default="none")
    dm.add_argument("--seeds", default="0")
    dm.add_argument("--threads", type=int, default=1)
    dm.add_argument("--name", default="")
    args = ap.parse_args()
    {"exact": run_exact, "domain": run_domain}[args.part](args)


if __name__ == "__main__":
    main()
