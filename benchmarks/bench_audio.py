"""Audio domain benchmark: training throughput, sampling real-time factor, peak memory, and
(with ``--quality RUN``) Frechet distances of a trained model vs an untrained one vs white noise.

    python benchmarks/bench_audio.py                       # speed on the best device (cuda if present)
    python benchmarks/bench_audio.py --device cpu --preset small --train-steps 10
    python benchmarks/bench_audio.py --quality runs/audio  # FD table for a trained run folder

Speed: a training step is one AdamW step on a batch of random clips of the bundled data
(``Diffusion.training_losses``, bf16 autocast on CUDA); throughput is clips/s and audio
seconds/s. Sampling runs DDIM with 50 steps (``core.generate``) and reports the real-time
factor = audio seconds produced per wall-clock second (> 1 is faster than real time). Peak
memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak RSS on CPU.
Prints a table and writes ``benchmarks/results/audio.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from diffuse.core.config import DiffusionConfig
from diffuse.core.diffusion import Diffusion
from diffuse.core.domain import Batch
from diffuse.core.generate import generate
from diffuse.core.space import DenseSpace
from diffuse.domains.audio import AudioDomain


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 2 ** 10


def bench_speed(args: argparse.Namespace) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dom = AudioDomain()
    opts = {**dom.default_data(), "sample_rate": args.rate, "clip_seconds": args.clip_seconds}
    ds = dom.load_data(None, opts)
    info = ds.info()
    diff = Diffusion(DiffusionConfig(**dom.default_diffusion()))
    torch.manual_seed(0)
    den = diff.denoiser(dom.build_backbone({"preset": args.preset}, info)).to(device)
    n_params = sum(p.numel() for p in den.parameters())
    use_bf16 = device.type == "cuda" and args.precision != "fp32"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    dev_g = g if device.type == "cpu" else torch.Generator(device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        idx = torch.randint(0, len(ds), (args.batch_size,), generator=g)
        batch = ds.batch(idx, g).to(device)
        with autocast:
            loss = diff.training_losses(den, batch, dev_g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    _sync(device)
    train_s = time.perf_counter() - t0
    train_peak = _peak_mb(device)
    clips_s = args.train_steps * args.batch_size / train_s

    den.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with (torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()):
        generate(den, dom, info, min(2, args.sample_num), sampler="ddim", steps=2, device=device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        samples = generate(den, dom, info, args.sample_num, sampler="ddim", steps=args.ddim_steps,
                           batch_size=args.sample_num, device=device)
        _sync(device)
    sample_s = time.perf_counter() - t0
    clip_sec = info["length"] / info["sample_rate"]
    return {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "precision": "bf16-autocast" if use_bf16 else "fp32",
        "preset": args.preset, "params": n_params, "sample_rate": info["sample_rate"], "clip_seconds": clip_sec,
        "batch_size": args.batch_size, "train_steps": args.train_steps, "train_step_s": train_s / args.train_steps,
        "train_clips_per_s": clips_s, "train_audio_s_per_s": clips_s * clip_sec, "train_peak_mb": train_peak,
        "sample_num": args.sample_num, "ddim_steps": args.ddim_steps, "sample_wall_s": sample_s,
        "sample_rtf": args.sample_num * clip_sec / sample_s, "sample_peak_mb": _peak_mb(device),
        "samples_finite": bool(torch.isfinite(samples.x).all()),
    }


def bench_quality(args: argparse.Namespace) -> dict:
    """Frechet distances against the run's held-out reference of: the trained (EMA) model with
    DDIM (eta 0) and DDPM ancestral sampling on the same grid, the same architecture untrained, peak-normalised white noise, and (as the floor) real training
    clips, all with the same number of clips."""
    import diffuse.api as api

    model = api.load(args.quality, device=args.device)
    ref = model.reference_data()
    dom, info, n = model.domain, model.data_info, args.sample_num
    rows = {}
    t0 = time.perf_counter()
    trained = model.sample(n, sampler="ddim", steps=args.ddim_steps, seed=1)
    wall = time.perf_counter() - t0
    rows[f"trained, DDIM {args.ddim_steps}"] = dom.metrics(trained, ref, info)
    stochastic = model.sample(n, sampler="ddpm", steps=args.ddim_steps, seed=1)
    rows[f"trained, DDPM {args.ddim_steps}"] = dom.metrics(stochastic, ref, info)
    untrained = model.untrained(seed=0).sample(n, sampler="ddim", steps=args.ddim_steps, seed=1)
    rows[f"untrained, DDIM {args.ddim_steps}"] = dom.metrics(untrained, ref, info)
    g = torch.Generator().manual_seed(2)
    noise = torch.rand(n, info["channels"], info["length"], generator=g) * 2 - 1
    rows["white noise (peak 0.95)"] = dom.metrics(Batch(0.95 * noise, DenseSpace()), ref, info)
    cfg = model.config
    dataset = dom.load_data(cfg.data, cfg.data_options)
    train_set, _ = dataset.split(cfg.train.holdout_fraction, seed=cfg.train.seed)
    k = min(n, len(train_set))
    real = train_set.batch(torch.arange(k), torch.Generator().manual_seed(0))
    rows[f"real training clips (n={k})"] = dom.metrics(real, ref, info)
    if args.write_samples:
        model.write(stochastic, Path(args.quality) / "bench_samples")
    return {"run": str(args.quality), "num": n, "trained_sample_wall_s": wall, "reference_clips": len(ref), "ddim_steps": args.ddim_steps, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32"])
    p.add_argument("--preset", default="small")
    p.add_argument("--rate", type=int, default=16000)
    p.add_argument("--clip-seconds", type=float, default=0.5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--sample-num", type=int, default=16)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--quality", type=Path, default=None, help="a trained audio run folder")
    p.add_argument("--write-samples", action="store_true", help="with --quality: write the trained samples")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "audio.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.quality is not None:
        res = bench_quality(args)
        print(f"Frechet distances vs {res['reference_clips']} held-out clips, {res['num']} clips each "
              f"(lower is better)")
        keys = ["fd_logmel", "fd_mfcc", "fd_net", "flatness", "rms_db"]
        print(f"{'set':32s}" + "".join(f"{k:>12s}" for k in keys))
        for name, m in res["rows"].items():
            print(f"{name:32s}" + "".join(f"{m.get(k, float('nan')):12.3f}" for k in keys))
        out = args.out.with_name("audio_quality.json")
    else:
        res = bench_speed(args)
        print(f"audio benchmark on {res['device']} ({res['device_name']}, {res['threads']} threads, {res['precision']}), "
              f"preset {res['preset']} ({res['params'] / 1e6:.2f} M params), {res['sample_rate']} Hz x {res['clip_seconds']} s")
        rows = [("train step (s)", f"{res['train_step_s']:.3f}"),
                ("train clips/s", f"{res['train_clips_per_s']:.1f}"),
                ("train audio-seconds/s", f"{res['train_audio_s_per_s']:.1f}"),
                ("train peak memory (MB)", f"{res['train_peak_mb']:.0f}"),
                (f"sampling RTF, DDIM {res['ddim_steps']} (x real time)", f"{res['sample_rtf']:.3f}"),
                ("sampling wall (s) for " + str(res['sample_num']) + " clips", f"{res['sample_wall_s']:.1f}"),
                ("sampling peak memory (MB)", f"{res['sample_peak_mb']:.0f}")]
        for k, v in rows:
            print(f"  {k:42s} {v:>10s}")
        out = args.out
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
