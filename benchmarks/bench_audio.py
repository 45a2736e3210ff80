"""Audio domain benchmark: training throughput, sampling real-time factor, peak memory, and
(with ``--quality RUN``) Frechet distances of a trained model vs an untrained one vs white noise.

    python benchmarks/bench_audio.py                       # speed on the best device (cuda if present)
    python benchmarks/bench_audio.py --device cpu --preset small --train-steps 10
    python benchmarks/bench_audio.py --quality runs/audio  # FD table for a trained run folder
    python benchmarks/bench_audio.py --compare --device cpu --threads 2   # vs audio-diffusion-pytorch

``--compare``: our 1-D U-Net (the ``small`` preset, 751 k parameters, unconditional) against
audio-diffusion-pytorch's ``UNetV0`` (a-unet) built to the same depth, factors, blocks per level
and attention placement at equal parameter count (channels 16-32-64-112, modulation width 32:
759 k parameters), side by side in one process: training (v-objective on the cosine path, MSE,
AdamW, the same batch of bundled clips) in alternating timed chunks, and DDIM sampling with 50
steps through the same sampler (``core.sampling.ancestral.ddim``), with the real-time factor of each.
audio-diffusion-pytorch is optional (``pip install audio-diffusion-pytorch``); without it the
comparison is skipped with a note.

Speed: a training step is one AdamW step on a batch of random clips of the bundled data
(``Diffusion.training_losses``, bf16 autocast on CUDA); throughput is clips/s and audio
seconds/s. Sampling runs DDIM with 50 steps (``core.sampling.generate``) and reports the real-time
factor = audio seconds produced per wall-clock second (> 1 is faster than real time). Peak
memory is ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak RSS on CPU.
Prints a table and writes ``benchmarks/results/audio.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

from diffuse.core.config import DiffusionConfig
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.data.domain import Batch
from diffuse.core.sampling.generate import generate
from diffuse.core.data.space import DenseSpace
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
    dom = dom.bind(info)
    diff = Diffusion(DiffusionConfig(**dom.default_diffusion()))
    torch.manual_seed(0)
    den = diff.denoiser(dom.build_backbone({"preset": args.preset})).to(device)
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
        generate(den, dom, min(2, args.sample_num), sampler="ddim", steps=2, device=device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        samples = generate(den, dom, args.sample_num, sampler="ddim", steps=args.ddim_steps,
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


def _peer_unet() -> torch.nn.Module:
    """audio-diffusion-pytorch's UNetV0 sized like our ``small`` preset, behind our backbone contract."""
    from audio_diffusion_pytorch import UNetV0

    net = UNetV0(dim=1, in_channels=1, channels=[16, 32, 64, 112], factors=[1, 4, 4, 4], items=[2, 2, 2, 2],
                 attentions=[0, 0, 1, 1], attention_heads=4, attention_features=16, modulation_features=32,
                 resnet_groups=8)

    class Wrapped(torch.nn.Module):  # f(x, noise_level) with noise_level = 1000 t; UNetV0 takes t in [0, 1]
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, noise_level, cond=None, space=None):
            return self.net(x, time=noise_level.reshape(-1).expand(x.shape[0]) / 1000.0)

    return Wrapped()


