"""DiLoCo against synchronous training: loss and bytes all-reduced, 2 processes (gloo, CPU).

    OMP_NUM_THREADS=1 python benchmarks/bench_diloco.py --steps 600 --sync-every 120

Trains the default image recipe (``recipes/image.json``: the 2-D U-Net on the bundled digits,
batch 32, AdamW 1e-3, cosine schedule) shortened to ``--steps`` (the schedule follows the
shortened total) twice with ``diffuse train --nproc 2``: synchronous (DistributedDataParallel,
gradients all-reduced every step) and DiLoCo (``--sync-every H``). The bytes are the ones the
trainer counted (``allreduced_bytes`` in ``metrics.jsonl``: the gradient buckets DDP reduces, the
losses, DiLoCo's outer gradients), not an estimate. The loss is measured on the recipe's held-out
10 % of the data (never trained on; nothing was tuned on it), with the same noise and times for
both runs (``--eval-repeats`` draws per item), for the raw and the EMA weights; the last 50
logged training losses are printed too (the figure outer settings may be chosen on: the
training data). ``--reuse`` measures runs already trained. Writes
``benchmarks/results/diloco-hH-lrLR-mM-STEPS.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def train(out: Path, steps: int, extra: list[str], train_overrides: dict | None = None) -> float:
    recipe = ROOT / "recipes" / "image.json"
    if train_overrides:                      # the recipe with a few train options changed
        cfg = json.loads(recipe.read_text())
        cfg["train"].update(train_overrides)
        recipe = out.with_name(out.name + "-recipe.json")
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "diffuse.cli", "train", "--config", str(recipe),
           "--steps", str(steps), "--nproc", "2", "--device", "cpu", "--eval-samples", "0", "--no-progress",
           "--out", str(out), *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


@torch.no_grad()
def held_out_loss(run: Path, ema: bool, repeats: int, seed: int = 1234) -> float:
    import diffuse.api as api

    model = api.load(run, device="cpu", ema=ema)
    held = model.reference_data()
    total, count = 0.0, 0
    for r in range(repeats):
        gen = torch.Generator().manual_seed(seed + r)
        for idx in torch.arange(len(held)).split(256):
            batch = held.batch(idx, torch.Generator().manual_seed(seed + r))
            losses = model.diffusion.training_losses(model.denoiser, batch, gen)
            total += float(losses.double().sum())
            count += len(idx)
    return total / count


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--sync-every", type=int, default=120)
    parser.add_argument("--outer-lr", type=float, default=0.7, help="DiLoCo's outer learning rate (the paper's 0.7).")
    parser.add_argument("--outer-momentum", type=float, default=0.9, help="Its Nesterov momentum (the paper's 0.9).")
    parser.add_argument("--eval-repeats", type=int, default=4)
    parser.add_argument("--out", default="runs/bench-diloco")
    parser.add_argument("--reuse", action="store_true", help="Measure existing runs without training again.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = Path(args.out)
    outer = {"outer_lr": args.outer_lr, "outer_momentum": args.outer_momentum}
    tag = f"diloco-h{args.sync_every}-lr{args.outer_lr:g}-m{args.outer_momentum:g}"
    runs = {"synchronous": (base / "sync", [], None),
            f"DiLoCo H={args.sync_every}": (base / tag, ["--sync-every", str(args.sync_every)], outer)}
    results = {}
    for name, (run, extra, overrides) in runs.items():
        seconds = (None if args.reuse and (run / "checkpoint").is_dir()
                   else train(run, args.steps, extra, overrides))
        recs = [r for r in records(run) if "loss" in r]
        results[name] = {
            "steps": recs[-1]["step"], "allreduced_bytes": recs[-1]["allreduced_bytes"], "wall_seconds": seconds,
            "train_loss_last50": sum(r["loss"] for r in recs[-50:]) / len(recs[-50:]),
            "held_out_loss_raw": held_out_loss(run, False, args.eval_repeats),
            "held_out_loss_ema": held_out_loss(run, True, args.eval_repeats)}
    sync, dl = results.values()
    summary = {"bytes_ratio": sync["allreduced_bytes"] / dl["allreduced_bytes"],
               **{f"{k}_relative_difference": dl[k] / sync[k] - 1 for k in
                  ("held_out_loss_raw", "held_out_loss_ema", "train_loss_last50")}}
    out = {"recipe": "recipes/image.json", "steps": args.steps, "sync_every": args.sync_every, **outer, "processes": 2,
           "backend": "gloo (CPU)", "runs": results, "summary": summary}
    print(f"{'':<20}{'bytes all-reduced':>20}{'held-out raw':>14}{'held-out EMA':>14}{'train (last 50)':>17}"
          f"{'wall s':>9}")
    for name, r in results.items():
        print(f"{name:<20}{r['allreduced_bytes']:>20,}{r['held_out_loss_raw']:>14.5f}{r['held_out_loss_ema']:>14.5f}"
              f"{r['train_loss_last50']:>17.5f}{(r['wall_seconds'] or float('nan')):>9.0f}")
    print(f"DiLoCo sends {summary['bytes_ratio']:.1f}x fewer bytes; held-out loss {100 * summary['held_out_loss_raw_relative_difference']:+.2f} % "
          f"(raw), {100 * summary['held_out_loss_ema_relative_difference']:+.2f} % (EMA) against synchronous training")
    dest = ROOT / "benchmarks" / "results" / f"{tag}-{args.steps}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
