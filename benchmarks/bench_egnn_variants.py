"""Relative training-step cost of molecule model variants (the README's recipe-screen table).

The variants' training steps (forward, backward, AdamW) run interleaved in one process on the
same batches of real molecules, so background load falls on all of them alike; prints seconds
per step, the cost relative to the first variant and the parameter counts.

    python benchmarks/bench_egnn_variants.py --data qm9 --threads 1      # the README's figures
    python benchmarks/bench_egnn_variants.py --variants '{"base": {}, "L8": {"layers": 8}}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import diffuse.api as api
from diffuse.api import _load_data

DEFAULT_VARIANTS = {"base": {}, "L6": {"layers": 6}, "H96": {"hidden": 96}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="molecule data (default: the bundled QM9 subset; qm9 = full QM9)")
    ap.add_argument("--variants", default=None, help="JSON {name: model overrides of the small preset}")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
    config = api.make_config("molecules", data=args.data)
    data = _load_data(api.get_domain("molecules"), config)
    g = torch.Generator().manual_seed(0)
    batches = [data.batch(torch.randint(0, len(data), (args.batch_size,), generator=g), g) for _ in range(4)]
    models = {k: api.build("molecules", data.info(), model={"preset": "small", **v}, device="cpu")
              for k, v in variants.items()}
    opts = {k: torch.optim.AdamW(m.denoiser.parameters(), 1e-4) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for k, m in models.items():
            t0 = time.perf_counter()
            for b in batches:
                loss = m.diffusion.training_losses(m.denoiser, b, g).mean()
                opts[k].zero_grad()
                loss.backward()
                opts[k].step()
            times[k].append((time.perf_counter() - t0) / len(batches))
    med = {k: statistics.median(v[1:] or v) for k, v in times.items()}   # the first round warms up
    first = next(iter(med.values()))
    result = {k: {"s_per_step": round(v, 4), "relative": round(v / first, 2),
                  "params": sum(p.numel() for p in models[k].denoiser.parameters())} for k, v in med.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
