"""The molecule autoencoder (GeoLDM-style, ``domains/molecules/autoencoder.py``): reconstruction
quality on held-out molecules, and what a latent step costs beside a data-space step.

1. ``reconstruction``: ``api.train_autoencoder`` on the bundled QM9 subset (2000 molecules; the
   run holds out 10 %, 200 molecules) for ``--steps`` steps, once per ``--latent-features`` value,
   then the held-out figures of the run's ``evaluation.json`` (EMA weights, posterior mean):
   ``element_recovery`` (share of atoms whose element is decoded right, mean per molecule),
   ``molecule_recovery`` (share of molecules with every element right) and ``position_rmsd``
   (Angstrom, per molecule, no alignment needed: positions decode in the input's frame). The
   majority-element share of the held-out atoms is printed beside them (what a decoder that
   ignores its input gets). Also the std of the scaled latents' positions and features (512
   training molecules): diffusion noises both parts with unit variance.
2. ``step``: seconds per training step on the same batches of QM9 molecules, measured side by
   side in one process (interleaved repeats, median): the EDM denoiser (EGNN, ``--preset``) on
   data ``[N, 3 + 5]``; the same denoiser on latents ``[N, 3 + k]``; and the autoencoder's
   encode of a batch, which a latent model pays on every training batch (``LatentDataset``).
   The per-step cost of the EGNN is set by its ``N^2`` edges, not by the feature width, so
   molecule latents do not make steps cheaper here (unlike images); GeoLDM's gain is quality.

Prints tables and writes JSON (``--json``). Not part of the tests. One thread by default (the
cores are shared); on a loaded machine compare ratios, not absolute times::

    PYTHONPATH=... python benchmarks/bench_molecule_autoencoder.py --steps 300 --latent-features 1,2 \\
        --json /tmp/bench_molecule_autoencoder.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import diffuse.api as api
from diffuse.domains.molecules import MoleculeDomain


def reconstruction(k: int, steps: int, batch_size: int, lr: float, seed: int, root: Path) -> dict[str, Any]:
    run = root / f"ae_k{k}"
    t0 = time.perf_counter()
    res = api.train_autoencoder("molecules", out=run, progress=False, config={"model": {"latent_features": k}},
                                steps=steps, batch_size=batch_size, lr=lr, seed=seed, log_every=25)
    seconds = time.perf_counter() - t0
    ev = json.loads((run / "evaluation.json").read_text())
    # std of the scaled latents (posterior draws) per part, on the training molecules: diffusion
    # adds unit-variance noise to both parts, so their scales set their signal-to-noise ratios
    ae = api.load_autoencoder(run, device="cpu")
    data = MoleculeDomain().load_data(None, {})
    batch = data.batch(torch.arange(512))
    with torch.no_grad():
        z = ae.encode_scaled(batch, torch.Generator().manual_seed(seed))
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    return {"latent_features": k, "steps": res["steps"], "seconds": round(seconds, 1),
            "train_seconds": round(float(res["seconds"]), 1), "final_loss": losses[-1] if losses else None,
            "scale": ev["scale"], "held_out": ev["held_out_items"], "element_recovery": ev["element_recovery"],
            "molecule_recovery": ev["molecule_recovery"], "position_rmsd": ev["position_rmsd"],
            "scaled_latent_std": {"positions": float(z[:, :3].std()), "features": float(z[:, 3:].std())}}


def majority_share(seed: int) -> float:
    """Share of held-out atoms that are the most common element (the run's own split)."""
    dom = MoleculeDomain()
    data = dom.load_data(None, {})
    _, held = data.split(0.1, seed)
    batch = held.batch(torch.arange(len(held)))
    types = batch.x[:, 3:8].argmax(1)
    return float(torch.bincount(types).max()) / types.numel()


def step_times(ks: list[int], preset: str, batch_size: int, repeats: int, seed: int) -> dict[str, Any]:
    dom = MoleculeDomain()
    data = dom.load_data(None, {})
    info = data.info()
    g = torch.Generator().manual_seed(seed)
    batches = [data.batch(torch.randint(len(data), (batch_size,), generator=g)) for _ in range(repeats)]
    torch.manual_seed(seed)
    nets = {"data": dom.bind(info).build_backbone({"preset": preset})}
    aes = {}
    for k in ks:
        nets[f"latent k={k}"] = dom.bind({**info, "feature_dim": 3 + k}).build_backbone({"preset": preset})
        aes[k] = dom.bind(info).build_autoencoder({"latent_features": k}).eval()
    times: dict[str, list[float]] = {name: [] for name in nets}
    times.update({f"encode k={k}": [] for k in ks})

    def train_step(net, x, space):
        t = torch.rand(space.num_graphs, generator=g) * 1000
        eps = space.noise(x, g)
        out = net(x + eps, t, space=space)
        loss = ((out - eps) ** 2).mean()
        net.zero_grad(set_to_none=True)
        loss.backward()

    for batch in batches:                     # interleaved: every variant sees the same load
        for k, ae in aes.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                z = ae.encode(batch)
            times[f"encode k={k}"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            train_step(nets[f"latent k={k}"], z, batch.space)
            times[f"latent k={k}"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        train_step(nets["data"], batch.x, batch.space)
        times["data"].append(time.perf_counter() - t0)
    med = {name: statistics.median(v[1:] if len(v) > 1 else v) for name, v in times.items()}
    rows = {name: {"seconds": round(s, 4), "vs_data": round(s / med["data"], 3)} for name, s in med.items()}
    for k in ks:
        total = med[f"latent k={k}"] + med[f"encode k={k}"]
        rows[f"latent k={k} + encode"] = {"seconds": round(total, 4), "vs_data": round(total / med["data"], 3)}
    return {"preset": preset, "batch_size": batch_size, "repeats": repeats,
            "atoms_per_batch": [int(b.x.shape[0]) for b in batches][:3], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="reconstruction,step")
    ap.add_argument("--steps", type=int, default=300, help="autoencoder training steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--latent-features", default="1", help="comma-separated k values")
    ap.add_argument("--preset", default="small", help="EGNN preset of the denoiser in the step part")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(v) for v in args.latent_features.split(",") if v.strip()]
    parts = {p.strip() for p in args.parts.split(",")}
    out: dict[str, Any] = {"threads": args.threads, "command": "python benchmarks/bench_molecule_autoencoder.py "
                           f"--parts {args.parts} --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr} "
                           f"--latent-features {args.latent_features} --preset {args.preset} "
                           f"--repeats {args.repeats} --threads {args.threads} --seed {args.seed}"}
    if "step" in parts:
        res = step_times(ks, args.preset, args.batch_size, args.repeats, args.seed)
        out["step"] = res
        print(f"\nseconds per training step, {args.batch_size} molecules, EGNN preset {args.preset}, "
              f"{args.threads} thread(s), median of {args.repeats} interleaved repeats")
        print(f"{'variant':<24}{'seconds':>10}{'vs data':>10}")
        for name, row in res["rows"].items():
            print(f"{name:<24}{row['seconds']:>10.4f}{row['vs_data']:>10.3f}")
    if "reconstruction" in parts:
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for k in ks:
                rows.append(reconstruction(k, args.steps, args.batch_size, args.lr, args.seed, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
        out["reconstruction"] = rows
        out["majority_element_share"] = majority_share(args.seed)
        print(f"\nheld-out reconstruction after {args.steps} steps x {args.batch_size} molecules "
              f"(bundled QM9 subset; majority-element share {out['majority_element_share']:.3f})")
        print(f"{'k':>3}{'element rec.':>14}{'molecule rec.':>15}{'RMSD (A)':>10}{'train s':>9}")
        for r in rows:
            print(f"{r['latent_features']:>3}{r['element_recovery']:>14.4f}{r['molecule_recovery']:>15.4f}"
                  f"{r['position_rmsd']:>10.4f}{r['train_seconds']:>9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
