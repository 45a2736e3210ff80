"""Molecule-domain benchmarks: EGNN speed and memory, sampling speed, scaling, quality.

Measures, on CPU (and on CUDA when ``--device cuda``):

1. ``train``: EGNN forward + backward throughput (molecules/s) and peak memory at QM9 sizes
   (batches drawn from the bundled QM9 subset), for our flat EGNN and for a dense padded
   re-implementation of EDM's formulation (Hoogeboom et al. 2022: all ``N_max^2`` pairs of each
   molecule with an edge mask, the edge MLP applied to ``[h_i, h_j, e_ij]``), at the same width
   and depth. Each configuration runs in its own process so that peak memory (max RSS on CPU,
   ``max_memory_allocated`` on CUDA) is its own.
2. ``sampling``: molecules/s of DDPM sampling at 1000 and 100 steps.
3. ``scaling``: forward + backward time per molecule as the atom count grows (10..100 atoms).
4. ``quality``: EDM's stability / validity table after a fixed CPU training budget.

Prints tables and writes JSON (``--json``). Not part of the tests. Example::

    python benchmarks/bench_molecules.py --parts train,scaling --threads 1 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from torch import Tensor, nn

from diffuse.core.process.denoiser import Denoiser
from diffuse.core.data.graph import GraphSpace
from diffuse.core.process.parameterization import EpsParam
from diffuse.core.sampling.ancestral import ddpm
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.core.process.schedule import PolynomialSchedule
from diffuse.domains.molecules import EGNN, MoleculeDomain


# ----------------------------------------------------------------------------- EDM's dense formulation
class DenseGCL(nn.Module):
    """EDM's GCL on padded batches: messages for all B*N*N pairs, masked afterwards."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        act = nn.SiLU()
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden + 2, hidden), act, nn.Linear(hidden, hidden), act)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), act, nn.Linear(hidden, hidden))
        self.att_mlp = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, h, row, col, edge_attr, edge_mask, node_mask):
        m = self.edge_mlp(torch.cat([h[row], h[col], edge_attr], 1))
        m = m * self.att_mlp(m) * edge_mask
        agg = h.new_zeros(h.shape).index_add_(0, row, m)
        return (h + self.node_mlp(torch.cat([h, agg], 1))) * node_mask


class DenseUpdate(nn.Module):
    def __init__(self, hidden: int, coords_range: float) -> None:
        super().__init__()
        act = nn.SiLU()
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.coord_mlp = nn.Sequential(nn.Linear(2 * hidden + 2, hidden), act, nn.Linear(hidden, hidden), act, last)
        self.range = coords_range

    def forward(self, h, x, row, col, unit, edge_attr, edge_mask, node_mask):
        w = self.coord_mlp(torch.cat([h[row], h[col], edge_attr], 1))
        trans = unit * torch.tanh(w) * self.range * edge_mask
        return (x + x.new_zeros(x.shape).index_add_(0, row, trans)) * node_mask


class DenseEGNN(nn.Module):
    """EDM's EGNN_dynamics on ``[B, N_max]`` padded molecules (the baseline, same width / depth)."""

    def __init__(self, in_features: int, hidden: int, layers: int, coords_range: float = 15.0) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features + 1, hidden)
        self.gcls = nn.ModuleList([DenseGCL(hidden) for _ in range(layers)])
        self.updates = nn.ModuleList([DenseUpdate(hidden, coords_range / layers) for _ in range(layers)])
        self.head = nn.Linear(hidden, in_features + 1)
        self._edges: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def edges(self, b: int, n: int, device) -> tuple[Tensor, Tensor]:
        key = (b, n)
        if key not in self._edges:  # all n*n pairs of every molecule, self pairs included (as EDM)
            i = torch.arange(n, device=device)
            rows = (i[:, None].expand(n, n).reshape(-1)[None] + n * torch.arange(b, device=device)[:, None]).reshape(-1)
            cols = (i[None, :].expand(n, n).reshape(-1)[None] + n * torch.arange(b, device=device)[:, None]).reshape(-1)
            self._edges[key] = (rows, cols)
        return self._edges[key]

    def forward(self, xh: Tensor, t: Tensor, node_mask: Tensor) -> Tensor:
        b, n, d = xh.shape
        row, col = self.edges(b, n, xh.device)
        nm = node_mask.reshape(b * n, 1)
        em = (node_mask[:, :, None] * node_mask[:, None, :] *
              (1 - torch.eye(n, device=xh.device))[None]).reshape(b * n * n, 1)
        x = xh[..., :3].reshape(b * n, 3)
        h = torch.cat([xh[..., 3:], t[:, None, None].expand(b, n, 1)], 2).reshape(b * n, -1)
        h = self.embed(h) * nm
        x0 = x

        def geom(x):
            diff = x[row] - x[col]
            d2 = (diff ** 2).sum(1, keepdim=True)
            return d2, diff / (torch.sqrt(d2 + 1e-8) + 1.0)

        d0, _ = geom(x)
        for gcl, upd in zip(self.gcls, self.updates):
            d2, unit = geom(x)
            ea = torch.cat([d2, d0], 1)
            h = gcl(h, row, col, ea, em, nm)
            x = upd(h, x, row, col, unit, ea, em, nm)
        out_h = self.head(h) * nm
        vel = ((x - x0) * nm).reshape(b, n, 3)
        counts = node_mask.sum(1, keepdim=True)[..., None]
        vel = vel - vel.sum(1, keepdim=True) / counts * node_mask[..., None]
        return torch.cat([vel, out_h.reshape(b, n, -1)[..., :-1]], 2)


