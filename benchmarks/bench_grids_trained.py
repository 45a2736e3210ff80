"""Default grids on trained models: the check beside ``bench_grids.py``'s exact problems.

    python benchmarks/bench_grids_trained.py [--out /tmp/grids_trained] [--threads 1]
        [--cases vp,edm,pretrained] [--train-steps 300] [--base-channels 16] [--num 256]

Trains two image U-Nets on the bundled digits (by default small ones: base width 16, 300 steps at
batch 32, about a minute each on one thread): a VP one (DDPM linear chain, v-prediction) and an
EDM one (``--training edm --schedule sigma``); ``pretrained`` takes the shipped image model
(``diffuse.load_pretrained("image")``: VP, v-prediction, 3,000 steps, FID 33) instead of training.
Then draws ``--num`` samples from the same noise (seed 1) for each sampler, budget and spacing
and scores FID / KID x1000 on the LeNet features against the held-out digits
(``DiffusionModel.evaluate``). The 300-step models are far from converged, so differences of a
few FID are noise (KID's own std is 12-25); ``--train-steps 3000 --base-channels 32`` (the
pretrained recipe's length and the default width) and the pretrained model are the better
judges. What this decides is whether a grid chosen on exact problems holds on a real network
(README, "Default grids").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from diffuse import api

TRAIN = {"batch_size": 32, "eval_samples": 0}     # with --train-steps; --base-channels sets the width
CASES = {
    "pretrained": ({}, [("ddim", n) for n in (5, 6, 10, 20)] + [(s, n) for s in ("unipc", "dpmpp_2m") for n in (5, 10, 20)]
                   + [("dpmpp_3m", 10), ("dpmpp_3m", 20)], ("trailing", "auto")),
    "vp": ({}, [("dpmpp_3m", 10), ("dpmpp_3m", 20), ("unipc", 10), ("dpmpp_2m", 10), ("ddim", 10)], ("trailing", "auto")),
    "edm": ({"training": "edm", "schedule": {"kind": "sigma"}},
            [(s, n) for s in ("unipc", "dpmpp_2m") for n in (5, 10, 20)], ("karras", "logsnr", "auto")),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/grids_trained", help="folder for the two run folders and results.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num", type=int, default=256, help="samples per sampler, budget and spacing")
    ap.add_argument("--cases", default="vp,edm", help=f"comma-separated, of {','.join(CASES)}")
    ap.add_argument("--train-steps", type=int, default=300, help="training steps of the vp / edm models")
    ap.add_argument("--base-channels", type=int, default=16, help="U-Net base width of the vp / edm models")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if args.threads < 1 or args.num < 2 or args.train_steps < 1 or args.base_channels < 1:
        ap.error("--threads, --train-steps and --base-channels must be >= 1 and --num >= 2")
    if not cases or any(c not in CASES for c in cases):
        ap.error(f"--cases takes a comma-separated list of {', '.join(CASES)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        ap.error(f"--out {out} is a file; give a folder")
    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model": {"base_channels": args.base_channels},
              "train": {**TRAIN, "steps": args.train_steps}}
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for kind in cases:
        diffusion, runs, spacings = CASES[kind]
        if kind == "pretrained":
            model = api.load_pretrained("image", device="cpu")
        else:
            run = out / kind
            if not (run / "checkpoint").exists():
                t0 = time.perf_counter()
                api.train("image", out=run, config=config, progress=False,
                          diffusion={"parameterization": "v", **diffusion} if kind == "vp" else diffusion)
                print(f"[{kind}] trained in {time.perf_counter() - t0:.0f} s", flush=True)
            model = api.load(run, device="cpu")
        for sampler, steps in runs:
            for sp in spacings:
                samples = model.sample(args.num, sampler=sampler, steps=steps, spacing=sp, seed=1)
                r = model.evaluate(args.num, samples=samples)
                results[f"{kind}|{sampler}|{steps}|{sp}"] = {k: float(r[k]) for k in ("fid", "kid") if k in r}
                print(f"[{kind}] {sampler:9s} {steps:3d} NFE {sp:9s} FID {float(r['fid']):6.1f}  KID {float(r['kid']):6.1f}",
                      flush=True)
                results_file.write_text(json.dumps(results, indent=1))
    print(f"wrote {results_file}")


if __name__ == "__main__":
    main()
