"""Cost of one guided sampler step relative to an unguided one, for each domain's default model.

    python benchmarks/bench_guidance.py [--device cpu|cuda] [--threads 2] [--steps 4] [--repeats 3] [--quick]

For each domain (image, audio, molecules) the default backbone (random weights: timing only)
is sampled with DDIM on the bundled data's shapes, and the wall time of one sampler step is
measured three ways:

* ``unguided``: one network pass per step;
* ``cfg``: classifier-free guidance, the conditional and null passes as ONE batched call
  (``core.sampling.guidance.classifier_free_guidance``; image: the label-conditional U-Net; audio and
  molecules have no label embedding in their default models, so the null and conditional
  passes see the same network: the cost, a doubled batch, is the same);
* ``classifier``: classifier guidance with the domain's default noise-aware classifier
  (``Domain.build_classifier``): one network pass plus a forward and backward pass of the
  classifier for ``grad log p(y | x_t)``.

Each is timed idle and with a second job on the cores (``--busy`` worker processes running a
pure-Python loop), in one run. A step's time is the median over ``--repeats`` runs of
``--steps`` DDIM steps (divided by the steps); the three ways alternate within each repeat.
``loadavg`` (1-minute load average) is recorded per row: on a shared machine it says how
"idle" idle was. Prints a table, writes
``benchmarks/results/guidance_<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import diffuse.api as api
from diffuse.api.configs import record_conditions
from diffuse.core.models.classifier import Classifier, NoisyClassifier, Target
from diffuse.core.data.condition import Condition, LabelKind
from diffuse.core.sampling.guidance import classifier_free_guidance
from diffuse.core.sampling.ancestral import ddim
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid

RESULTS = Path(__file__).resolve().parent / "results"
BATCH = {"image": 16, "audio": 4, "molecules": 16}


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x = (x * 31 + i) % 1_000_003


def _setup(name: str, device: torch.device):
    dom = api.get_domain(name)
    opts = dom.default_data()
    if name == "image":
        opts = {**opts, **dom.condition_data_options(["label"])}
    info = record_conditions(dom, dom.load_data(None, opts).info())
    model = api.build(name, info, device=str(device), seed=0)
    dom = dom.bind(info)
    kinds = model.condition_kinds() or {"label": LabelKind(10)}
    if name == "molecules":
        target = Target("property", "gyration", mean=2.0, std=0.5)
    else:
        from diffuse.core.models.classifier import label_kind

        lk = label_kind(dom) or LabelKind(5)
        target = Target("label", "label", lk.num_classes, lk.class_names)
    torch.manual_seed(0)
    clf = Classifier(dom, None, NoisyClassifier(dom.build_classifier({}, target), target).to(device).eval(),
                     device)
    n = BATCH[name]
    template = dom.template(n, torch.Generator().manual_seed(0)).to(device)
    cond = Condition({"label": torch.ones(n, dtype=torch.long, device=device)}, {"label": kinds["label"]})
    return dom, info, model, clf, template, cond, target


def _denoisers(model, clf, template, cond, target):
    den, sched, space = model.denoiser, model.diffusion.schedule, template.space
    y = torch.full((len(template),), 1.0 if target.kind == "property" else 1, device=template.x.device)
    if target.kind == "label":
        y = y.long()
    return {
        "unguided": lambda: den.bind(space, cond if model.condition_kinds() else None),
        "cfg": lambda: classifier_free_guidance(den, space, cond, 3.0, sched),
        "classifier": lambda: clf.guidance(y, 2.0, sched).wrap(den.bind(space, None), batch=template, denoiser=den),
    }


@torch.no_grad()
def _time(makers: dict, model, template, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per DDIM step of each way; the ways are interleaved within each repeat, so
    a change of the machine's load hits all of them alike."""
    sched, space = model.diffusion.schedule, template.space
    grid = time_grid(sched, 50)[: steps + 1]
    x = prior_sample(sched, space, template.x, generator=torch.Generator(template.x.device).manual_seed(0))
    for make in makers.values():
        ddim(make(), x, grid[:2], schedule=sched, space=space)   # warm-up
    times: dict[str, list[float]] = {k: [] for k in makers}
    for _ in range(repeats):
        for k, make in makers.items():
            fn = make()
            if template.x.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            ddim(fn, x, grid, schedule=sched, space=space)
            if template.x.device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--busy", type=int, default=1, help="busy worker processes for the loaded condition")
    p.add_argument("--domains", default="image,audio,molecules")
    p.add_argument("--quick", action="store_true", help="2 steps, 1 repeat")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.quick:
        a.steps, a.repeats = 2, 1
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    rows = []
    for name in a.domains.split(","):
        dom, info, model, clf, template, cond, target = _setup(name, device)
        makers = _denoisers(model, clf, template, cond, target)
        for load in ("idle", "busy"):
            stop, procs = mp.Event(), []
            if load == "busy":
                procs = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(a.busy)]
                for pr in procs:
                    pr.start()
                time.sleep(0.5)
            try:
                res = _time(makers, model, template, a.steps, a.repeats)
            finally:
                stop.set()
                for pr in procs:
                    pr.join()
            row = {"domain": name, "load": load, "batch": len(template), "loadavg": os.getloadavg()[0],
                   **{f"{k}_ms": 1000 * v for k, v in res.items()},
                   "cfg_ratio": res["cfg"] / res["unguided"], "classifier_ratio": res["classifier"] / res["unguided"]}
            rows.append(row)
            print(f"{name:<10} {load:<5} batch {row['batch']:>3}  unguided {row['unguided_ms']:8.1f} ms  "
                  f"cfg {row['cfg_ms']:8.1f} ms (x{row['cfg_ratio']:.2f})  classifier {row['classifier_ms']:8.1f} ms "
                  f"(x{row['classifier_ratio']:.2f})", flush=True)
    meta = {"device": str(device), "threads": a.threads, "steps": a.steps, "repeats": a.repeats, "busy": a.busy,
            "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
            "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    out = a.out or RESULTS / f"guidance_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