def to_dense(x: Tensor, space: GraphSpace) -> tuple[Tensor, Tensor]:
    from torch_geometric.utils import to_dense_batch
    dense, mask = to_dense_batch(x, space.batch, batch_size=space.num_graphs)
    return dense, mask.to(x.dtype)


# ----------------------------------------------------------------------------- helpers
def _peak_mb(device: torch.device, base_kb: int) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(n_atoms: int, num: int, num_types: int = 5, seed: int = 0):
    """``num`` molecules of ``n_atoms`` atoms with random positions (for scaling only)."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(num), n_atoms)
    sp = GraphSpace(batch, num)
    pos = torch.randn(num * n_atoms, 3, generator=g) * (n_atoms ** (1 / 3))
    types = torch.randint(0, num_types, (num * n_atoms,), generator=g)
    x = torch.cat([pos, nn.functional.one_hot(types, num_types).float() * 0.25], 1)
    return sp.project(x), sp


def worker_train(args) -> dict[str, Any]:
    """One configuration's forward + backward throughput and peak memory (run in a subprocess)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.atoms:
        x, sp = random_batch(args.atoms, args.batch)
    else:
        ds = MoleculeDomain().load_data(None, {})
        b = ds.batch(torch.randint(0, len(ds), (args.batch,), generator=torch.Generator().manual_seed(1)))
        x, sp = b.x, b.space
    feats = x.shape[1] - 3
    t = torch.rand(sp.num_graphs) * 1000
    if args.impl == "flat":
        net = EGNN(feats, hidden=args.hidden, layers=args.layers).to(device)
        sp = sp.to(device)
        x = x.to(device)
        run = lambda: net(x, t.to(device), space=sp)  # noqa: E731
        pairs = int(sp.edges()[0].numel())
    else:
        net = DenseEGNN(feats, args.hidden, args.layers).to(device)
        xd, mask = to_dense(x, sp)
        xd, mask = xd.to(device), mask.to(device)
        run = lambda: net(xd, t.to(device) / 1000, mask)  # noqa: E731
        pairs = int(mask.shape[0] * mask.shape[1] ** 2)
    real_pairs = int((sp.counts * (sp.counts - 1)).sum())
    opt = torch.optim.SGD(net.parameters(), lr=1e-6)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # model and data already built
    run().square().mean().backward()  # warm-up (allocator, caches)
    opt.zero_grad(set_to_none=True)
    _sync(device)
    if args.memory_only:  # one step under MALLOC_MMAP_THRESHOLD_ (see spawn): peak RSS = peak in use
        return {"impl": args.impl, "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
                "atoms": args.atoms or "qm9", "peak_mb": _peak_mb(device, base), "device": str(device)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        run().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    return {"impl": args.impl, "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
            "atoms": args.atoms or "qm9", "mol_per_s": args.batch / sec, "sec_per_iter": sec,
            "peak_mb": _peak_mb(device, base), "pairs_computed": pairs, "real_pairs": real_pairs,
            "device": str(device), "threads": args.threads}


def spawn(args, memory: bool = False, **over) -> dict[str, Any]:
    """Run one configuration in a fresh process. With ``memory``, glibc is told to serve every
    allocation over 64 KiB with mmap (``MALLOC_MMAP_THRESHOLD_``), so freed memory leaves the
    process at once and the peak RSS is the peak memory in use (slow: used for memory only)."""
    cmd = [sys.executable, __file__, "--worker", "--device", args.device, "--threads", str(args.threads)]
    for k, v in over.items():
        cmd += [f"--{k}", str(v)]
    env = dict(os.environ)
    if memory:
        cmd.append("--memory-only")
        if args.device == "cpu":
            env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed", **over}
    return json.loads(out.stdout.strip().splitlines()[-1])


def spawn_both(args, **over) -> dict[str, Any]:
    """Speed (``peak_rss_mb``: with glibc's caching) and then the true peak memory (``peak_mb``)."""
    r = spawn(args, **over)
    if "peak_mb" in r:
        r["peak_rss_mb"] = r.pop("peak_mb")
    m = spawn(args, memory=True, **over)
    r["peak_mb"] = m.get("peak_mb", m.get("error"))
    return r


def _table(rows: list[dict], cols: list[str]) -> None:
    print(" | ".join(f"{c:>14s}" for c in cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:14.3f}" if isinstance(v, float) else f"{str(v):>14s}")
        print(" | ".join(cells))
    print()


# ----------------------------------------------------------------------------- parts
def part_train(args) -> list[dict]:
    rows = []
    for hidden, layers, batch, iters in args.train_configs:
        for impl in ("flat", "dense"):
            rows.append(spawn_both(args, impl=impl, hidden=hidden, layers=layers, batch=batch, iters=iters))
            print(rows[-1], flush=True)
    print("EGNN forward+backward at QM9 sizes (bundled QM9 batches)")
    _table(rows, ["impl", "hidden", "layers", "batch", "mol_per_s", "peak_mb", "peak_rss_mb", "pairs_computed",
                  "real_pairs"])
    return rows


def part_scaling(args) -> list[dict]:
    rows = []
    for n in (10, 20, 40, 60, 80, 100):
        for impl in ("flat", "dense"):
            r = spawn_both(args, impl=impl, hidden=args.scale_hidden, layers=args.scale_layers, batch=8, atoms=n,
                           iters=3)
            if "sec_per_iter" in r:
                r["ms_per_mol"] = 1000 * r["sec_per_iter"] / 8
                r["us_per_pair"] = 1e6 * r["sec_per_iter"] / max(r["real_pairs"], 1)
            rows.append(r)
            print(r, flush=True)
    print(f"cost vs atom count (hidden {args.scale_hidden}, {args.scale_layers} layers, batch 8, fwd+bwd)")
    _table(rows, ["impl", "atoms", "ms_per_mol", "us_per_pair", "peak_mb"])
    return rows


def part_sampling(args) -> list[dict]:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dom = MoleculeDomain()
    dom = dom.bind(dom.load_data(None, {}).info())
    rows = []
    for preset, num, step_list in args.sampling_configs:
        torch.manual_seed(0)
        net = dom.build_backbone({"preset": preset}).to(device).eval()
        den = Denoiser(net, PolynomialSchedule(), EpsParam())
        for steps in step_list:
            g = torch.Generator().manual_seed(0)
            tpl = dom.template(num, g).to(device)
            x = prior_sample(den.schedule, tpl.space, tpl.x, generator=torch.Generator(device).manual_seed(0))
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                ddpm(den.bind(tpl.space), x, time_grid(den.schedule, steps), schedule=den.schedule, space=tpl.space)
            _sync(device)
            sec = time.perf_counter() - t0
            rows.append({"preset": preset, "num": num, "steps": steps, "mol_per_s": num / sec, "seconds": sec})
            print(rows[-1], flush=True)
    print("DDPM sampling throughput")
    _table(rows, ["preset", "num", "steps", "mol_per_s", "seconds"])
    return rows


def part_quality(args) -> list[dict]:
    """Train the default small model for a fixed wall-clock budget on the bundled data, then
    sample and score with EDM's metrics."""
    import diffuse.api as api
    import tempfile

    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(prefix="bench_mol_")
    steps = args.quality_steps
    t0 = time.perf_counter()
    api.train("molecules", out=out, progress=False, steps=steps, batch_size=64, checkpoint_every=0,
              final_eval=False, device=args.device, seed=0)
    train_s = time.perf_counter() - t0
    model = api.load(out, device=args.device)
    rows = []
    for steps_s in args.quality_sample_steps:
        t0 = time.perf_counter()
        samples = model.sample(args.quality_num, sampler="ddpm", steps=steps_s, seed=0, batch_size=100)
        sample_s = time.perf_counter() - t0
        table = model.domain.metrics(samples, model.reference_data())
        rows.append({"train_steps": steps, "train_s": train_s, "sample_steps": steps_s, "sample_s": sample_s,
                     **table})
        print(rows[-1], flush=True)
    print(f"quality after {steps} steps (batch 64, small preset, {train_s:.0f} s of training)")
    _table(rows, ["sample_steps", "atom_stability", "mol_stability", "validity", "valid_unique", "novelty",
                  "connected"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="molecule-domain benchmarks")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parts", default="train,sampling,scaling,quality")
    ap.add_argument("--json", default=None)
    ap.add_argument("--edm-iters", type=int, default=3)
    ap.add_argument("--quality-steps", type=int, default=1500)
    ap.add_argument("--quality-num", type=int, default=200)
    # worker options
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--impl", default="flat")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--atoms", type=int, default=0)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--memory-only", action="store_true")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker_train(args)))
        return
    args.train_configs = [(64, 4, 64, 10), (256, 9, 64, args.edm_iters)]
    args.scale_hidden, args.scale_layers = 64, 4
    args.sampling_configs = [("small", 64, (100, 1000)), ("edm", 64, (100,))]
    args.quality_sample_steps = (1000,)
    results: dict[str, Any] = {"device": args.device, "threads": args.threads, "torch": torch.__version__}
    parts = {"train": part_train, "scaling": part_scaling, "sampling": part_sampling, "quality": part_quality}
    for name in args.parts.split(","):
        results[name] = parts[name](args)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
