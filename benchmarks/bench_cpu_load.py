"""Training step time of the default image U-Net on a shared CPU: OpenMP wait policies, spin
counts and thread counts, idle and with competing training processes, side by side in one run.

The measured job is the default image model (28x28x1 U-Net, batch 32, eps loss, AdamW: the
training step of ``bench_image.py``). Each *variant* (an OpenMP environment plus a thread count)
runs in its own long-lived worker process, started once with its environment (the OpenMP runtime
reads it when torch is imported). For each *load* level (0, 1 and 5 competing processes by
default) the load processes are started, and the variants then take turns in short timed chunks
(so all of them see the same load and the same background noise); the table gives each variant's
median step time per load level and its ratio to the idle step time of torch's defaults.

The load processes run the same training loop with torch's defaults (all cores, default OpenMP
wait policy: "another PyTorch job"), or with the environment given by ``--load-env`` (e.g.
``--load-env policy`` for other ``diffuse`` runs started with the CLI's default policy).

    python benchmarks/bench_cpu_load.py                        # ~4 min on 2 cores
    python benchmarks/bench_cpu_load.py --loads 0,1 --chunk 2  # quicker
    python benchmarks/bench_cpu_load.py --load-env policy

The ``policy`` variant is what ``diffuse`` (the CLI) sets up by default, see
:mod:`diffuse.cli.threads`: it chooses from the machine's load as it starts, so its worker is
started anew at each load level once the load processes run (as a user's ``diffuse train`` would
start on that machine), and the table says what it chose. ``--load-env policy`` load processes
make the same choice as they start, one after the other. Writes
``benchmarks/results/bench_cpu_load.json``. Figures depend on everything else running on the
machine: the load average at the start of each level is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> (environment, torch threads; 0 = torch's default, i.e. the number of cores)
VARIANTS: dict[str, tuple[dict[str, str], int]] = {
    "default": ({}, 0),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "spin 10k": ({"GOMP_SPINCOUNT": "10000"}, 0),
    "spin 1k": ({"GOMP_SPINCOUNT": "1000"}, 0),
    "1 thread": ({}, 1),
    "policy": ({}, -1),   # diffuse.cli.threads.configure(), as the CLI does
}


# ----------------------------------------------------------------------------- workers
def _worker(threads: int, use_policy: bool, batch: int) -> None:
    """Reads ``run SECONDS`` lines on stdin, trains for that long, answers with the step times."""
    if use_policy:
        from diffuse.cli.threads import configure
        configure()   # before torch: as the CLI entry point does
    import torch

    sys.path.insert(0, str(HERE))
    from bench_image import Runner

    if use_policy:
        from diffuse.cli.threads import apply_threads
        apply_threads()
    elif threads > 0:
        torch.set_num_threads(threads)
    r = Runner("ours", torch.device("cpu"), batch)
    for _ in range(2):
        r.train_step()
    print(json.dumps({"ready": True, "threads": torch.get_num_threads(),
                      "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}}),
          flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        seconds, min_steps = float(cmd[1]), int(cmd[2])
        times: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(times) < min_steps:
            t0 = time.perf_counter()
            r.train_step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({"times": times}), flush=True)


def _load(batch: int, use_policy: bool = False) -> None:
    """A competing training process: trains until killed."""
    if use_policy:
        from diffuse.cli.threads import configure
        configure()
    import torch

    sys.path.insert(0, str(HERE))
    from bench_image import Runner

    r = Runner("ours", torch.device("cpu"), batch)
    r.train_step()
    print("ready", flush=True)
    while True:
        r.train_step()


def _spawn(args_list: list[str], env_over: dict[str, str], clear: bool = True) -> subprocess.Popen:
    env = dict(os.environ)
    if clear:   # the measured variants start from a clean OpenMP environment
        for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "DIFFUSE_THREADS"):
            env.pop(k, None)
    env.update(env_over)
    return subprocess.Popen([sys.executable, __file__, *args_list], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)


def _parse_env(text: str) -> dict[str, str]:
    if text in ("", "default", "policy"):   # policy: each load process chooses as it starts
        return {}
    return dict(item.split("=", 1) for item in text.split(","))


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from: " + ", ".join(VARIANTS))
    p.add_argument("--loads", default="0,1,5", help="numbers of competing training processes")
    p.add_argument("--load-env", default="default",
                   help="environment of the load processes: default (torch's), policy (diffuse's), or K=V,K=V")
    p.add_argument("--rounds", type=int, default=2, help="alternating timed chunks per variant and load level")
    p.add_argument("--chunk", type=float, default=3.0, help="seconds per timed chunk")
    p.add_argument("--min-steps", type=int, default=1, help="at least this many steps per chunk")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--settle", type=float, default=2.0, help="seconds to let a new load level settle")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "variant":
        _worker(args.threads, args.threads < 0, args.batch)
        return
    if args.worker == "load":
        _load(args.batch, args.threads < 0)
        return

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    loads = [int(x) for x in args.loads.split(",")]
    load_env = _parse_env(args.load_env)
    workers: dict[str, subprocess.Popen] = {}
    info: dict[str, dict] = {}

    def start(n: str) -> None:
        env, threads = VARIANTS[n]
        workers[n] = _spawn(["--worker", "variant", "--threads", str(threads), "--batch", str(args.batch)], env)

    def stop(n: str) -> None:
        try:
            workers[n].stdin.write("quit\n")
            workers[n].stdin.flush()
        except OSError:
            pass
        workers[n].wait(timeout=30)

    for n in names:
        start(n)
    for n in names:
        info[n] = json.loads(workers[n].stdout.readline())
    print(f"{os.cpu_count()} CPUs, torch threads per variant: " +
          ", ".join(f"{n} {info[n]['threads']}" for n in names) + f"; load processes: {args.load_env}", flush=True)
    chosen: dict[int, dict] = {}

    steps: dict[int, dict[str, list[float]]] = {}
    loadavg: dict[int, tuple] = {}
    try:
        for L in loads:
            procs = []
            try:
                for _ in range(L):   # one after the other: a policy load process sees the ones before it
                    procs.append(_spawn(["--worker", "load", "--batch", str(args.batch),
                                         "--threads", "-1" if args.load_env == "policy" else "0"],
                                        load_env, clear=args.load_env == "policy"))
                    procs[-1].stdout.readline()
                time.sleep(args.settle)
                if "policy" in names:   # the CLI chooses as it starts: start it anew under this load, alone
                    stop("policy")
                    start("policy")
                    info["policy"] = json.loads(workers["policy"].stdout.readline())
                    chosen[L] = info["policy"]["env"]
                loadavg[L] = os.getloadavg()
                steps[L] = {n: [] for n in names}
                for rnd in range(args.rounds):
                    for n in names:
                        workers[n].stdin.write(f"run {args.chunk} {args.min_steps}\n")
                        workers[n].stdin.flush()
                        steps[L][n] += json.loads(workers[n].stdout.readline())["times"]
                    print(f"  load {L}, round {rnd + 1}/{args.rounds}: " + ", ".join(
                        f"{n} {statistics.median(steps[L][n]):.3f}" for n in names) + " s/step (median so far)",
                        flush=True)
            finally:
                for pr in procs:
                    pr.kill()
                    pr.wait()
    finally:
        for n in workers:
            stop(n)

    base = statistics.median(steps[loads[0]]["default"]) if "default" in names and loads[0] == 0 else None
    print(f"\nimage U-Net (28x28x1, batch {args.batch}) training step time, median seconds (ratio to the same "
          f"variant idle{'; to torch default idle' if base else ''})")
    print(f"{'variant':10s} {'threads':>7s} " + " ".join(f"{f'load {L}':>22s}" for L in loads))
    table = {}
    for n in names:
        cells, row = [], {}
        idle = statistics.median(steps[0][n]) if 0 in steps else None
        for L in loads:
            med = statistics.median(steps[L][n])
            q = sorted(steps[L][n])
            p90 = q[min(len(q) - 1, int(0.9 * len(q)))]
            row[L] = {"median_s": med, "p90_s": p90, "steps": len(q),
                      "vs_own_idle": med / idle if idle else None, "vs_default_idle": med / base if base else None}
            rel = f"{med / idle:.2f}x" if idle else "-"
            rel2 = f"/{med / base:.2f}x" if base else ""
            cells.append(f"{med:8.3f} ({rel}{rel2})")
        table[n] = row
        print(f"{n:10s} {info[n]['threads']:7d} " + " ".join(f"{c:>22s}" for c in cells))
    if "policy" in table and base and 0 in table["policy"]:
        pol = table["policy"]
        line = f"goals for the CLI's default: idle {pol[0]['vs_default_idle']:.2f}x torch's default (<= 1.05)"
        if 1 in pol:
            line += f", one other job {pol[1]['median_s'] / base:.2f}x torch's default idle (<= 2)"
        print(line)
    if chosen:
        print("the policy variant chose: " + ", ".join(
            f"load {L}: " + (", ".join(f"{k}={v}" for k, v in env.items() if v) or "nothing") for L, env in chosen.items()))
    print("load average at the start of each level: " + ", ".join(f"{L}: {loadavg[L][0]:.2f}" for L in loads))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_cpu_load.json"
    out.write_text(json.dumps({"platform": platform.platform(), "cpu_count": os.cpu_count(), "batch": args.batch,
                               "load_env": args.load_env, "loadavg_at_level": loadavg, "policy_chose": chosen, "workers": info,
                               "table": table, "step_times": steps}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
