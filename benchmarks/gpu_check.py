"""One-shot GPU check: every domain's default model and a large one trained for a fixed number of
steps on the bundled data with bf16 autocast (channels-last for images), through ``diffuse.api``
exactly as ``diffuse train`` runs them.

For each case it records: items/s over the second half of the run (after warm-up), peak CUDA
memory (``torch.cuda.max_memory_allocated``), the loss of the first and last logged windows (the
check: it falls), and whether samples drawn from the trained model (DDIM, 20 steps) are finite.
An optional case compiles the default image U-Net (``train.compile``). Cases run in order until
``--budget-s`` is spent (the rest are recorded as skipped), so the whole script stays within a
fixed time (< 8 minutes on one H200 with the defaults).

    bash benchmarks/gpu_check.sh                         # on a GPU machine: writes benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check.json   # a tiny CPU run: checks the script works

Writes one JSON file (``--out``) and prints a table. Exit code 1 when a case fails its checks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _import_diffuse():
    """``diffuse`` from this checkout, whatever else is installed (the repository root is the
    package: it is linked as ``diffuse`` under a temporary folder put first on the path)."""
    try:
        import diffuse
        if Path(diffuse.__file__).resolve().parent == ROOT:
            return
        for name in [m for m in sys.modules if m == "diffuse" or m.startswith("diffuse.")]:
            del sys.modules[name]
    except ImportError:
        pass
    link_dir = Path(tempfile.mkdtemp(prefix="diffuse-link-"))
    (link_dir / "diffuse").symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(link_dir))
    import diffuse
    assert Path(diffuse.__file__).resolve().parent == ROOT, diffuse.__file__


#: (domain, name, model config, global batch size); the defaults are the domains' own
CASES = [
    ("image", "default", None, 32),
    ("image", "large", {"base_channels": 128, "channel_mult": [1, 2, 2], "num_blocks": 2, "attn_levels": [1, 2],
                        "head_dim": 64, "groups": 32, "dropout": 0.0}, 128),
    ("audio", "default", None, None),
    ("audio", "large", {"preset": "large"}, 16),
    ("molecules", "default", None, None),
    ("molecules", "large", {"preset": "edm"}, 64),
    ("image", "default+compile", None, 32),
]
#: the same cases, shrunk for ``--cpu-smoke``
SMOKE_MODELS = {
    "image": {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [1], "groups": 4,
              "head_dim": 8},
    "audio": {"channels": [4, 8], "factors": [4], "num_res_blocks": 1, "dilations": [1], "attn_levels": [-1],
              "heads": 1},
    "molecules": {"preset": "tiny"},
}


def run_case(domain: str, name: str, model, batch_size, steps: int, device: str, smoke: bool, root: Path):
    import torch
    import diffuse.api as api

    overrides = dict(steps=steps, warmup_steps=max(1, steps // 10), log_every=max(1, steps // 20),
                     checkpoint_every=0, final_eval=False, eval_samples=0, device=device, seed=0,
                     precision="bf16", channels_last=domain == "image", compile=name.endswith("+compile"),
                     lr=1e-3 if domain == "image" else None)
    if batch_size is not None:
        overrides["batch_size"] = batch_size if not smoke else min(batch_size, 8)
    if smoke:
        overrides["batch_size"] = 4
        model = SMOKE_MODELS[domain]
    config = {"model": model} if model else None
    out = root / f"{domain}-{name}"
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = api.train(domain, out=out, progress=False, config=config, **overrides)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in logs if "loss" in r]
    half = logs[len(logs) // 2:] or logs
    rate = sum(r["samples_per_s"] for r in half) / len(half)
    k = max(1, min(3, len(logs) // 3))
    first = sum(r["loss"] for r in logs[:k]) / k
    last = sum(r["loss"] for r in logs[-k:]) / k
    model_obj = api.load(out, device=device)
    params = sum(p.numel() for p in model_obj.denoiser.parameters())
    samples = model_obj.sample(4 if smoke else 16, sampler="ddim", steps=4 if smoke else 20, seed=0)
    finite = bool(torch.isfinite(samples.x.float()).all())
    checks = {"loss_falls": last < first, "loss_finite": math.isfinite(res.final_loss), "samples_finite": finite}
    # 3 smoke steps are too few for the loss to fall reliably: there it is recorded, not required
    required = {k: v for k, v in checks.items() if not (smoke and k == "loss_falls")}
    batch = json.loads((out / "config.json").read_text())["train"]["batch_size"]
    return {"domain": domain, "model": name, "parameters": params, "batch_size": batch, "steps": steps,
            "seconds": round(seconds, 2), "items_per_s": round(rate, 1),
            "peak_cuda_mib": None if peak is None else round(peak, 1), "loss_first": first, "loss_last": last,
            **checks, "ok": all(required.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per case (default 300)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new cases after this many seconds")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny models, 3 steps, on CPU: checks the script itself")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --cpu-smoke)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    args = ap.parse_args(argv)
    _import_diffuse()
    import torch

    device = args.device or ("cpu" if args.cpu_smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device here; use --cpu-smoke to check the script on CPU", file=sys.stderr)
        return 2
    steps = 3 if args.cpu_smoke else args.steps
    if args.cpu_smoke:
        torch.set_num_threads(1)
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
           "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
           "cpu_smoke": args.cpu_smoke, "steps": steps}
    results, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="diffuse-gpu-check-") as tmp:
        for domain, name, model, batch in CASES:
            if args.cpu_smoke and name.endswith("+compile"):
                results.append({"domain": domain, "model": name, "skipped": "compile is not smoke-tested on CPU "
                                "(inductor takes minutes there)"})
                continue
            if time.perf_counter() - start > args.budget_s:
                results.append({"domain": domain, "model": name, "skipped": "time budget spent"})
                continue
            try:
                row = run_case(domain, name, model, batch, steps, device, args.cpu_smoke, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - record and go on with the other cases
                row = {"domain": domain, "model": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                       "trace": traceback.format_exc(limit=4)}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
    report = {"environment": env, "total_seconds": round(time.perf_counter() - start, 1), "cases": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2))
    os.replace(tmp_out, args.out)
    print(f"\n{'domain':<10} {'model':<16} {'params':>10} {'batch':>6} {'items/s':>10} {'peak MiB':>9} "
          f"{'loss first->last':>18}  ok")
    for r in results:
        if "skipped" in r or "error" in r:
            print(f"{r['domain']:<10} {r['model']:<16} {r.get('skipped') or r.get('error')}")
            continue
        peak = "-" if r["peak_cuda_mib"] is None else f"{r['peak_cuda_mib']:.0f}"
        print(f"{r['domain']:<10} {r['model']:<16} {r['parameters']:>10,} {r['batch_size']:>6} "
              f"{r['items_per_s']:>10.1f} {peak:>9} {r['loss_first']:>8.4f} -> {r['loss_last']:<7.4f}  {r['ok']}")
    print(f"wrote {args.out} ({report['total_seconds']} s)")
    return 0 if all(r.get("ok", True) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
