"""Quality versus training compute of each domain's DEFAULT recipe (issue 15: the README's curves).

For each domain and each step count, one complete training run of exactly what
``diffuse train --domain D`` does (``diffuse.api.train``: the bundled data, the domain's default
recipe, seed 0; the learning-rate schedule is cosine over the run's own total steps, so a shorter
run is its own run, never a snapshot of a longer one), then ONE fixed evaluation of the final (EMA)
model, the same for every point, through ``DiffusionModel.evaluate`` (the domain's own metrics):

* image: FID and KID on the framework's LeNet features, 512 samples, DDIM-50 (the default
  model is unconditional, so no class accuracy);
* audio: the Frechet distances ``fd_logmel`` / ``fd_mfcc`` / ``fd_net``, 64 clips, the domain's
  default evaluation sampler and steps (DDPM ancestral, 50 steps);
* molecules: valid & connected, molecule stability, atom stability, validity (largest fragment,
  EDM's definition) and valid & unique of 256 molecules, the domain's default sampler and steps
  (DDPM, 500 steps).

Each domain also gets a reference row: real items of the training split (as many as the samples,
or all there are) scored by the same metrics against the same held-out reference.

The x axis. The runs happen on a shared 2-core machine, so every point records the MEASURED
training time (the sum of the training windows logged in ``metrics.jsonl``: the training steps
and periodic checkpoints, no evaluation, no data loading), the torch thread count and the load
average (sampled every 15 s during training), and an IDLE 2-CORE EQUIVALENT: steps x the idle
2-thread seconds per step of the default recipe, measured on this machine when nothing else ran
(``diffuse train --domain D --steps 60 --eval-samples 0``, samples/s of the last log lines;
image 0.302 s/step at batch 32, audio 0.485 s/step at batch 16, molecules 0.194 s/step at batch
64; ``--measure-step-time`` measures them again, ideally on an idle machine). The curves use the
idle-equivalent minutes (log scale); the quickstart point (the default step count, about 5 min) is
marked.

    OMP_NUM_THREADS=1 nice -n 2 python benchmarks/bench_quality_compute.py --threads 1 \\
        --domains molecules,image,audio --out /tmp/quality_compute --resume
    python benchmarks/bench_quality_compute.py --plot-only --update-readme   # tables, PNGs, README block
    python benchmarks/bench_quality_compute.py --measure-step-time --threads 2   # idle s/step

Every point runs in its own process and writes ``benchmarks/results/quality_compute/<domain>_<steps>.json``
(atomically) when done; ``--resume`` skips the points whose file exists and continues an
interrupted training run from its last checkpoint (exactly the weights of an uninterrupted run).
Then ``benchmarks/results/quality_compute.json`` (all points), ``docs/quality_compute_<domain>.png``
and a markdown table per domain. PNGs: matplotlib when it is installed, else a small Pillow plotter
(Pillow is a dependency of the project; matplotlib is not).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
POINTS = RESULTS / "quality_compute"
DOCS = ROOT / "docs"
SUMMARY = RESULTS / "quality_compute.json"

DOMAINS = ("molecules", "image", "audio")
#: step lists: idle-equivalent ~1, 2, 5 (quickstart), ~2x quickstart minutes
DEFAULT_STEPS = {"image": [200, 400, 1000, 1500, 3000], "audio": [120, 250, 600, 800, 1600],
                 "molecules": [300, 600, 1500, 2000, 4000]}
#: the default step count of each domain (`diffuse train --domain D`, the "quickstart")
QUICKSTART = {"image": 1500, "audio": 800, "molecules": 2000}
#: idle 2-thread seconds per training step of the default recipe, measured on this machine
IDLE_STEP_S = {"image": 0.302, "audio": 0.485, "molecules": 0.194}
#: the fixed evaluation: number of samples; the sampler and steps are the domain's defaults
#: (image: DDIM-50, audio: DDPM-50, molecules: DDPM-500)
EVAL_NUM = {"image": 512, "audio": 64, "molecules": 256}
#: metrics shown (in this order) per domain
METRICS = {"image": ["fid", "kid"], "audio": ["fd_logmel", "fd_mfcc", "fd_net"],
           "molecules": ["valid_connected", "mol_stability", "atom_stability", "validity", "valid_unique"]}
LABELS = {"fid": "FID", "kid": "KID", "fd_logmel": "FD log-mel", "fd_mfcc": "FD MFCC", "fd_net": "FD net",
          "valid_connected": "valid & connected", "mol_stability": "molecule stability",
          "atom_stability": "atom stability", "validity": "valid (largest fragment)", "valid_unique": "valid & unique"}


def _atomic_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class LoadSampler:
    """The 1-minute load average every ``every`` seconds in a background thread."""

    def __init__(self, every: float = 15.0) -> None:
        self.every, self.values = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.values.append(os.getloadavg()[0])

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.values.append(os.getloadavg()[0])

    def summary(self) -> dict:
        v = self.values
        return {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "samples": len(v)}


def logged_train_seconds(run_dir: Path, batch: int) -> tuple[float, list[float]]:
    """Training seconds summed over ``metrics.jsonl``: each training record covers the steps since
    the previous one at its logged ``samples_per_s`` (evaluation records are skipped); also the
    per-window seconds per step."""
    total, prev, per_step = 0.0, 0, []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "samples_per_s" not in rec or "step" not in rec:
            continue
        n = rec["step"] - prev
        prev = rec["step"]
        if n <= 0 or not rec["samples_per_s"] > 0:
            continue
        seconds = n * batch / rec["samples_per_s"]
        total += seconds
        per_step.append(seconds / n)
    return total, per_step


# ----------------------------------------------------------------------------- one point
def run_point(domain: str, steps: int, out: Path, device: str, spacing: str | None = None) -> dict:
    """Train (or continue) the default recipe for ``steps`` in ``out/<domain>_<steps>``, then evaluate."""
    import torch

    import diffuse.api as api
    from diffuse.core.training.checkpoint import load_checkpoint, read_run_config

    run_dir = out / f"{domain}_{steps}"
    resumed, done = False, 0
    if run_dir.exists():
        try:
            done = int(load_checkpoint(run_dir, with_state=True)["state"]["step"])
        except Exception:   # noqa: BLE001 -- a run folder killed before its first complete checkpoint
            shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    fit_s = final_loss = None
    with LoadSampler() as load:
        if run_dir.exists():
            resumed = True
            if done < steps:     # else trained already (the evaluation was interrupted): evaluate only
                res = api.train(domain, resume=run_dir, progress=False)
                fit_s, final_loss = res.seconds, res.final_loss
        else:
            res = api.train(domain, out=run_dir, progress=False, steps=steps, seed=0, eval_samples=0, device=device)
            fit_s, final_loss = res.seconds, res.final_loss
    train_wall = time.perf_counter() - t0
    cfg = read_run_config(run_dir)
    tc = cfg.train
    logged, per_step = logged_train_seconds(run_dir, tc.batch_size * tc.grad_accum)
    t1 = time.perf_counter()
    model = api.load(run_dir, device=device)
    metrics = model.evaluate(num=EVAL_NUM[domain], sampler=tc.eval_sampler, steps=tc.eval_steps, seed=0,
                             batch_size=64, spacing=spacing)
    eval_s = time.perf_counter() - t1
    return {
        "domain": domain, "steps": steps, "run_dir": str(run_dir), "resumed": resumed,
        "recipe": {"batch_size": tc.batch_size, "lr": tc.lr, "lr_schedule": tc.lr_schedule,
                   "warmup_steps": tc.warmup_steps, "ema_decay": tc.ema_decay, "seed": tc.seed},
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg": load.summary(),
        "train_seconds_logged": logged,           # the training windows of metrics.jsonl
        # this session only (a resumed run's earlier sessions are in train_seconds_logged alone)
        "train_seconds_fit": fit_s,               # Trainer.fit (steps + checkpoints)
        "train_seconds_wall": train_wall,         # api.train including data loading and model building
        "median_step_s": sorted(per_step)[len(per_step) // 2] if per_step else None,
        "idle_step_s": IDLE_STEP_S[domain],
        "idle_equiv_minutes": steps * IDLE_STEP_S[domain] / 60.0,
        "final_loss": final_loss,
        "eval": {"num": EVAL_NUM[domain], "sampler": tc.eval_sampler, "steps": tc.eval_steps, "seed": 0,
                 "seconds": eval_s},
        "metrics": metrics,
    }


def reference_row(domain: str, device: str) -> dict:
    """The domain's metrics of real training-split items against the held-out reference of the
    default recipe (as many items as the evaluation's samples, or all there are)."""
    import torch

    import diffuse.api as api

    cfg = api.make_config(domain, device=device)
    dom = api.get_domain(domain)
    from diffuse.api.configs import load_data, split_data

    dataset = load_data(dom, cfg)
    train_set, held = split_data(dataset, cfg.train)
    n = min(EVAL_NUM[domain], len(train_set))
    real = train_set.batch(torch.arange(n), torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    metrics = dom.bind(dataset.info()).metrics(real, held)
    return {"domain": domain, "items": n, "reference_items": len(held), "metrics": metrics,
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- step time
def measure_step_time(domain: str, device: str, steps: int = 60, last: int = 3) -> dict:
    """``diffuse train --domain D --steps 60 --eval-samples 0``: seconds per step from the
    samples/s of the last ``last`` log lines (the first ones include warm-up)."""
    import torch

    import diffuse.api as api
    from diffuse.core.training.checkpoint import read_run_config

    with tempfile.TemporaryDirectory(prefix="qc_step_") as tmp:
        run = Path(tmp) / "run"
        api.train(domain, out=run, progress=False, steps=steps, eval_samples=0, device=device)
        batch = read_run_config(run).train.batch_size
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rates = [r["samples_per_s"] for r in recs if "samples_per_s" in r][-last:]
    rate = sum(rates) / len(rates)
    return {"domain": domain, "batch_size": batch, "samples_per_s": rate, "step_s": batch / rate,
            "threads": torch.get_num_threads(), "load_avg": os.getloadavg()}


# ----------------------------------------------------------------------------- report
def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(domain: str, points: list[dict], ref: dict | None) -> str:
    keys = METRICS[domain]
    head = ["steps", "idle 2-core min", "measured train min (threads, load)", *[LABELS[k] for k in keys],
            "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted(points, key=lambda p: p["steps"]):
        mark = " (quickstart)" if p["steps"] == QUICKSTART[domain] else ""
        lines.append("| " + " | ".join([
            f"{p['steps']}{mark}", f"{p['idle_equiv_minutes']:.1f}",
            f"{p['train_seconds_logged'] / 60:.1f} ({p['threads']}, {p['load_avg']['mean']:.1f})",
            *[_fmt(p["metrics"].get(k)) for k in keys], f"{p['eval']['seconds']:.0f}"]) + " |")
    if ref is not None:
        lines.append("| " + " | ".join([f"real data (n={ref['items']})", "-", "-",
                                        *[_fmt(ref["metrics"].get(k)) for k in keys], "-"]) + " |")
    return "\n".join(lines)


def _panels(domain: str) -> list[tuple[str, list[str], bool]]:
    """(title, metric keys, log y) per panel of a domain's figure."""
    if domain == "molecules":
        return [("molecules (256 samples, DDPM-500): share of molecules / atoms", METRICS[domain], False)]
    if domain == "image":
        return [("image: FID (512 samples, DDIM-50; lower is better)", ["fid"], True),
                ("image: KID", ["kid"], True)]
    return [("audio: Frechet distances (64 clips, DDPM-50; lower is better)", METRICS[domain], True)]


def plot(domain: str, points: list[dict], ref: dict | None, path: Path) -> str:
    """Write the domain's figure; returns the plotter used."""
    pts = sorted(points, key=lambda p: p["steps"])
    panels = []
    for title, keys, logy in _panels(domain):
        series = []
        for k in keys:
            xy = [(p["idle_equiv_minutes"], p["metrics"].get(k)) for p in pts]
            xy = [(x, y) for x, y in xy if isinstance(y, (int, float)) and math.isfinite(y) and (y > 0 or not logy)]
            refv = ref["metrics"].get(k) if ref is not None else None
            series.append({"label": LABELS[k], "xy": xy,
                           "ref": refv if isinstance(refv, (int, float)) and (refv > 0 or not logy) else None})
        panels.append({"title": title, "series": series, "logy": logy})
    quick = QUICKSTART[domain] * IDLE_STEP_S[domain] / 60.0
    xlabel = "training time, idle 2-core equivalent minutes (steps x idle s/step; log scale)"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _plot_pillow(panels, quick, xlabel, path)
        return "pillow"
    _plot_matplotlib(panels, quick, xlabel, path)
    return "matplotlib"


def _plot_matplotlib(panels, quick, xlabel, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for i, s in enumerate(panel["series"]):
            color = f"C{i}"
            if s["xy"]:
                ax.plot(*zip(*s["xy"]), marker="o", color=color, label=s["label"])
                ax.plot([x for x, _ in s["xy"] if math.isclose(x, quick)],
                        [y for x, y in s["xy"] if math.isclose(x, quick)], marker="o", markersize=12,
                        markerfacecolor="none", color=color, linestyle="none")
            if s["ref"] is not None:
                ax.axhline(s["ref"], color=color, linestyle="--", linewidth=0.8)
        ax.axvline(quick, color="grey", linestyle=":")
        ax.text(quick, 1.0, " quickstart", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
        ax.set_xscale("log")
        if panel["logy"]:
            ax.set_yscale("log")
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.legend(fontsize=7, title="dashed: real data", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        out = []
        for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
            out += [m * 10 ** e for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
        return out or [lo, hi]
    step = 10 ** (math.floor(math.log10(max(hi - lo, 1e-12))) - 1)
    for m in (1, 2, 5, 10, 20, 50):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _plot_pillow(panels, quick, xlabel, path: Path) -> None:
    """A small line plot with Pillow: log x, per-panel linear or log y, dashed reference lines."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, ml, mr, mt, mb = 720, 460, 70, 20, 40, 150
    img = Image.new("RGB", (W * len(panels), H), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=13)     # Pillow >= 10.1: a scalable font
    except TypeError:
        font = ImageFont.load_default()
    for pi, panel in enumerate(panels):
        ox = pi * W
        xs = [x for s in panel["series"] for x, _ in s["xy"]] + [quick]
        ys = [y for s in panel["series"] for _, y in s["xy"]] + [s["ref"] for s in panel["series"] if s["ref"] is not None]
        if not ys:
            continue
        x0, x1 = min(xs) / 1.3, max(xs) * 1.3
        logy = panel["logy"]
        if logy:
            y0, y1 = min(ys) / 1.5, max(ys) * 1.5
        else:
            y0, y1 = min(0.0, min(ys)), max(1.0, max(ys)) * 1.05
        fx = lambda x: ox + ml + (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0)) * (W - ml - mr)  # noqa: E731
        fy = (lambda y: mt + (math.log(y1) - math.log(y)) / (math.log(y1) - math.log(y0)) * (H - mt - mb)) if logy \
            else (lambda y: mt + (y1 - y) / (y1 - y0) * (H - mt - mb))  # noqa: E731
        d.rectangle([ox + ml, mt, ox + W - mr, H - mb], outline="black")
        d.text((ox + ml, 12), panel["title"], fill="black", font=font)
        for t in _ticks(x0, x1, True):
            X = fx(t)
            d.line([X, H - mb, X, H - mb + 5], fill="black")
            d.text((X - 8, H - mb + 8), f"{t:g}", fill="black", font=font)
        for t in _ticks(y0, y1, logy):
            Y = fy(t)
            d.line([ox + ml - 5, Y, ox + ml, Y], fill="black")
            d.line([ox + ml + 1, Y, ox + W - mr - 1, Y], fill=(235, 235, 235))
            d.text((ox + 4, Y - 6), f"{t:.3g}", fill="black", font=font)
        d.text((ox + ml, H - mb + 24), xlabel, fill="black", font=font)
        Q = fx(quick)
        for Y in range(mt, H - mb, 6):
            d.line([Q, Y, Q, Y + 2], fill="grey")
        d.text((Q - 78, mt + 3) if Q > ox + W - mr - 90 else (Q + 3, mt + 3), "quickstart", fill="grey", font=font)
        for i, s in enumerate(panel["series"]):
            c = _COLORS[i % len(_COLORS)]
            if s["ref"] is not None and y0 <= s["ref"] <= y1:
                Y = fy(s["ref"])
                for X in range(ox + ml, ox + W - mr - 6, 10):
                    d.line([X, Y, X + 5, Y], fill=c)
            pts = [(fx(x), fy(y)) for x, y in s["xy"]]
            if len(pts) > 1:
                d.line(pts, fill=c, width=2)
            for (x, _), (X, Y) in zip(s["xy"], pts):
                d.ellipse([X - 3, Y - 3, X + 3, Y + 3], fill=c)
                if math.isclose(x, quick):
                    d.ellipse([X - 7, Y - 7, X + 7, Y + 7], outline=c, width=2)
            ly = H - mb + 44 + 16 * i
            d.line([ox + ml, ly + 6, ox + ml + 20, ly + 6], fill=c, width=2)
            d.text((ox + ml + 26, ly), s["label"], fill="black", font=font)
        d.text((ox + ml + 260, H - mb + 44), "solid: trained models; dashed: real data", fill="black", font=font)
        d.text((ox + ml + 260, H - mb + 60), "ringed: the quickstart run (default steps)", fill="black", font=font)
    img.save(path)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def report(domains: list[str], args) -> dict:
    """Gather the point files into the summary JSON, print the tables, draw the figures."""
    summary = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "idle_step_s": IDLE_STEP_S,
               "quickstart_steps": QUICKSTART, "eval_num": EVAL_NUM, "domains": {}}
    for dom in domains:
        points = [json.loads(p.read_text()) for p in sorted(POINTS.glob(f"{dom}_*.json"))
                  if p.stem.split("_", 1)[1].isdigit()]
        ref_path = POINTS / f"{dom}_reference.json"
        ref = json.loads(ref_path.read_text()) if ref_path.exists() else None
        if not points:
            print(f"\n{dom}: no points yet")
            continue
        for pt in points:   # the x axis from the current idle s/step (--idle-step-s)
            pt["idle_step_s"] = IDLE_STEP_S[dom]
            pt["idle_equiv_minutes"] = pt["steps"] * IDLE_STEP_S[dom] / 60.0
        png = DOCS / f"quality_compute_{dom}.png"
        used = plot(dom, points, ref, png)
        summary["domains"][dom] = {"points": sorted(points, key=lambda p: p["steps"]), "reference": ref,
                                   "png": _rel(png), "plotter": used}
        print(f"\n### {dom}\n\n{table(dom, points, ref)}\n\n(figure: {_rel(png)}, drawn with {used})")
        cost = ", ".join(f"{p['steps']}: train {p['train_seconds_logged' if p.get('resumed') else 'train_seconds_wall']:.0f}"
                         f" s + eval {p['eval']['seconds']:.0f} s" for p in sorted(points, key=lambda p: p["steps"]))
        print(f"cost per point (wall, this machine): {cost}")
    _atomic_json(SUMMARY, summary)
    print(f"\nwrote {SUMMARY}")
    return summary


README_START, README_END = "<!-- quality-compute:start -->", "<!-- quality-compute:end -->"


def readme_block(summary: dict, domains: list[str]) -> str:
    """The README's tables and figure links (what is missing said plainly)."""
    parts = []
    for dom in domains:
        d, want = summary["domains"].get(dom), DEFAULT_STEPS[dom]
        if d is None:
            parts.append(f"**{dom}**: no point finished yet (step list {', '.join(map(str, want))}); the sweep "
                         "command below continues it.")
            continue
        missing = [n for n in want if n not in {p["steps"] for p in d["points"]}]
        head = f"**{dom}** ({len(d['points'])} of {len(want)} points"
        head += f"; still to run: {', '.join(map(str, missing))} steps)" if missing else ")"
        parts.append(f"{head}\n\n{table(dom, d['points'], d['reference'])}\n\n"
                     f"![{dom}: quality vs training time]({_page_link(d['png'])})")
    return "\n\n".join(parts)


def _page_link(png: str) -> str:
    """A figure's link from docs/results/quality-compute.md (the figures live in docs/)."""
    return "../" + png[len("docs/"):] if png.startswith("docs/") else png


def update_readme(summary: dict, domains: list[str], path: Path = ROOT / "docs" / "results" / "quality-compute.md") -> None:
    """Replace the block between the quality-compute markers of the results page
    (``docs/results/quality-compute.md``; it was the README's before the documentation site)."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"error: {path} has no {README_START} ... {README_END} block")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{README_START}\n{readme_block(summary, domains)}\n{README_END}{tail}")
    os.replace(tmp, path)
    print(f"updated {path}")


# ----------------------------------------------------------------------------- main
def _steps_arg(value: str) -> dict[str, list[int]]:
    """``200,400`` (every domain) or ``image=200,400;audio=120`` (per domain)."""
    out: dict[str, list[int]] = {}
    for part in value.split(";"):
        name, _, nums = part.rpartition("=")
        try:
            steps = [int(v) for v in nums.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"--steps takes comma-separated integers, got {nums!r}") from None
        if not steps or min(steps) < 1:
            raise argparse.ArgumentTypeError(f"--steps needs positive step counts, got {nums!r}")
        for dom in ([name.strip()] if name else DOMAINS):
            out[dom] = steps
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated, run in this order")
    p.add_argument("--steps", type=_steps_arg, default=None,
                   help="step counts: '200,400' for every domain or 'image=200,400;audio=120,250' "
                        f"(default: {DEFAULT_STEPS})")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each training / evaluation")
    p.add_argument("--device", default="cpu")
    p.add_argument("--spacing", default=None,
                   help="time grid of the evaluation sampler (default: the domain's; the README's tables were "
                        "measured with trailing, the audio default before Karras' grid)")
    p.add_argument("--out", default=None, help="folder for the run folders (default: a new temp dir)")
    p.add_argument("--resume", action="store_true", help="skip points whose result JSON exists; continue "
                   "an interrupted run folder in --out from its checkpoint")
    p.add_argument("--results", default=None, help="folder for the point JSONs, and then also the summary JSON and "
                   "PNGs (a smoke test; default: benchmarks/results/quality_compute, the summary in "
                   "benchmarks/results/quality_compute.json, the PNGs in docs/)")
    p.add_argument("--plot-only", action="store_true", help="only the tables, summary JSON and PNGs from the point files")
    p.add_argument("--update-readme", action="store_true",
                   help="with --plot-only: rewrite the README's quality-versus-compute tables")
    p.add_argument("--measure-step-time", action="store_true",
                   help="measure the idle s/step of each domain's default recipe (60 steps) and stop")
    p.add_argument("--longest-in-order", action="store_true",
                   help="run each domain's points in order (default: every domain's longest run comes last)")
    p.add_argument("--idle-step-s", default=None, metavar="DOMAIN=S,...",
                   help="idle 2-thread seconds per step for the x axis, e.g. 'image=0.30,audio=0.48' "
                        f"(default: {IDLE_STEP_S}, measured on this machine); applied when reporting, "
                        "so a new measurement rescales the curves without training again")
    p.add_argument("--point", nargs=2, metavar=("DOMAIN", "STEPS"), help=argparse.SUPPRESS)
    p.add_argument("--reference", metavar="DOMAIN", help=argparse.SUPPRESS)
    args = p.parse_args()
    global POINTS, DOCS, SUMMARY
    if args.results:
        POINTS = DOCS = Path(args.results)
        SUMMARY = POINTS / "quality_compute.json"
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    bad = [d for d in domains if d not in DOMAINS]
    if bad:
        p.error(f"unknown domain(s) {bad}; choose from {', '.join(DOMAINS)}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    for part in (args.idle_step_s or "").split(","):
        if part.strip():
            name, _, value = part.partition("=")
            try:
                IDLE_STEP_S[name.strip()] = float(value)
            except ValueError:
                p.error(f"--idle-step-s takes DOMAIN=SECONDS pairs, got {part!r}")
            if name.strip() not in DOMAINS or not IDLE_STEP_S[name.strip()] > 0:
                p.error(f"--idle-step-s: unknown domain or non-positive seconds in {part!r}")

    if args.point or args.reference or args.measure_step_time:
        from diffuse.cli.threads import configure
        configure()   # the CLI's OpenMP policy, chosen from the machine's load (diffuse.cli.threads)
        import torch
        torch.set_num_threads(args.threads)
        if args.point:
            dom, steps = args.point[0], int(args.point[1])
            _atomic_json(POINTS / f"{dom}_{steps}.json", run_point(dom, steps, Path(args.out), args.device,
                                                                   args.spacing))
        elif args.reference:
            _atomic_json(POINTS / f"{args.reference}_reference.json", reference_row(args.reference, args.device))
        else:
            res = [measure_step_time(d, args.device) for d in domains]
            for r in res:
                print(f"{r['domain']}: {r['step_s']:.3f} s/step (batch {r['batch_size']}, {r['threads']} threads, "
                      f"load average {r['load_avg'][0]:.2f})")
            _atomic_json(SUMMARY.with_name("quality_compute_step_time.json"), {"runs": res})
            print("use them with --plot-only --idle-step-s " + ",".join(f"{r['domain']}={r['step_s']:.3f}" for r in res))
        return
    if args.plot_only:
        summary = report(domains, args)
        if args.update_readme:
            update_readme(summary, DOMAINS)
        return

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="quality_compute_"))
    if not args.resume and out.exists() and any(out.iterdir()):
        p.error(f"{out} is not empty; pass --resume to continue a sweep there, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    steps = {**DEFAULT_STEPS, **(args.steps or {})}
    base = [sys.executable, __file__, "--threads", str(args.threads), "--device", args.device, "--out", str(out),
            *(["--spacing", args.spacing] if args.spacing else [])]
    if args.results:
        base += ["--results", str(POINTS)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(args.threads))}
    print(f"run folders in {out}; point results in {POINTS}", flush=True)
    # the references, then every domain's points but its longest, then the longest runs: a sweep
    # stopped early still has each domain's curve up to the quickstart point
    jobs = [(dom, "reference", None) for dom in domains]
    if args.longest_in_order:
        jobs += [(dom, "point", n) for dom in domains for n in sorted(steps[dom])]
    else:
        jobs += [(dom, "point", n) for dom in domains for n in sorted(steps[dom])[:-1]]
        jobs += [(dom, "point", max(steps[dom])) for dom in domains]
    print("order: " + ", ".join(f"{d} {n or 'reference'}" for d, _, n in jobs), flush=True)
    for dom, kind, n in jobs:
        target = POINTS / (f"{dom}_reference.json" if kind == "reference" else f"{dom}_{n}.json")
        if args.resume and target.exists():
            print(f"{dom} {kind} {n or ''}: done already ({target.name})", flush=True)
            continue
        if not args.resume and kind == "point" and (out / f"{dom}_{n}").exists():
            shutil.rmtree(out / f"{dom}_{n}")
        cmd = base + (["--reference", dom] if kind == "reference" else ["--point", dom, str(n)])
        t0 = time.perf_counter()
        print(f"{time.strftime('%H:%M:%S')} {dom} {kind} {n or ''} ... (load {os.getloadavg()[0]:.2f})", flush=True)
        res = subprocess.run(cmd, env=env)
        if res.returncode != 0:
            print(f"  FAILED (exit {res.returncode}); the sweep continues", flush=True)
            continue
        data = json.loads(target.read_text())
        msg = "  ".join(f"{k}={_fmt(data['metrics'].get(k))}" for k in METRICS[dom])
        print(f"  done in {time.perf_counter() - t0:.0f} s: {msg}", flush=True)
    report(domains, args)


if __name__ == "__main__":
    main()
