"""Diffusion Transformers (issue 31): speed against diffusers, quality per CPU minute against the
U-Net, and latent against pixel inpainting.

``throughput``: our DiT (``diffuse.domains.dit``) and diffusers' at equal patch size, width, depth
and heads, side by side in ONE process (the runners alternate step by step, so both see the same
machine load; medians of process CPU time and of wall time), one training step (forward,
backward, AdamW; batch 32) and one sampling evaluation (no grad; batch 64):

* class-conditional DiT (width 128, 6 blocks, 4 heads) on 28x28x1 digits, patch 2 (196 tokens),
  and on 7x7x4 latents, patch 1 (49 tokens), and the paper's DiT-S/2 (384 wide, 12 blocks, 6 heads,
  32x32x4 latents, 1000 classes; batches of 8 and 16), against
  ``diffusers.DiTTransformer2DModel`` (adaLN-Zero, the paper's DiT);
  diffusers gives every block its own timestep-and-label embedding, so it has more parameters:
  a second row gives our DiT a wider MLP to match its parameter count;
* the joint-attention DiT (MMDiT) with 17 text tokens, against
  ``diffusers.SD3Transformer2DModel`` (both read the same token tensor; ours pools it itself).

Ours runs with its defaults (exact GELU: on CPU 3x faster than the tanh approximation DiT and
diffusers use, the two within 1e-3 of each other); a row with ``activation: gelu_tanh`` shows
what the rest of the implementation gives on diffusers' own activation. diffusers is a benchmark-
only dependency (``pip install diffusers``; with ``--diffusers-path DIR`` a ``pip install
--target DIR`` copy is used, appended to ``sys.path``).

``quality``: one training run per model, on CPU with one thread, paused at fixed amounts of
PROCESS CPU time (``--snapshots`` minutes; resumed exactly, ``core.training``) and evaluated there
(not counted): image FID / KID (the bundled LeNet's features) of ``--num`` DDIM samples against
the held-out 10 % of the bundled digits; audio the Frechet distances of 64 clips against the
held-out 15 % of the bundled one-shots. Constant learning rate after warm-up (so a snapshot is
the run so far, not a shortened schedule); the domain's default train section otherwise (image:
batch 32, lr 1e-3, EMA 0.995; audio: batch 16). Latent runs use an autoencoder trained first
(its CPU minutes are reported apart, not in the curves). Runs: ``image_unet`` (the default
U-Net), ``image_dit_p4`` / ``image_dit_p2`` (DiT-small, patch 4 / 2), ``latent_unet`` /
``latent_dit`` (7x7x4 latents of the default image autoencoder), ``audio_latent_unet`` /
``audio_latent_dit`` (latents of the default audio autoencoder).

``inpaint``: the final snapshots of a pixel and a latent model (equal training CPU minutes) fill
a 12x16 box of ``--num`` held-out digits (DDPM, 50 steps): FID of the completed images against
the held-out set, the largest and mean error of the known part after decoding (the latent model
without pasting the known pixels back, and the autoencoder's own reconstruction error of the same
pixels for scale), and the CPU seconds of the completions.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_dit.py throughput --diffusers-path /tmp/dit_bench_deps
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_dit.py quality --runs image_unet,image_dit_p4 \\
        --snapshots 1,2,4,8 --work /tmp/bench_dit
    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_dit.py inpaint --work /tmp/bench_dit
    python benchmarks/bench_dit.py plot                      # docs/dit_quality_*.png from the results

Results: ``benchmarks/results/bench_dit_{throughput,quality,inpaint}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOCS = HERE.parent / "docs"


def _cpu() -> float:
    """CPU seconds of this process (user + system), children excluded."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _machine() -> dict:
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "load_avg": os.getloadavg()[0]}


TAG = ""


def _result(name: str) -> Path:
    return RESULTS / f"bench_dit_{name}{TAG}.json"