def bench_compare(args: argparse.Namespace) -> dict:
    """Ours vs audio-diffusion-pytorch's UNetV0 at equal parameter count: training and sampling."""
    import math
    import statistics

    from diffuse.core.process.denoiser import Denoiser
    from diffuse.core.process.parameterization import VParam
    from diffuse.core.sampling.ancestral import ddim
    from diffuse.core.sampling.common import prior_sample
    from diffuse.core.sampling.grids import time_grid
    from diffuse.core.process.schedule import CosineSchedule
    from diffuse.domains.audio.backbones import resolve_model
    from diffuse.domains.audio.unet import UNet1D

    device = torch.device("cpu" if args.device == "auto" else args.device)
    dom = AudioDomain()
    ds = dom.load_data(None, {**dom.default_data(), "sample_rate": args.rate, "clip_seconds": args.clip_seconds})
    info = ds.info()
    g = torch.Generator().manual_seed(0)
    x0 = ds.batch(torch.randint(0, len(ds), (args.batch_size,), generator=g), g).x.to(device)
    models = {}
    torch.manual_seed(0)
    models["ours"] = UNet1D(info["channels"], **resolve_model({"preset": args.preset})).to(device)
    try:
        models["audio-diffusion-pytorch"] = _peer_unet().to(device)
    except ImportError:
        print("note: audio-diffusion-pytorch is not installed (pip install audio-diffusion-pytorch); "
              "the comparison is skipped")
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=True) for k, m in models.items()}

    def step(k: str) -> None:
        m = models[k]
        t = torch.rand(x0.shape[0], device=device, generator=None)
        a, s_ = torch.cos(t * math.pi / 2)[:, None, None], torch.sin(t * math.pi / 2)[:, None, None]
        eps = torch.randn_like(x0)
        loss = torch.nn.functional.mse_loss(m(a * x0 + s_ * eps, t * 1000), a * eps - s_ * x0)
        opts[k].zero_grad(set_to_none=False)
        loss.backward()
        opts[k].step()

    def chunk(k: str, n: int) -> float:
        models[k].train()
        t0 = time.perf_counter()
        for _ in range(n):
            step(k)
        _sync(device)
        return args.batch_size * n / (time.perf_counter() - t0)

    for k in models:
        chunk(k, args.warmup)
    rates: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.repeats):
        for k in models:
            rates[k].append(chunk(k, args.train_steps))
        print(f"  chunk {i + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()) +
              " train clips/s", flush=True)
    sched = CosineSchedule()
    clip_sec = info["length"] / info["sample_rate"]
    rtf: dict[str, list[float]] = {k: [] for k in models}
    like = torch.zeros(args.sample_num, info["channels"], info["length"], device=device)
    space = DenseSpace()
    for _ in range(2):
        for k, m in models.items():
            m.eval()
            den = Denoiser(m, sched, VParam())
            with torch.inference_mode():
                x = prior_sample(sched, space, like, generator=torch.Generator(device).manual_seed(1))
                _sync(device)
                t0 = time.perf_counter()
                out = ddim(den.bind(space), x, time_grid(sched, args.ddim_steps), schedule=sched, space=space)
                _sync(device)
            assert torch.isfinite(out).all()
            rtf[k].append(args.sample_num * clip_sec / (time.perf_counter() - t0))
    res = {"device": str(device), "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
           "batch_size": args.batch_size, "clip_seconds": clip_sec, "sample_rate": info["sample_rate"],
           "ddim_steps": args.ddim_steps, "sample_num": args.sample_num, "models": {}}
    for k, m in models.items():
        res["models"][k] = {"params": sum(p.numel() for p in m.parameters()),
                            "train_clips_per_s": statistics.median(rates[k]), "train_chunks": rates[k],
                            "sample_rtf": statistics.median(rtf[k]), "sample_rtf_runs": rtf[k]}
    if len(models) == 2:
        a, b = res["models"]["ours"], res["models"]["audio-diffusion-pytorch"]
        res["train_ratio"] = a["train_clips_per_s"] / b["train_clips_per_s"]
        res["train_ratio_paired_median"] = statistics.median(
            x / y for x, y in zip(rates["ours"], rates["audio-diffusion-pytorch"]))
        res["sample_ratio"] = a["sample_rtf"] / b["sample_rtf"]
    return res


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
    rows[f"trained, DDIM {args.ddim_steps}"] = dom.metrics(trained, ref)
    stochastic = model.sample(n, sampler="ddpm", steps=args.ddim_steps, seed=1)
    rows[f"trained, DDPM {args.ddim_steps}"] = dom.metrics(stochastic, ref)
    untrained = model.untrained(seed=0).sample(n, sampler="ddim", steps=args.ddim_steps, seed=1)
    rows[f"untrained, DDIM {args.ddim_steps}"] = dom.metrics(untrained, ref)
    g = torch.Generator().manual_seed(2)
    noise = torch.rand(n, info["channels"], info["length"], generator=g) * 2 - 1
    rows["white noise (peak 0.95)"] = dom.metrics(Batch(0.95 * noise, DenseSpace()), ref)
    cfg = model.config
    dataset = dom.load_data(cfg.data, cfg.data_options)
    train_set, _ = dataset.split(cfg.train.holdout_fraction, seed=cfg.train.seed)
    k = min(n, len(train_set))
    real = train_set.batch(torch.arange(k), torch.Generator().manual_seed(0))
    rows[f"real training clips (n={k})"] = dom.metrics(real, ref)
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
    p.add_argument("--repeats", type=int, default=5, help="--compare: alternating timed chunks per model")
    p.add_argument("--compare", action="store_true", help="ours vs audio-diffusion-pytorch's UNetV0 (equal params)")
    p.add_argument("--quality", type=Path, default=None, help="a trained audio run folder")
    p.add_argument("--write-samples", action="store_true", help="with --quality: write the trained samples")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "audio.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.compare:
        res = bench_compare(args)
        print(f"1-D U-Net vs audio-diffusion-pytorch UNetV0 on {res['device']} ({res['threads']} threads, load average "
              f"{res['load_average'][0]:.1f}), {res['sample_rate']} Hz x {res['clip_seconds']} s, train batch "
              f"{res['batch_size']}, DDIM {res['ddim_steps']} x {res['sample_num']} clips")
        print(f"{'model':26s} {'params':>9s} {'train clips/s':>14s} {'sampling RTF':>13s}")
        for k, m in res["models"].items():
            print(f"{k:26s} {m['params']:9d} {m['train_clips_per_s']:14.1f} {m['sample_rtf']:13.3f}")
        if "train_ratio" in res:
            print(f"ours / UNetV0: training {res['train_ratio']:.2f}x (paired chunks {res['train_ratio_paired_median']:.2f}x), "
                  f"sampling {res['sample_ratio']:.2f}x (target >= 1.2x); sampling real time at 50 steps: "
                  f"{'yes' if res['models']['ours']['sample_rtf'] > 1 else 'no'} (RTF {res['models']['ours']['sample_rtf']:.2f})")
        out = args.out.with_name("audio_compare.json")
    elif args.quality is not None:
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
