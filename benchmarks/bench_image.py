"""Image-domain benchmark: U-Net training / sampling throughput against diffusers, and quality.

1. Training throughput (images/s) and peak memory of our U-Net against a diffusers
   ``UNet2DModel`` of the same width, depth, attention placement, attention head width (32) and
   GroupNorm groups (equal parameter counts), in three configurations (``CONFIGS``):
   ``default`` (the domain's default model, 28x28x1, batch 32, attention at 7x7 only),
   ``attn-hi`` (the same with attention at 14x14 too: diffusers' default placement, every level
   but the first) and ``cifar-9m`` (32x32x3, ~9 M parameters: DDPM's CIFAR-10 U-Net at half
   width, attention at 16x16, batch 8). One step = eps-prediction loss on the DDPM linear
   schedule, backward, AdamW.
   Both models are timed in one process in short alternating chunks (so both see the same
   machine load) and the table gives medians; memory comes from a fresh process per model
   running three steps: on CPU the peak RSS (VmHWM) minus the RSS after imports, i.e. what the
   model, its activations and optimizer add; on CUDA ``torch.cuda.max_memory_allocated``. On CUDA
   steps run under bf16 autocast.
2. Sampling throughput: images/s for DDIM with 50 steps (batch 64; 8 for ``cifar-9m``), both models.
3. ``--quality``: trains the default model with the default recipe through ``diffuse.api``,
   then compares FID / KID (bundled LeNet features, 500 held-out reference digits) of its samples
   with an untrained model's, real held-out digits and blurred digits.

    python benchmarks/bench_image.py [--device cpu|cuda] [--configs default,attn-hi,cifar-9m] [--quick]
                                     [--threads N] [--quality] [--profile]

``--profile`` instead times one training step per model under ``torch.profiler`` and splits it
into convolutions, GroupNorm and the rest (``bench_image_profile_<device>.json``).

Prints tables and writes ``benchmarks/results/bench_image_<device>.json``. diffusers is optional
(``pip install diffusers``); without it its rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- models
#: benchmark configurations: image shape, batch sizes, our U-Net's options and the diffusers
#: ``UNet2DModel`` of the same width, depth, attention placement, head width and GroupNorm groups
CONFIGS: dict[str, dict] = {
    # the default model: attention at the lowest resolution (7x7) only
    "default": {"shape": (1, 28, 28), "batch": 32, "sample_batch": 64, "steps": 8, "ours": {},
                "diffusers": {"block_out_channels": (32, 64, 64), "layers_per_block": 1,
                              "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                              "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), "norm_num_groups": 8}},
    # diffusers' default placement: attention at every level but the first (here 14x14 and 7x7)
    "attn-hi": {"shape": (1, 28, 28), "batch": 32, "sample_batch": 64, "steps": 8,
                "ours": {"attn_levels": [1, 2]},
                "diffusers": {"block_out_channels": (32, 64, 64), "layers_per_block": 1,
                              "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                              "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                              "norm_num_groups": 8}},
    # a 32x32x3 model of ~9 M parameters: DDPM's CIFAR-10 U-Net at half width (attention at 16x16)
    "cifar-9m": {"shape": (3, 32, 32), "batch": 8, "sample_batch": 8, "steps": 4,
                 "ours": {"base_channels": 64, "channel_mult": [1, 2, 2, 2], "num_blocks": 2, "attn_levels": [1],
                          "groups": 32},
                 "diffusers": {"block_out_channels": (64, 128, 128, 128), "layers_per_block": 2,
                               "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                               "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                               "norm_num_groups": 32}},
}


def build(kind: str, device: torch.device, config: str = "default") -> torch.nn.Module:
    cfg = CONFIGS[config]
    c, h, w = cfg["shape"]
    if kind == "ours":
        from diffuse.domains.image import ImageDomain
        model = ImageDomain().bind({"channels": c, "height": h, "width": w}).build_backbone(dict(cfg["ours"]))
    else:
        from diffusers import UNet2DModel
        # attention_head_dim: diffusers' per-head width (its default, 8, would mean 4-8x more heads than ours)
        net = UNet2DModel(sample_size=h, in_channels=c, out_channels=c, attention_head_dim=32, **cfg["diffusers"])

        class Wrapped(torch.nn.Module):  # the backbone contract: f(x, noise_level) -> tensor
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x, noise_level, cond=None, space=None):
                return self.net(x, noise_level).sample

        model = Wrapped()
    return model.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One model with its optimizer, a fixed data batch, a training step and a DDIM sampler."""

    def __init__(self, kind: str, device: torch.device, batch: int, config: str = "default") -> None:
        from diffuse.core.process.schedule import LinearBetaSchedule

        torch.manual_seed(0)
        self.kind, self.device, self.batch, self.shape = kind, device, batch, CONFIGS[config]["shape"]
        self.model = build(kind, device, config)
        self.params = sum(p.numel() for p in self.model.parameters())
        # the optimizer settings of diffuse's Trainer, for both models: fused AdamW and gradients set
        # to None on CUDA; multi-tensor AdamW and gradients zeroed in place on CPU
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4,
                                     **({"fused": True} if device.type == "cuda" else {"foreach": True}))
        self.sched = LinearBetaSchedule()
        alpha, sigma = self.sched.alpha_sigma(torch.arange(1001, dtype=torch.float64) / 1000)
        self.alpha, self.sigma = alpha.float().to(device), sigma.float().to(device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.g = torch.Generator(device).manual_seed(0)
        self.x0 = torch.rand(batch, *self.shape, device=device, generator=self.g) * 2 - 1

    def train_step(self) -> None:
        """eps-prediction loss on the DDPM linear schedule, backward, AdamW."""
        b = self.batch
        n = torch.randint(1, 1001, (b,), device=self.device, generator=self.g)
        eps = torch.randn(self.x0.shape, device=self.device, generator=self.g)
        x_t = self.alpha[n][:, None, None, None] * self.x0 + self.sigma[n][:, None, None, None] * eps
        self.model.train()
        with self.autocast:
            out = self.model(x_t, n.float())
        loss = F.mse_loss(out.float(), eps)
        self.opt.zero_grad(set_to_none=self.device.type != "cpu")
        loss.backward()
        self.opt.step()

    def train_rate(self, steps: int) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.train_step()
        _sync(self.device)
        return self.batch * steps / (time.perf_counter() - t0)

    def sample_rate(self, num: int, steps: int) -> float:
        """images/s of DDIM sampling with ``steps`` network evaluations."""
        from diffuse.core.process.denoiser import Denoiser
        from diffuse.core.process.parameterization import EpsParam
        from diffuse.core.sampling.ancestral import ddim
        from diffuse.core.sampling.common import prior_sample
        from diffuse.core.sampling.grids import time_grid
        from diffuse.core.data.space import DenseSpace

        self.model.eval()
        den = Denoiser(self.model, self.sched, EpsParam())
        space = DenseSpace()
        like = torch.zeros(num, *self.shape, device=self.device)
        with torch.no_grad(), self.autocast:
            x = prior_sample(self.sched, space, like, generator=torch.Generator(self.device).manual_seed(1))
            _sync(self.device)
            t0 = time.perf_counter()
            out = ddim(den.bind(space), x, time_grid(self.sched, steps), schedule=self.sched, space=space)
            _sync(self.device)
            dt = time.perf_counter() - t0
        assert torch.isfinite(out).all()
        return num / dt


def memory_worker(kind: str, device_name: str, batch: int, threads: int, config: str = "default") -> dict:
    """Peak memory of a few training steps of one model, in this fresh process."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    if kind == "diffusers":  # imports are not the model's memory
        import diffusers  # noqa: F401
    else:
        import diffuse.domains.image  # noqa: F401
    base = _rss_bytes()
    r = Runner(kind, device, batch, config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(3):
        r.train_step()
    _sync(device)
    if device.type == "cuda":
        return {"model": kind, "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20}
    return {"model": kind, "peak_memory_mb": (_peak_rss_bytes() - base) / 2 ** 20}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else 0


def _peak_rss_bytes() -> int:
    """Peak RSS of this process image (VmHWM; ru_maxrss would include the parent's before exec)."""
    kb = _status_kb("VmHWM")
    return kb * 1024 if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_memory(kind: str, args, config: str, batch: int) -> float | None:
    cmd = [sys.executable, __file__, "--worker", kind, "--device", args.device, "--batch", str(batch),
           "--threads", str(args.threads), "--configs", config]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print(f"  [{kind}] memory run failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_memory_mb"]


# ----------------------------------------------------------------------------- quality
def quality(args) -> dict:
    """Train with the domain's defaults, then FID / KID of trained vs untrained samples."""
    import diffuse.api as api
    from diffuse.core.process.diffusion import Diffusion
    from diffuse.core.config import DiffusionConfig
    from diffuse.core.data.domain import Batch
    from diffuse.core.sampling.generate import generate
    from diffuse.core.data.space import DenseSpace
    from diffuse.domains.image import ImageDomain

    dom = ImageDomain()
    out = Path(tempfile.mkdtemp(prefix="bench_image_")) / "run"
    overrides = {"device": args.device}
    if args.quick:
        overrides["steps"] = 200
    t0 = time.perf_counter()
    res = api.train("image", out=out, progress=False, **overrides)
    total_s = time.perf_counter() - t0
    ds = dom.load_data(None, {})
    _, held = ds.split(0.1)
    dom = dom.bind(ds.info())
    n = 500 if not args.quick else 128
    model = api.load(out, device=args.device)
    trained = model.sample(n, sampler="ddim", steps=50, seed=1)
    untrained_net = Diffusion(DiffusionConfig(**dom.default_diffusion())).denoiser(dom.build_backbone({}))
    # the fresh U-Net's output layer is zero-initialised (it predicts eps = 0); perturb it
    torch.manual_seed(0)
    with torch.no_grad():
        for p in untrained_net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    untrained = generate(untrained_net.eval(), dom, n, sampler="ddim", steps=50, seed=1)
    rest = ds.split(0.1)[0]
    real = rest.batch(torch.arange(n))
    blur = Batch(F.avg_pool2d(real.x, 5, stride=1, padding=2), DenseSpace())
    rows = {}
    for name, b in (("trained (default recipe)", trained), ("untrained", untrained),
                    ("real held-out digits", real), ("blurred real digits", blur)):
        m = dom.metrics(b, held)
        rows[name] = {"fid": m["fid"], "kid": m["kid"]}
    return {"train_seconds_incl_final_eval": total_s, "train_steps": res.steps, "final_loss": res.final_loss,
            "trainer_final_metrics": res.metrics, "num_samples": n, "rows": rows, "run_dir": str(out)}


# ----------------------------------------------------------------------------- main
def bench_config(name: str, kinds: list[str], device: torch.device, args) -> dict:
    """Alternating timed training chunks, DDIM sampling and peak memory of each model for one config."""
    cfg = CONFIGS[name]
    batch = args.batch or cfg["batch"]
    sample_batch = args.sample_batch or cfg["sample_batch"]
    steps = args.steps or (3 if args.quick else (50 if device.type == "cuda" else cfg["steps"]))
    repeats = args.repeats or (2 if args.quick else 6)
    runners = {k: Runner(k, device, batch, name) for k in kinds}
    for r in runners.values():  # warm-up
        r.train_rate(2)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for i in range(repeats):  # alternate short timed chunks so both models see the same machine load
        for k, r in runners.items():
            rates[k].append(r.train_rate(steps))
        print(f"  [{name}] chunk {i + 1}/{repeats}: " + ", ".join(f"{k} {rates[k][-1]:.1f}" for k in kinds) +
              " train img/s", flush=True)
    sample = {k: [] for k in kinds}
    for _ in range(1 if args.quick else 2):
        for k, r in runners.items():
            sample[k].append(r.sample_rate(sample_batch, args.sample_steps))
    summary = {}
    for k in kinds:
        summary[k] = {"params": runners[k].params, "threads": torch.get_num_threads(),
                      "train_images_per_s": statistics.median(rates[k]),
                      "sample_images_per_s": statistics.median(sample[k]),
                      "peak_memory_mb": _peak_memory(k, args, name, batch),
                      "train_chunks": [round(v, 1) for v in rates[k]]}
    c, h, w = cfg["shape"]
    print(f"\n[{name}] image U-Net, {h}x{w}x{c}, train batch {batch}, DDIM-{args.sample_steps} batch {sample_batch}, "
          f"device {args.device}, {torch.get_num_threads()} threads, medians of {repeats} alternating chunks "
          f"of {steps} steps, load average {os.getloadavg()[0]:.1f}")
    mem_name = "peak GPU MB" if device.type == "cuda" else "train RSS MB"
    print(f"{'model':10s} {'params':>9s} {'train img/s':>12s} {mem_name:>12s} {'sample img/s':>13s}")
    for k, s_ in summary.items():
        mem = f"{s_['peak_memory_mb']:.0f}" if s_["peak_memory_mb"] is not None else "n/a"
        print(f"{k:10s} {s_['params']:9d} {s_['train_images_per_s']:12.1f} {mem:>12s} {s_['sample_images_per_s']:13.1f}")
    result = {"shape": [c, h, w], "batch": batch, "sample_batch": sample_batch, "steps_per_chunk": steps,
              "repeats": repeats, "load_average": os.getloadavg(), "models": summary}
    if "ours" in summary and "diffusers" in summary:
        ratio = summary["ours"]["train_images_per_s"] / summary["diffusers"]["train_images_per_s"]
        sratio = summary["ours"]["sample_images_per_s"] / summary["diffusers"]["sample_images_per_s"]
        paired = statistics.median(a / b for a, b in zip(rates["ours"], rates["diffusers"]))
        result.update(train_ratio_vs_diffusers=ratio, train_ratio_paired_median=paired,
                      sample_ratio_vs_diffusers=sratio)
        print(f"[{name}] ours / diffusers: training {ratio:.2f}x (median of paired chunks {paired:.2f}x), "
              f"sampling {sratio:.2f}x (target: training >= 1.3x)")
    return result


#: operator groups of the profile: self time of these aten ops (forward and backward)
PROFILE_GROUPS = {
    "convolution": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::cudnn_convolution",
                    "aten::slow_conv_transpose2d", "aten::slow_conv2d_forward"),
    "group_norm": ("aten::native_group_norm", "aten::native_group_norm_backward"),
}


def profile_config(name: str, kinds: list[str], device: torch.device, args) -> dict:
    """Per model, milliseconds per training step by operator group (self time, summed over
    ``--steps`` profiled steps after 3 warm-up steps): where the two models' steps differ."""
    from torch.profiler import ProfilerActivity, profile

    cfg = CONFIGS[name]
    steps = args.steps or cfg["steps"]
    out: dict = {}
    print(f"\n[{name}] ms per training step by operator group (self time, {steps} profiled steps)")
    print(f"{'model':10s} " + " ".join(f"{g:>12s}" for g in (*PROFILE_GROUPS, "rest", "total")))
    for kind in kinds:
        r = Runner(kind, device, args.batch or cfg["batch"], name)
        for _ in range(3):
            r.train_step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                r.train_step()
            _sync(device)
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        events = prof.key_averages()
        total = sum(getattr(e, key) for e in events) / 1000 / steps
        row = {g: sum(getattr(e, key) for e in events if e.key in ops) / 1000 / steps for g, ops in PROFILE_GROUPS.items()}
        row["rest"] = total - sum(row.values())
        row["total"] = total
        out[kind] = row
        print(f"{kind:10s} " + " ".join(f"{row[g]:12.1f}" for g in (*PROFILE_GROUPS, "rest", "total")))
    if len(out) == 2:
        print("diffusers / ours: " + ", ".join(f"{g} {out['diffusers'][g] / out['ours'][g]:.2f}x"
                                              for g in (*PROFILE_GROUPS, "rest", "total") if out["ours"][g] > 0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default="default,attn-hi,cifar-9m", help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: per config)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per chunk")
    p.add_argument("--repeats", type=int, default=None, help="alternating timed chunks per model")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default: per config)")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--quality", action="store_true", help="also train the default recipe and compare FIDs")
    p.add_argument("--profile", action="store_true",
                   help="only profile a training step per model (torch.profiler): time in convolutions, GroupNorm, the rest")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    for key in ("batch", "steps", "repeats", "sample_batch", "sample_steps"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be a positive integer, got {getattr(args, key)}")
    if args.threads < 0:
        p.error(f"--threads must be 0 (torch's default) or positive, got {args.threads}")
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; known: {list(CONFIGS)}")
    if args.worker:
        print(json.dumps(memory_worker(args.worker, args.device, args.batch or CONFIGS[names[0]]["batch"],
                                       args.threads, names[0])))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        import diffusers  # noqa: F401
        kinds = ["ours", "diffusers"]
    except ImportError:
        kinds = ["ours"]
        print("note: diffusers is not installed (pip install diffusers); its rows are skipped")
    result = {"device": args.device, "platform": platform.platform(), "torch": torch.__version__,
              "cpu_count": os.cpu_count(), "configs": {}}
    if args.profile:
        del result["configs"]
        result["profile"] = {name: profile_config(name, kinds, device, args) for name in names}
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"bench_image_profile_{args.device.replace(':', '')}.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {path}")
        return
    for name in names:
        result["configs"][name] = bench_config(name, kinds, device, args)
    if len(kinds) == 2:
        print("\nsummary, ours / diffusers (training, sampling): " + "; ".join(
            f"{n} {r['train_ratio_vs_diffusers']:.2f}x, {r['sample_ratio_vs_diffusers']:.2f}x"
            for n, r in result["configs"].items()))
    if args.quality:
        q = quality(args)
        result["quality"] = q
        print(f"\nquality: default recipe, {q['train_steps']} steps, {q['train_seconds_incl_final_eval']:.0f} s "
              f"(training + final 64-sample evaluation); {q['num_samples']} samples, DDIM-50, vs 500 held-out digits")
        print(f"{'samples':26s} {'FID':>9s} {'KID':>10s}")
        for name, m in q["rows"].items():
            print(f"{name:26s} {m['fid']:9.2f} {m['kid']:10.3f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_image_{args.device.replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