def _save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = _result(name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return path


# ============================================================================ throughput
def _ours(channels, side, patch, width, depth, heads, *, classes=None, text_dim=None, **extra):
    from diffuse.domains.dit import DiT

    enc = None
    if text_dim:
        enc = _TokenTable(text_dim)
    return DiT(channels, [side, side], patch, width=width, depth=depth, heads=heads, num_classes=classes,
               text_encoder=enc, text_mode="joint" if text_dim else "cross", **extra)


class _TokenTable(torch.nn.Module):
    """A stand-in text encoder: the precomputed tokens of the batch (both models read the same)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim, self.tokens = dim, None

    def forward(self, ids):
        return self.tokens, torch.ones(self.tokens.shape[:2], dtype=torch.bool)


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _matching_mlp(target: int, build) -> float:
    """The MLP ratio (hidden width / width, a whole hidden width) whose model has the parameter
    count closest to ``target``."""
    lo, hi = 1.0, 16.0
    for _ in range(16):
        mid = (lo + hi) / 2
        if _params(build(mid)) < target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda r: abs(_params(build(r)) - target))


def _pairs():
    """``(name, ours builder, theirs builder, kind, channels, side, batch scale)`` of each compared
    configuration (the batch scale divides the training and sampling batches)."""
    from diffusers import DiTTransformer2DModel, SD3Transformer2DModel

    out = []
    for name, c, side, patch, width, depth, heads, classes, scale in (
            ("DiT 28x28x1 p2", 1, 28, 2, 128, 6, 4, 10, 1), ("DiT latent 7x7x4 p1", 4, 7, 1, 128, 6, 4, 10, 1),
            ("DiT-S/2 32x32x4, 1000 classes (the paper's S/2)", 4, 32, 2, 384, 12, 6, 1000, 4)):
        theirs = lambda c=c, side=side, patch=patch, width=width, depth=depth, heads=heads, classes=classes: \
            DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=width // heads, in_channels=c,
                                  out_channels=c, num_layers=depth, sample_size=side, patch_size=patch,
                                  num_embeds_ada_norm=classes)
        ours = lambda c=c, side=side, patch=patch, width=width, depth=depth, heads=heads, classes=classes, **kw: \
            _ours(c, side, patch, width, depth, heads, classes=classes, **kw)
        out.append((name, ours, theirs, "class", c, side, scale))
    theirs = lambda: SD3Transformer2DModel(sample_size=28, patch_size=2, in_channels=1, num_layers=6,
                                           attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
                                           caption_projection_dim=128, pooled_projection_dim=64, out_channels=1,
                                           pos_embed_max_size=14)
    out.append(("MMDiT 28x28x1 p2 + 17 text tokens", lambda **kw: _ours(1, 28, 2, 128, 6, 4, text_dim=64, **kw),
                theirs, "text", 1, 28, 1))
    return out


def _runner(model, kind: str, ours: bool, b: int, c: int, side: int, tokens: int = 17, classes: int = 10):
    """``step()`` (a training step) and ``sample()`` (one evaluation without grad) of ``model``."""
    from diffuse.core.data.condition import Condition, LabelKind, TokensKind

    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c, side, side, generator=g)
    t = torch.rand(b, generator=g) * 999
    y = torch.randint(0, classes, (b,), generator=g)
    ctx = torch.randn(b, tokens, 64, generator=g)
    pooled = ctx.mean(1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if ours:
        if kind == "text":
            cond = Condition({"text": torch.ones(b, tokens, dtype=torch.long)},
                             {"text": TokensKind(2, tokens)})
        else:
            cond = Condition({"label": y}, {"label": LabelKind(classes)})

        def fwd():
            if kind == "text":
                model.text_encoder.tokens = ctx
            return model(x, t, cond)
    elif kind == "text":
        fwd = lambda: model(x, encoder_hidden_states=ctx, pooled_projections=pooled, timestep=t).sample
    else:
        fwd = lambda: model(x, timestep=t, class_labels=y).sample

    def step():
        loss = fwd().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample():
        with torch.no_grad():
            fwd()
    return step, sample


def _time(fn) -> tuple[float, float]:
    c, w = _cpu(), time.perf_counter()
    fn()
    return _cpu() - c, time.perf_counter() - w


def throughput(args) -> dict:
    if args.diffusers_path:
        sys.path.append(args.diffusers_path)
    try:
        import diffusers
    except ImportError:
        print("diffusers is not installed (pip install diffusers, or --diffusers-path DIR): nothing to compare")
        return {}
    torch.manual_seed(0)
    rows = []
    for name, ours_build, theirs_build, kind, c, side, scale in _pairs():
        if args.only and args.only not in name:
            continue
        theirs = theirs_build()
        classes = getattr(getattr(theirs, "config", None), "num_embeds_ada_norm", None) or 10
        target = _params(theirs)
        ratio = _matching_mlp(target, lambda r: ours_build(mlp_ratio=r))
        variants = {"ours": ours_build(), "ours, gelu_tanh": ours_build(activation="gelu_tanh"),
                    f"ours, equal params (mlp_ratio {ratio:.2f})": ours_build(mlp_ratio=ratio), "diffusers": theirs}
        runners = {k: (_runner(m, kind, k != "diffusers", args.batch // scale, c, side, classes=classes),
                       _runner(m, kind, k != "diffusers", args.sample_batch // scale, c, side, classes=classes))
                   for k, m in variants.items()}
        times = {k: {"train_cpu": [], "train_wall": [], "sample_cpu": [], "sample_wall": []} for k in variants}
        for k, ((step, _), (_, sample)) in runners.items():       # warm-up
            step(), sample()
        for _ in range(max(3, args.reps // scale)):
            for k, ((step, _), (_, sample)) in runners.items():
                cpu, wall = _time(step)
                times[k]["train_cpu"].append(cpu)
                times[k]["train_wall"].append(wall)
                cpu, wall = _time(sample)
                times[k]["sample_cpu"].append(cpu)
                times[k]["sample_wall"].append(wall)
        med = {k: {m: statistics.median(v) for m, v in t.items()} for k, t in times.items()}
        base = med["diffusers"]
        for k, m in med.items():
            row = {"config": name, "model": k, "params": _params(variants[k]), "batch": args.batch // scale,
                   "sample_batch": args.sample_batch // scale, **{f"{q}_s": v for q, v in m.items()},
                   "train_speedup": base["train_cpu"] / m["train_cpu"], "sample_speedup": base["sample_cpu"] / m["sample_cpu"],
                   "train_speedup_wall": base["train_wall"] / m["train_wall"],
                   "sample_speedup_wall": base["sample_wall"] / m["sample_wall"]}
            rows.append(row)
            print(f"{name:36s} {k:36s} {row['params'] / 1e6:6.2f}M  train {m['train_cpu']:.3f}s "
                  f"(x{row['train_speedup']:.2f})  sample {m['sample_cpu']:.3f}s (x{row['sample_speedup']:.2f})",
                  flush=True)
    out = {"machine": _machine(), "diffusers": diffusers.__version__, "batch": args.batch,
           "sample_batch": args.sample_batch, "reps": args.reps, "rows": rows}
    print("wrote", _save("throughput", out))
    return out


# ============================================================================ quality per CPU minute
IMAGE_AE = {}            # the image domain's default autoencoder: f=4, 4 latent channels (7x7x4 latents)
AUDIO_AE = {}            # the audio domain's default autoencoder
RUNS = {
    "image_unet": {"domain": "image", "model": {}},
    "image_dit_p4": {"domain": "image", "model": {"backbone": "dit", "preset": "small", "patch_size": 4}},
    "image_dit_p2": {"domain": "image", "model": {"backbone": "dit", "preset": "small", "patch_size": 2}},
    "latent_unet": {"domain": "image", "model": {}, "latent": "image_ae"},
    "latent_dit": {"domain": "image", "model": {"backbone": "dit", "preset": "small", "patch_size": 1},
                   "latent": "image_ae"},
    "audio_latent_unet": {"domain": "audio", "model": {}, "latent": "audio_ae"},
    "audio_latent_dit": {"domain": "audio", "model": {"backbone": "dit", "preset": "small"}, "latent": "audio_ae"},
}
AUTOENCODERS = {"image_ae": ("image", IMAGE_AE), "audio_ae": ("audio", AUDIO_AE)}


def _autoencoder(work: Path, name: str, record: dict, steps: int | None = None) -> Path:
    """Train the named autoencoder once (its CPU seconds recorded)."""
    from diffuse import api

    run = work / name
    if (run / "evaluation.json").is_file():
        return run
    domain, model = AUTOENCODERS[name]
    c0 = _cpu()
    res = api.train_autoencoder(domain, out=run, progress=False, config={"model": model}, steps=steps)
    record.setdefault("autoencoders", {})[name] = {"cpu_s": _cpu() - c0, "metrics": res["metrics"],
                                                   "steps": res["steps"]}
    return run


def _evaluate(model, domain: str, num: int, steps: int) -> dict:
    if domain == "image":
        return model.evaluate(num=num, sampler="ddim", steps=steps, seed=0, batch_size=128)
    return model.evaluate(num=64, seed=0, batch_size=64)


def quality(args) -> dict:
    from diffuse import api

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = _result("quality")
    record = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    record["machine"] = _machine()
    snaps = [float(s) for s in args.snapshots.split(",")]
    for name in args.runs.split(","):
        spec = RUNS[name]
        done = record["runs"].get(name, {})
        if done.get("snapshots") and done["snapshots"][-1]["cpu_min"] * 60 >= snaps[-1] * 60 - 1 and not args.redo:
            continue
        latent = _autoencoder(work, spec["latent"], record, args.ae_steps) if spec.get("latent") else None
        run = work / name
        if args.redo and run.exists():
            import shutil
            shutil.rmtree(run)
        points = [] if args.redo else list(done.get("snapshots") or [])
        cpu = points[-1]["cpu_min"] * 60 if points else 0.0          # a run with snapshots continues
        steps = points[-1]["steps"] if points else 0
        common = dict(progress=False)
        per_step = cpu / steps if steps else None
        for target in snaps:
            if target * 60 <= cpu + 1:
                continue
            while cpu < target * 60 - 1:
                left = target * 60 - cpu
                chunk = 20 if per_step is None else max(1, int(left / per_step))
                c0 = _cpu()
                if steps == 0:
                    api.train(spec["domain"], out=run, latent=latent, model=spec["model"], steps=10 ** 6,
                              lr_schedule="constant", stop_at=chunk, final_eval=False, eval_samples=0,
                              checkpoint_every=0, seed=0, **common)
                else:
                    api.train(spec["domain"], resume=run, stop_at=steps + chunk, **common)
                spent = _cpu() - c0
                cpu += spent
                steps += chunk
                per_step = spent / chunk if per_step is None else 0.5 * per_step + 0.5 * spent / chunk
            c0 = _cpu()
            model = api.load(run, device="cpu")
            metrics = _evaluate(model, spec["domain"], args.num, args.eval_steps)
            point = {"cpu_min": cpu / 60, "steps": steps, "eval_cpu_s": _cpu() - c0, "metrics": metrics,
                     "params": _params(model.denoiser.backbone)}
            points.append(point)
            print(f"{name}: {cpu / 60:.2f} CPU-min, {steps} steps: {metrics}", flush=True)
            record["runs"][name] = {"spec": spec, "snapshots": points, "num": args.num, "eval_steps": args.eval_steps}
            _save("quality", record)
    return record


# ============================================================================ inpainting: latent vs pixel
def inpaint(args) -> dict:
    from diffuse import api
    from diffuse.core.data.domain import Batch

    work = Path(args.work)
    rows = {}
    for name in args.runs.split(","):
        model = api.load(work / name, device="cpu")
        ref = model.reference_data()
        n = min(args.num, len(ref))
        data = ref.data if hasattr(ref, "data") else ref          # a latent model's reference: the digits
        batch = data.batch(torch.arange(n), torch.Generator().manual_seed(0))
        mask = torch.ones(n, 1, 28, 28, dtype=torch.bool)
        mask[..., 8:20, 6:22] = False
        c0 = _cpu()
        out, raw = [], []
        for i in range(0, n, 64):
            sub = Batch(batch.x[i:i + 64], batch.space, None)
            m = mask[i:i + 64]
            out.append(model.complete((sub, m), 1, sampler="ddpm", steps=50, seed=i, paste=True).x)
            if model.config.latent is not None:
                raw.append(model.complete((sub, m), 1, sampler="ddpm", steps=50, seed=i, paste=False).x)
        cpu = _cpu() - c0
        x = torch.cat(out)
        known = mask.expand_as(batch.x)
        fid = model.domain.metrics(Batch(x, batch.space), ref)
        row = {"fid": fid["fid"], "kid": fid["kid"], "cpu_s": cpu, "num": n,
               "known_max_abs": float((x - batch.x).abs()[known].max())}
        if raw:
            r = torch.cat(raw)
            ae = model.domain.autoencoder
            with torch.no_grad():
                rec = ae.decode(ae.encode(batch, sample=False), batch)
            row.update({"known_mean_abs_unpasted": float((r - batch.x).abs()[known].mean()),
                        "known_max_abs_unpasted": float((r - batch.x).abs()[known].max()),
                        "reconstruction_mean_abs": float((rec - batch.x).abs()[known].mean()),
                        "fid_unpasted": model.domain.metrics(Batch(r, batch.space), ref)["fid"]})
        snaps = json.loads(_result("quality").read_text())["runs"].get(name, {}).get("snapshots", [])
        row["train_cpu_min"] = snaps[-1]["cpu_min"] if snaps else None
        rows[name] = row
        print(name, row, flush=True)
    out = {"machine": _machine(), "box": "rows 8-19, columns 6-21 (12x16 of 28x28)", "sampler": "ddpm-50",
           "rows": rows}
    print("wrote", _save("inpaint", out))
    return out


# ============================================================================ plots
def _png(series: list[tuple[str, list[tuple[float, float]]]], title: str, ylabel: str, path: Path) -> None:
    """A small log-log line plot with Pillow (a dependency of the project; matplotlib is not)."""
    import math

    from PIL import Image, ImageDraw, ImageFont

    sys.path.insert(0, str(HERE))
    from bench_quality_compute import _COLORS, _ticks

    W, H, ml, mr, mt, mb = 640, 420, 70, 20, 36, 120
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:
        font = ImageFont.load_default()
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x0, x1, y0, y1 = min(xs) / 1.3, max(xs) * 1.3, min(ys) / 1.3, max(ys) * 1.3
    fx = lambda x: ml + (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) * (W - ml - mr)  # noqa: E731
    fy = lambda y: mt + (math.log(y1) - math.log(y)) / (math.log(y1) - math.log(y0)) * (H - mt - mb)  # noqa: E731
    d.rectangle([ml, mt, W - mr, H - mb], outline="black")
    d.text((ml, 10), title, fill="black", font=font)
    for t in _ticks(x0, x1, True):
        d.line([fx(t), H - mb, fx(t), H - mb + 5], fill="black")
        d.text((fx(t) - 8, H - mb + 8), f"{t:g}", fill="black", font=font)
    for t in _ticks(y0, y1, True):
        d.line([ml - 5, fy(t), ml, fy(t)], fill="black")
        d.line([ml + 1, fy(t), W - mr - 1, fy(t)], fill=(235, 235, 235))
        d.text((4, fy(t) - 6), f"{t:.3g}", fill="black", font=font)
    d.text((ml, H - mb + 24), f"training CPU minutes (one thread, log)   y: {ylabel} (log)", fill="black", font=font)
    for i, (label, pts) in enumerate(series):
        c = _COLORS[i % len(_COLORS)]
        xy = [(fx(x), fy(y)) for x, y in pts]
        if len(xy) > 1:
            d.line(xy, fill=c, width=2)
        for X, Y in xy:
            d.ellipse([X - 3, Y - 3, X + 3, Y + 3], fill=c)
        d.line([ml, H - mb + 50 + 16 * i, ml + 20, H - mb + 50 + 16 * i], fill=c, width=2)
        d.text((ml + 26, H - mb + 44 + 16 * i), label, fill="black", font=font)
    img.save(path)


def plot(args) -> None:
    record = json.loads(_result("quality").read_text())
    groups = {"image": (["image_unet", "image_dit_p4", "image_dit_p2"], "fid", "FID (LeNet)", "digits, pixels"),
              "latent": (["latent_unet", "latent_dit"], "fid", "FID (LeNet)", "digits, 7x7x4 latents"),
              "audio_latent": (["audio_latent_unet", "audio_latent_dit"], "fd_logmel", "Frechet log-mel",
                               "percussion, audio latents")}
    for group, (names, metric, label, title) in groups.items():
        series = [(n, [(p["cpu_min"], p["metrics"][metric]) for p in record["runs"][n]["snapshots"]])
                  for n in names if record["runs"].get(n, {}).get("snapshots")]
        if series:
            path = DOCS / f"dit_quality_{group}.png"
            _png(series, f"{title}: {label} vs training CPU minutes", label, path)
            print("wrote", path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["throughput", "quality", "inpaint", "plot"])
    p.add_argument("--diffusers-path", default=None)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--only", default=None, help="throughput: only the configurations whose name holds this")
    p.add_argument("--runs", default="image_unet,image_dit_p4")
    p.add_argument("--snapshots", default="1,2,4,8")
    p.add_argument("--num", type=int, default=256)
    p.add_argument("--eval-steps", type=int, default=25)
    p.add_argument("--work", default="/tmp/bench_dit")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="", help="suffix of the result files (e.g. for a trial run)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps (default: the domain's)")
    args = p.parse_args()
    global TAG
    TAG = args.tag
    torch.set_num_threads(args.threads)
    {"throughput": throughput, "quality": quality, "inpaint": inpaint, "plot": plot}[args.what](args)


if __name__ == "__main__":
    main()
