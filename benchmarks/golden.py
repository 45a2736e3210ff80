"""Golden samples: the outputs of the code before the package restructure (issue 27), bit for bit.

    python benchmarks/golden.py write [--out tests/data/golden.safetensors]
    python benchmarks/golden.py check [--file tests/data/golden.safetensors] [--atol 0] [--only NAME,...]

``write`` runs every case of ``tests/golden_cases.py`` (the one definition of the cases, shared
with ``tests/test_golden.py``) and stores the tensors with safetensors (no pickle) plus a JSON
sidecar next to it (same name, ``.json``) that describes each case (model, sampler, steps, seed,
options; for tiny models the training call), the tensors' shapes and dtypes, and the machine.

``check`` recomputes the cases and prints, per tensor, its shape, the largest ``|actual - golden|``
and ``identical`` (the same bits), ``within atol`` or ``DIFFERS``; it exits 1 if any tensor
differs by more than ``--atol`` (default 0: bit for bit), a tensor is missing or has another shape
or dtype, or a case's definition no longer matches the one the file was written with.

Everything runs on the CPU with one intra-op thread (``torch.set_num_threads(1)`` before any
work; the order of float sums is then fixed), so ``check`` on the machine that wrote the file
must report every case identical. Another CPU (other SIMD kernels) may differ in the last bits:
``--atol`` (and the test's tolerance) is for that. Data converted into the on-disk cache goes to
the temporary folder unless ``$DIFFUSE_CACHE`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # the case definitions: tests/golden_cases.py

import golden_cases as gc  # noqa: E402

DEFAULT_FILE = ROOT / "tests" / "data" / "golden.safetensors"


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def select(names: str | None) -> list[gc.Case]:
    if not names:
        return list(gc.CASES)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if not any(c.name.startswith(n) for c in gc.CASES)]
    if unknown:
        sys.exit(f"error: no case named or starting with {', '.join(unknown)}")
    return [c for c in gc.CASES if any(c.name.startswith(n) for n in wanted)]


def run_cases(cases: list[gc.Case], tmp: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    tensors: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    with gc.Runner(tmp) as runner:
        for case in cases:
            t0 = time.perf_counter()
            tensors.update(runner.run(case))
            seconds[case.name] = time.perf_counter() - t0
            print(f"  {case.name:42s} {seconds[case.name]:6.2f} s", file=sys.stderr, flush=True)
    return tensors, seconds


def cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit() -> dict[str, object]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"commit": head, "tracked_files_modified": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None}


def write(out: Path, tmp: str) -> int:
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    tensors, seconds = run_cases(list(gc.CASES), tmp)
    total = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    described = []
    for case in gc.CASES:
        rec = case.record()
        rec["tensors"] = {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                          for k, v in tensors.items() if gc.case_of(k) == case.name}
        rec["seconds"] = round(seconds[case.name], 3)
        described.append(rec)
    meta = {
        "about": "Golden samples of the code before the package restructure (issue 27); written and checked by "
                 "benchmarks/golden.py, cases defined in tests/golden_cases.py. Tensors: CASE/x samples "
                 "(Batch.x), CASE/counts atoms per molecule, CASE/input and CASE/mask what completion_input "
                 "read, CASE/fingerprint [sum, sum of squares, count] of a tiny run's EMA weights.",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "git": git_commit(),
        "write_seconds": round(total, 1),
        "cases": described,
    }
    part = out.with_name(out.name + ".part")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(part),
              metadata={"about": "diffuse golden samples (issue 27); see the .json sidecar"})
    part_json = sidecar(out).with_name(sidecar(out).name + ".part")
    # lists of numbers (shapes, structures) on one line each
    text = re.sub(r"\[[\d\s,.eE+-]*\]", lambda m: json.dumps(json.loads(m.group(0))), json.dumps(meta, indent=1))
    part_json.write_text(text + "\n")
    os.chmod(part, 0o644)
    os.replace(part, out)
    os.replace(part_json, sidecar(out))
    print(f"wrote {len(tensors)} tensors of {len(gc.CASES)} cases to {out} ({out.stat().st_size / 1024:.0f} KiB) "
          f"and {sidecar(out)} in {total:.1f} s")
    return 0


def compare(actual: torch.Tensor | None, golden: torch.Tensor | None, atol: float) -> tuple[str, str, bool]:
    """``(max |diff| as text, status, ok)``."""
    if actual is None:
        return "-", "DIFFERS (not computed)", False
    if golden is None:
        return "-", "DIFFERS (not in the file)", False
    if actual.shape != golden.shape or actual.dtype != golden.dtype:
        return "-", f"DIFFERS (golden {tuple(golden.shape)} {golden.dtype})", False
    if actual.dtype == torch.bool:
        diff = float((actual != golden).sum())
    elif actual.numel() == 0:
        diff = 0.0
    else:
        d = (actual.double() - golden.double()).abs()
        nan_same = torch.isnan(actual) == torch.isnan(golden) if actual.is_floating_point() else True
        if not bool(torch.as_tensor(nan_same).all()):
            return "nan", "DIFFERS (NaN pattern)", False
        diff = float(torch.nan_to_num(d, nan=0.0).max())
    bits = torch.equal(actual.view(torch.uint8) if actual.is_floating_point() else actual,
                       golden.view(torch.uint8) if golden.is_floating_point() else golden)
    if bits:
        return f"{diff:.3g}", "identical", True
    if diff <= atol:
        return f"{diff:.3g}", "within atol", True
    return f"{diff:.3g}", "DIFFERS", False


def check(path: Path, atol: float, only: str | None, tmp: str) -> int:
    from safetensors.torch import load_file

    if not path.is_file() or not sidecar(path).is_file():
        sys.exit(f"error: {path} or its sidecar {sidecar(path)} is missing; run 'python benchmarks/golden.py write'")
    golden = load_file(str(path))
    meta = json.loads(sidecar(path).read_text())
    stored = {rec["name"]: rec for rec in meta["cases"]}
    cases = select(only)
    t0 = time.perf_counter()
    actual, _ = run_cases(cases, tmp)
    total = time.perf_counter() - t0
    rows, failed = [], 0
    for case in cases:
        rec = stored.get(case.name)
        if rec is None:
            rows.append((case.name, "-", "-", "DIFFERS (case not in the file)"))
            failed += 1
            continue
        now = json.loads(json.dumps(case.record()))
        was = {k: v for k, v in rec.items() if k not in ("tensors", "seconds")}
        if now != was:
            rows.append((case.name, "-", "-", "DIFFERS (case definition changed since write)"))
            failed += 1
        keys = sorted({k for k in golden if gc.case_of(k) == case.name} |
                      {k for k in actual if gc.case_of(k) == case.name})
        for key in keys:
            a, g = actual.get(key), golden.get(key)
            shown = a if a is not None else g
            diff, status, ok = compare(a, g, atol)
            rows.append((key, "x".join(map(str, shown.shape)) or "scalar", diff, status))
            failed += not ok
    if not only:
        for name in sorted(set(stored) - {c.name for c in cases}):
            rows.append((name, "-", "-", "DIFFERS (in the file, no longer a case)"))
            failed += 1
    width = max(len(r[0]) for r in rows)
    print(f"{'tensor':{width}s}  {'shape':>12s}  {'max |diff|':>10s}  status")
    for key, shape, diff, status in rows:
        print(f"{key:{width}s}  {shape:>12s}  {diff:>10s}  {status}")
    written = meta.get("git", {}).get("commit")
    print(f"{len(cases)} cases, {len(rows)} rows, {failed} differ (atol {atol:g}); recomputed in {total:.1f} s")
    print(f"golden file: commit {written}, torch {meta.get('torch')}, {meta.get('cpu')} "
          f"({meta.get('cpu_capability')}); now: torch {torch.__version__}, {cpu_name()} "
          f"({torch.backends.cpu.get_cpu_capability()})")
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="run every case and store the golden tensors and their description")
    w.add_argument("--out", type=Path, default=DEFAULT_FILE)
    c = sub.add_parser("check", help="recompute the cases and compare them with the golden file")
    c.add_argument("--file", type=Path, default=DEFAULT_FILE)
    c.add_argument("--atol", type=float, default=0.0, help="largest |diff| that still passes (default 0: bit for bit)")
    c.add_argument("--only", default=None, help="comma-separated case names (or name prefixes) to check")
    args = ap.parse_args()
    torch.set_num_threads(1)   # one intra-op thread: deterministic float sums (see the module docstring)
    with tempfile.TemporaryDirectory(prefix="diffuse-golden-") as tmp:
        os.environ.setdefault("DIFFUSE_CACHE", str(Path(tmp) / "cache"))
        if args.command == "write":
            return write(args.out, tmp)
        return check(args.file, args.atol, args.only, tmp)


if __name__ == "__main__":
    sys.exit(main())
