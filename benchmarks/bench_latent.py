"""Latent vs pixel-space diffusion: cost per step, peak memory, reconstruction and sample quality.

1. ``speed``: one training step (batch 16 images / 4 clips: for the latent model, encoding the
   batch with the frozen autoencoder + the diffusion loss, backward, AdamW) and DDIM sampling
   (10 steps, 8 images / 4 clips; the latent model also decodes) of the domain's DEFAULT backbone in pixel space and
   on the latent of the default autoencoder, at the same output size: 64x64 grayscale images
   (autoencoder f=4, 4 latent channels -> 16x16x4) and 4-second 16 kHz clips (f=64, 16 channels
   -> 1000x16). Pixel and latent runners alternate in short chunks in ONE process (both see the
   same machine load); the table gives medians and the ratio. Peak memory: a fresh process per
   (model, phase), on CPU the peak RSS (VmHWM) minus the RSS once everything is built, on CUDA
   ``torch.cuda.max_memory_allocated``. Untrained weights (speed does not depend on them).
2. ``quality`` (``--quality``): trains each autoencoder for ``--ae-seconds`` (held-out
   reconstruction: image PSNR / L1 on the bundled 28x28 digits, f=4 -> 7x7x4; audio multi-resolution
   STFT and log-mel distances on the bundled 0.5 s one-shots), then a pixel and a latent model
   for the SAME ``--seconds`` of diffusion training each (constant learning rate after warm-up;
   the autoencoder's training time is reported separately), and compares FID / KID (LeNet
   features) and the Frechet audio distances of ``--num`` samples (DDIM, 20 steps) against
   held-out data.
3. molecules (with ``--quality``, when the molecule domain has an autoencoder): held-out share
   of atoms whose element is recovered and position RMSD (Angstrom), from its
   ``reconstruction_metrics``.

    OMP_NUM_THREADS=1 python benchmarks/bench_latent.py [--threads 1] [--quality] [--quick]

Prints tables and writes ``benchmarks/results/bench_latent_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

IMAGE_INFO = {"channels": 1, "height": 64, "width": 64}
AUDIO_INFO = {"channels": 1, "length": 64000, "sample_rate": 16000}
IMAGE_DATA: dict = {}                  # quality: the bundled 28x28 digits (the bundled LeNet's FID)
AUDIO_QUALITY_DATA: dict = {}          # the bundled default (16 kHz, 0.5 s)


# ----------------------------------------------------------------------------- speed
def _domain(name: str, latent: bool, info: dict):
    """The domain bound to ``info``, with an untrained default autoencoder when ``latent``."""
    from diffuse.core.models.latent import LatentDomain
    from diffuse.core.data.registry import get_domain

    base = get_domain(name).bind(info)
    if not latent:
        return base
    torch.manual_seed(1)
    ae = base.build_autoencoder({})
    return LatentDomain(base, ae, None)


class Runner:
    """A pixel or latent model of one domain: its training step and its sampler."""

    def __init__(self, name: str, latent: bool, device: torch.device, batch: int = 16, num: int = 8,
                 ddim_steps: int = 10) -> None:
        from diffuse.core.config import DiffusionConfig
        from diffuse.core.process.diffusion import Diffusion
        from diffuse.core.data.domain import Batch
        from diffuse.core.data.space import DenseSpace

        self.name, self.latent, self.device, self.num, self.ddim_steps = name, latent, device, num, ddim_steps
        self.info = dict(IMAGE_INFO if name == "image" else AUDIO_INFO)
        self.dom = _domain(name, latent, self.info)
        if latent:
            self.dom.to(device)
        torch.manual_seed(0)
        self.diff = Diffusion(DiffusionConfig(**self.dom.default_diffusion()))
        self.den = self.diff.denoiser(self.dom.build_backbone(self.dom.default_model())).to(device)
        self.params = sum(p.numel() for p in self.den.parameters())
        self.opt = torch.optim.AdamW(self.den.parameters(), lr=1e-4)
        shape = (batch, 1, 64, 64) if name == "image" else (batch, 1, self.info["length"])
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(shape, generator=g) * 2 - 1) * (1.0 if name == "image" else 0.3)
        self.data = Batch(x.to(device), DenseSpace())
        self.gen = torch.Generator(device).manual_seed(0)

    def train_step(self) -> None:
        from diffuse.core.data.domain import Batch

        batch = self.data
        if self.latent:
            with torch.no_grad():
                ae = self.dom.autoencoder
                batch = Batch(ae.encode_scaled(batch, generator=self.gen), ae.latent_space(batch))
        loss = self.diff.training_losses(self.den, batch, self.gen).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def sample(self):
        from diffuse.core.sampling.generate import generate

        return generate(self.den, self.dom, self.num, sampler="ddim", steps=self.ddim_steps,
                        batch_size=self.num, device=self.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _sizes(name: str) -> dict:
    """Batch and sample counts of the speed runs (smaller for 4-second clips)."""
    return {"batch": 16, "num": 8} if name == "image" else {"batch": 4, "num": 4}


def bench_speed(name: str, device: torch.device, rounds: int) -> dict:
    """Median train-step and sampling seconds of pixel vs latent, alternating."""
    runners = {"pixel": Runner(name, False, device, **_sizes(name)), "latent": Runner(name, True, device, **_sizes(name))}
    for r in runners.values():   # warm-up
        r.train_step()
        r.den.eval()
        r.sample()
        r.den.train()
    times: dict[str, dict[str, list[float]]] = {k: {"train": [], "sample": []} for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            times[k]["train"].append(_timed(r.train_step, device))
        for k, r in runners.items():
            r.den.eval()
            times[k]["sample"].append(_timed(r.sample, device))
            r.den.train()
    out = {}
    for k, r in runners.items():
        out[k] = {"params": r.params, "train_step_s": statistics.median(times[k]["train"]),
                  "sample_s": statistics.median(times[k]["sample"]),
                  "latent_shape": list(r.dom.template(1).x.shape[1:])}
    out.update(_sizes(name), ddim_steps=runners["pixel"].ddim_steps)
    out["ratio_train"] = out["pixel"]["train_step_s"] / out["latent"]["train_step_s"]
    out["ratio_sample"] = out["pixel"]["sample_s"] / out["latent"]["sample_s"]
    return out


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def memory_worker(name: str, kind: str, phase: str, device_name: str) -> dict:
    device = torch.device(device_name)
    r = Runner(name, kind == "latent", device, **_sizes(name))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_kb("VmRSS")
    for _ in range(3):
        if phase == "train":
            r.train_step()
        else:
            r.den.eval()
            with torch.no_grad():
                r.sample()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"peak_mb": (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20}
    return {"peak_mb": (_rss_kb("VmHWM") - base) / 1024}


def bench_memory(name: str, device: torch.device, threads: int) -> dict:
    out: dict = {}
    for kind in ("pixel", "latent"):
        for phase in ("train", "sample"):
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            res = subprocess.run([sys.executable, __file__, "--memory-worker", name, kind, phase, str(device)],
                                 capture_output=True, text=True, env=env)
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-2000:])
            out.setdefault(kind, {})[f"{phase}_peak_mb"] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mb"]
    return out


# ----------------------------------------------------------------------------- quality
def train_for(domain: str, out: Path, seconds: float, *, latent: Path | None = None, data_options=None,
              model=None, device: str = "cpu") -> dict:
    """Train a new diffusion run for ``seconds`` of wall time (constant LR after warm-up), the
    way ``api.train`` does (same data split, trainer, checkpoint), and report its steps."""
    from diffuse import api
    from diffuse.api.configs import load_data, record_conditions, split_data
    from diffuse.core.io import atomic_write_text
    from diffuse.core.models.latent import latent_domain
    from diffuse.core.process.diffusion import Diffusion
    from diffuse.core.data.registry import get_domain
    from diffuse.core.training.trainer import Trainer

    dom = get_domain(domain)
    if latent is not None:
        dom = latent_domain(dom, latent)
    cfg = api.make_config(dom, config={"model": model or {}, "data_options": data_options or {},
                                       "train": {"lr_schedule": "constant", "checkpoint_every": 0,
                                                 "final_eval": False}},
                          steps=10 ** 6, device=device)
    cfg.latent = getattr(dom, "record", None)
    if latent is not None:
        dom.to(device)
    dataset = load_data(dom, cfg)
    train_set, reference = split_data(dataset, cfg.train)
    cfg.data_info = record_conditions(dom, dataset.info())
    dom = dom.bind(cfg.data_info)
    torch.manual_seed(cfg.train.seed)
    diff = Diffusion(cfg.diffusion)
    den = diff.denoiser(dom.build_backbone(cfg.model))
    trainer = Trainer(out, cfg, dom, diff, den, train_set, reference, progress=False)
    out.mkdir(parents=True)
    atomic_write_text(out / "config.json", cfg.to_json())
    t0 = time.perf_counter()
    loss = float("nan")
    while time.perf_counter() - t0 < seconds:
        loss, _ = trainer.train_step()
    spent = time.perf_counter() - t0
    trainer.save()
    return {"steps": trainer.step, "seconds": spent, "final_loss": loss}


def train_ae_for(domain: str, out: Path, seconds: float, data_options: dict, est_step_s: float) -> dict:
    """An autoencoder run of about ``seconds``: its step count from a measured step time."""
    from diffuse import api

    steps = max(20, int(seconds / est_step_s))
    t0 = time.perf_counter()
    res = api.train_autoencoder(domain, out=out, progress=False, steps=steps,
                                config={"data_options": data_options, "train": {"warmup_steps": min(50, steps // 10)}})
    return {"steps": steps, "seconds": time.perf_counter() - t0, "scale": res["scale"], "recon": res["metrics"]}


def _ae_step_time(domain: str, data_options: dict, n: int = 3) -> float:
    from diffuse.core.data.registry import get_domain

    dom = get_domain(domain)
    ds = dom.load_data(None, {**dom.default_data(), **data_options})
    ae = dom.bind(ds.info()).build_autoencoder({})
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    bs = dom.default_autoencoder()["train"].get("batch_size", 32)
    g = torch.Generator().manual_seed(0)
    ts = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        loss, _ = ae.loss(ds.batch(torch.randint(0, len(ds), (bs,), generator=g), g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def evaluate(run: Path, num: int) -> dict:
    from diffuse import api

    model = api.load(run, device="cpu")
    t0 = time.perf_counter()
    metrics = model.evaluate(num=num, sampler="ddim", steps=20, batch_size=64)
    return {**{k: v for k, v in metrics.items()}, "eval_seconds": time.perf_counter() - t0}


def bench_quality(args, tmp: Path) -> dict:
    out: dict = {}
    for name, data in (("image", IMAGE_DATA), ("audio", AUDIO_QUALITY_DATA)):
        if name not in args.domains:
            continue
        est = _ae_step_time(name, data)
        ae = train_ae_for(name, tmp / f"{name}-ae", args.ae_seconds, data, est)
        print(f"{name} autoencoder: {ae}", flush=True)
        pixel = train_for(name, tmp / f"{name}-pixel", args.seconds, data_options=data)
        print(f"{name} pixel: {pixel}", flush=True)
        latent = train_for(name, tmp / f"{name}-latent", args.seconds, latent=tmp / f"{name}-ae")
        print(f"{name} latent: {latent}", flush=True)
        pixel["metrics"] = evaluate(tmp / f"{name}-pixel", args.num)
        latent["metrics"] = evaluate(tmp / f"{name}-latent", args.num)
        print(f"{name} metrics: pixel {pixel['metrics']}  latent {latent['metrics']}", flush=True)
        out[name] = {"autoencoder": ae, "pixel": pixel, "latent": latent}
    mol = bench_molecules(args, tmp) if "molecules" in args.domains else None
    if mol is not None:
        out["molecules"] = mol
    return out


def bench_molecules(args, tmp: Path) -> dict | None:
    """Held-out reconstruction of the molecule autoencoder, when the domain has one."""
    from diffuse.core.data.domain import Domain
    from diffuse.core.data.registry import get_domain

    dom = get_domain("molecules")
    if type(dom).build_autoencoder is Domain.build_autoencoder:
        print("molecules: the domain has no autoencoder here; skipped", flush=True)
        return None
    est = _ae_step_time("molecules", {})
    ae = train_ae_for("molecules", tmp / "molecules-ae", args.ae_seconds, {}, est)
    print(f"molecules autoencoder: {ae}", flush=True)
    return {"autoencoder": ae}


# ----------------------------------------------------------------------------- report
def _table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per domain")
    p.add_argument("--quality", action="store_true", help="also train and compare sample quality")
    p.add_argument("--no-speed", action="store_true", help="skip the speed / memory part")
    p.add_argument("--seconds", type=float, default=150.0, help="diffusion training time per model")
    p.add_argument("--ae-seconds", type=float, default=150.0, help="autoencoder training time per domain")
    p.add_argument("--num", type=int, default=64, help="samples per quality evaluation")
    p.add_argument("--quick", action="store_true", help="tiny settings (a smoke test of the script)")
    p.add_argument("--domains", type=lambda v: v.split(","), default=["image", "audio", "molecules"],
                   help="comma-separated: image, audio, molecules (molecules: autoencoder reconstruction only)")
    p.add_argument("--memory-worker", nargs=4, metavar=("DOMAIN", "KIND", "PHASE", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(*args.memory_worker)))
        return
    if args.quick:
        args.rounds, args.seconds, args.ae_seconds, args.num = 1, 5.0, 5.0, 8
    device = torch.device(args.device)
    result: dict = {"device": str(device), "threads": args.threads, "machine": platform.machine(),
                    "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg(), "speed": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_latent_{device.type}.json"
    for name in [n for n in args.domains if n != "molecules"] if not args.no_speed else ():
        sp = bench_speed(name, device, args.rounds)
        sp.update({k: {**sp[k], **v} for k, v in bench_memory(name, device, args.threads).items()})
        result["speed"][name] = sp
        print(f"{name}: {json.dumps(sp)}", flush=True)
        path.write_text(json.dumps(result, indent=2))     # partial results survive a stopped run
    if args.quality:
        with tempfile.TemporaryDirectory() as tmp:
            result["quality"] = bench_quality(args, Path(tmp))
    result["load_avg_end"] = os.getloadavg()

    if result["speed"]:
        print(f"\nSpeed and memory, {device}, {args.threads} thread(s); load average {result['load_avg_start'][0]:.1f} "
              f"at the start (a loaded machine makes absolute times noisy; the ratios are side by side)")
        rows = []
        for name, sp in result["speed"].items() if result["speed"] else ():
            size = "64x64 image" if name == "image" else "4 s @ 16 kHz"
            for kind in ("pixel", "latent"):
                r = sp[kind]
                rows.append((f"{name} {kind}", size, "x".join(map(str, r["latent_shape"])), f"{r['params'] / 1e6:.2f} M",
                             f"{r['train_step_s'] * 1e3:.0f} (b{sp['batch']})", f"{r['train_peak_mb']:.0f}",
                             f"{r['sample_s']:.2f} ({sp['num']}x{sp['ddim_steps']})", f"{r['sample_peak_mb']:.0f}"))
            rows.append((f"{name} pixel/latent", "", "", "", f"{sp['ratio_train']:.1f}x",
                         f"{sp['pixel']['train_peak_mb'] / max(sp['latent']['train_peak_mb'], 1e-9):.1f}x",
                         f"{sp['ratio_sample']:.1f}x",
                         f"{sp['pixel']['sample_peak_mb'] / max(sp['latent']['sample_peak_mb'], 1e-9):.1f}x"))
        print(_table(rows, ("model", "output", "diffusion runs on", "params", "train step ms", "train peak MB",
                            "sample s (num x DDIM steps)", "sample peak MB")))
    if "quality" in result:
        q = result["quality"]
        print(f"\nQuality at equal diffusion training time ({args.seconds:.0f} s each, {args.threads} thread(s))")
        rows = []
        for name in (n for n in ("image", "audio") if n in q):
            ae = q[name]["autoencoder"]
            rec = "  ".join(f"{k}={v:.3g}" for k, v in ae["recon"].items() if k != "held_out_items")
            print(f"  {name} autoencoder: {ae['steps']} steps in {ae['seconds']:.0f} s; held-out {rec}")
            keys = ["fid", "kid"] if name == "image" else ["fd_logmel", "fd_mfcc", "fd_net"]
            for kind in ("pixel", "latent"):
                r = q[name][kind]
                rows.append((f"{name} {kind}", r["steps"], *(f"{r['metrics'].get(k, float('nan')):.4g}" for k in keys),
                             *([""] * (3 - len(keys)))))
        print(_table(rows, ("model", "steps", "fid / fd_logmel", "kid / fd_mfcc", "- / fd_net")))
        if "molecules" in q:
            ae = q["molecules"]["autoencoder"]
            print(f"  molecule autoencoder: {ae['steps']} steps in {ae['seconds']:.0f} s; held-out "
                  + "  ".join(f"{k}={v:.4g}" for k, v in ae["recon"].items()))
    if args.no_speed and path.exists():   # keep the speed part of an earlier run
        result["speed"] = json.loads(path.read_text()).get("speed", {})
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
