"""Molecules with bonds: training with snapshots, the fixed evaluation protocol under both metric
protocols, quality versus training compute against the bond-free model, and the sampling cost.

Four modes (run them in this order; each writes JSON under ``benchmarks/results/``):

``train``  the recipe (``recipes/molecules-bonds.json``) run in pauses of ``--every`` steps
           (``diffuse.api.train(stop_at=...)`` then ``resume``: exactly the weights of an
           uninterrupted run), a copy of the checkpoint kept at every pause
           (``RUN/snapshots/step_N``, each a run folder ``diffuse.api.load`` reads) with its
           training cost: the process's CPU seconds (training, its batches, checkpoints and the short
           evaluations; the machine is shared, so CPU time, not wall time, is the measure) and the
           training windows logged in ``metrics.jsonl`` (wall)::

               OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_molecules_bonds.py train \\
                   --config recipes/molecules-bonds.json --out runs/molecules-bonds --every 2000

``evaluate`` the fixed protocol: ``--num`` molecules for each of ``--seeds`` (seeds not used for any
           choice), the given sampler / steps / categorical rule, figures under both protocols
           (bonds generated; EDM's distance rule on the same samples) in two tables, mean over the
           seeds (weighted by samples) and each seed; novelty against the training split::

               python benchmarks/bench_molecules_bonds.py evaluate --pretrained molecules-bonds \\
                   --seeds 2,3,4,5,6 --num 256

``compute`` every snapshot of a ``train`` run evaluated the same way (fewer samples), beside the
           bond-free recipe's figures at its training seconds (EDM's protocol only: it generates no
           bonds), as one table per protocol.

``speed``  seconds per molecule of sampling at each model's default steps, side by side in one run
           on the same chunks: the bond model (its default sampler and steps) and the bond-free
           shipped model (DDPM-500), one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _train_seconds(run: Path) -> float:
    """Training seconds (wall) summed over ``metrics.jsonl``: each training record covers the steps
    since the previous one at its logged ``samples_per_s`` (as ``bench_quality_compute.py``)."""
    batch = int(json.loads((run / "config.json").read_text())["train"]["batch_size"])
    total, prev = 0.0, 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "samples_per_s" not in rec or "step" not in rec:
            continue
        n, prev = rec["step"] - prev, rec["step"]
        if n > 0 and rec["samples_per_s"] > 0:
            total += n * batch / rec["samples_per_s"]
    return total


def cmd_train(args: argparse.Namespace) -> None:
    import diffuse.api as diffuse
    from diffuse.core.training.checkpoint import load_checkpoint

    run = Path(args.out)
    total = int(json.loads(Path(args.config).read_text())["train"]["steps"]) if args.steps is None else args.steps
    step, cpu = 0, 0.0
    if (run / "config.json").exists():
        step = int(load_checkpoint(run)["meta"].get("step", 0))
        done = sorted((run / "snapshots").glob("step_*/snapshot.json"), key=lambda p: int(p.parent.name[5:]))
        cpu = json.loads(done[-1].read_text())["cpu_seconds"] if done else 0.0
    while step < total:
        nxt = min(total, (step // args.every + 1) * args.every)
        t0 = time.process_time()
        if step == 0 and not (run / "config.json").exists():
            diffuse.train("molecules", config=args.config, out=run, stop_at=nxt, progress=False,
                          **({"steps": total} if args.steps is not None else {}))
        else:
            diffuse.train("molecules", resume=run, stop_at=nxt, progress=False)
        step = int(load_checkpoint(run)["meta"].get("step", 0))
        snap = run / "snapshots" / f"step_{step}"
        if snap.exists():
            shutil.rmtree(snap)
        snap.mkdir(parents=True)
        shutil.copy(run / "config.json", snap / "config.json")
        shutil.copytree(run / "checkpoint", snap / "checkpoint")
        cpu += time.process_time() - t0
        record = {"step": step, "cpu_seconds": cpu, "train_seconds_logged": _train_seconds(run),
                  "load_avg": os.getloadavg()}
        (snap / "snapshot.json").write_text(json.dumps(record, indent=2))
        print(json.dumps(record), flush=True)


def _evaluate(model: Any, seeds: list[int], num: int, **options: Any) -> dict[str, Any]:
    reference = model.reference_data()
    per_seed, times = {}, []
    for seed in seeds:
        t0 = time.perf_counter()
        samples = model.sample(num, seed=seed, **options)
        times.append(time.perf_counter() - t0)
        per_seed[seed] = model.domain.metrics(samples, reference)
    keys = [k for k in per_seed[seeds[0]] if k != "num_molecules"]
    mean = {k: sum(per_seed[s][k] for s in seeds) / len(seeds) for k in keys}
    return {"mean": mean, "seeds": per_seed, "sample_seconds": times}


def _print(title: str, result: dict[str, Any], seeds: list[int]) -> None:
    groups: dict[str, list[str]] = {}
    for k in result["mean"]:
        groups.setdefault(k.rpartition("/")[0], []).append(k)
    for group, keys in groups.items():
        print(f"\n{title} -- {group or 'bonds generated'} protocol")
        print(f"  {'metric':<18}{'mean':>8}" + "".join(f"{'seed ' + str(s):>9}" for s in seeds))
        for k in keys:
            print(f"  {k.rpartition('/')[2]:<18}{result['mean'][k]:>8.4f}"
                  + "".join(f"{result['seeds'][s][k]:>9.4f}" for s in seeds))


def _load(args: argparse.Namespace):
    import diffuse.api as diffuse
    if args.pretrained:
        return diffuse.load_pretrained(args.pretrained, device="cpu")
    return diffuse.load(args.checkpoint, device="cpu")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"sampler": args.sampler, "steps": args.steps}
    if args.categorical:
        out["categorical"] = args.categorical
    return out


def cmd_evaluate(args: argparse.Namespace) -> None:
    model = _load(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    result = _evaluate(model, seeds, args.num, **_options(args))
    result.update(source=args.pretrained or str(args.checkpoint), num=args.num, **_options(args))
    _print(f"{result['source']}: {args.num} molecules x {len(seeds)} seeds, {args.sampler} {args.steps} steps"
           + (f", categorical {args.categorical}" if args.categorical else ""), result, seeds)
    out = Path(args.json or RESULTS / "bench_molecules_bonds_evaluate.json")
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


def cmd_compute(args: argparse.Namespace) -> None:
    import diffuse.api as diffuse
    run = Path(args.checkpoint)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for snap in sorted((run / "snapshots").iterdir(), key=lambda p: int(p.name.split("_")[1])):
        info = json.loads((snap / "snapshot.json").read_text())
        model = diffuse.load(snap, device="cpu")
        res = _evaluate(model, seeds, args.num, **_options(args))
        rows.append({"step": info["step"], "cpu_seconds": info["cpu_seconds"], **res["mean"]})
        print(json.dumps(rows[-1]), flush=True)
    for group, title in (("", "bonds generated"), ("edm", "EDM's distance rule")):
        print(f"\n{title} protocol ({args.num} x {len(seeds)} molecules per point)")
        keys = [k for k in rows[0] if k.rpartition("/")[0] == group and k not in ("step", "cpu_seconds")]
        print(f"  {'step':>6} {'CPU min':>9}" + "".join(f"{k.rpartition('/')[2][:14]:>15}" for k in keys))
        for r in rows:
            print(f"  {r['step']:>6} {r['cpu_seconds'] / 60:>9.1f}" + "".join(f"{r[k]:>15.4f}" for k in keys))
    out = Path(args.json or RESULTS / "bench_molecules_bonds_compute.json")
    out.write_text(json.dumps({"run": str(run), "num": args.num, "seeds": seeds, **_options(args), "points": rows},
                              indent=2))
    print(f"\nwrote {out}")


def cmd_speed(args: argparse.Namespace) -> None:
    import diffuse.api as diffuse
    torch.set_num_threads(1)
    bonds = _load(args)
    plain = diffuse.load_pretrained("molecules", device="cpu")
    rows = {}
    for name, model, opts in (("bonds (" + f"{args.sampler}-{args.steps})", bonds, _options(args)),
                              ("bond-free (ddpm-500)", plain, {"sampler": "ddpm", "steps": 500})):
        model.sample(4, seed=99, **opts)                        # warm-up
        t0 = time.perf_counter()
        model.sample(args.num, seed=0, batch_size=args.num, **opts)
        sec = time.perf_counter() - t0
        rows[name] = {"seconds_per_molecule": sec / args.num, "evaluations": opts["steps"],
                      "parameters": sum(p.numel() for p in model.denoiser.parameters())}
        print(f"  {name:<28} {sec / args.num * 1000:8.1f} ms / molecule  ({opts['steps']} network evaluations, "
              f"{rows[name]['parameters']:,} parameters)", flush=True)
    out = Path(args.json or RESULTS / "bench_molecules_bonds_speed.json")
    out.write_text(json.dumps({"num": args.num, "threads": 1, "load_avg": os.getloadavg(), "rows": rows}, indent=2))
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", default=str(HERE.parent / "recipes" / "molecules-bonds.json"))
    t.add_argument("--out", required=True)
    t.add_argument("--every", type=int, default=2000)
    t.add_argument("--steps", type=int, default=None)
    for name in ("evaluate", "compute", "speed"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", default=None)
        p.add_argument("--pretrained", default=None)
        p.add_argument("--seeds", default="2,3,4,5,6")
        p.add_argument("--num", type=int, default=256 if name == "evaluate" else 128)
        p.add_argument("--sampler", default="ddpm")
        p.add_argument("--steps", type=int, default=100)
        p.add_argument("--categorical", default=None)
        p.add_argument("--json", default=None)
    args = ap.parse_args()
    {"train": cmd_train, "evaluate": cmd_evaluate, "compute": cmd_compute, "speed": cmd_speed}[args.mode](args)


if __name__ == "__main__":
    main()
