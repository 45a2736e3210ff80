"""Helpers of the reliability tests (issue 33): a small full file system (tmpfs), a process that
holds a lock, a PNG that declares a huge size, and running the CLI in or out of process."""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import uuid
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


_SITE: list[str] = []


def _points_plugin() -> str:
    """A folder holding the toy points2d domain as an installed plug-in (an entry point of the
    ``diffuse.domains`` group), so that subprocesses find it as users' plug-ins are found."""
    if not _SITE:
        import tempfile
        site = Path(tempfile.mkdtemp(prefix="diffuse-points-plugin-"))
        info = site / "points2d_plugin-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: points2d-plugin\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[diffuse.domains]\npoints2d = points2d:PointsDomain\n")
        _SITE.append(str(site))
    return _SITE[0]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a ``python -m diffuse.cli`` subprocess that imports this checkout, with
    the toy points2d domain plugged in."""
    import diffuse
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(diffuse.__file__)))   # the folder holding diffuse/
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), pkg_parent, str(ROOT / "examples"),
                                       str(Path(__file__).parent), _points_plugin()) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    env.update(extra)
    return env


def run_cli(args: list[str], timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """``python -m diffuse.cli ARGS`` in a subprocess (plug-in points2d importable as ``points2d``)."""
    return subprocess.run([sys.executable, "-m", "diffuse.cli", *map(str, args)], env=cli_env(), text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def one_error_line(output: str) -> str:
    """The single non-empty line of ``output``, which must be an ``error:`` line."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output and "[Errno" not in output, output
    return lines[0]


# ------------------------------------------------------------------ a full disk
def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/diffuse-mount-probe-{uuid.uuid4().hex[:8]}")
    probe.mkdir()
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True)
        return ok
    finally:
        probe.rmdir()


MOUNT_OK = can_mount()
needs_mount = pytest.mark.skipif(not MOUNT_OK, reason="mounting a small tmpfs is not permitted here (needs root "
                                                       "and mount rights); the ENOSPC unit tests cover the code")


@contextmanager
def small_disk(tmp_path: Path, size_kb: int = 1024, read_only: bool = False):
    """A tmpfs of ``size_kb`` KiB mounted under ``tmp_path`` for the block (unmounted after)."""
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True, capture_output=True)
    try:
        yield where
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        where.rmdir()


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` with a ballast file, leaving about ``leave`` bytes free; returns the ballast."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    block = b"\0" * 4096
    try:
        while True:
            os.write(fd, block)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    size = ballast.stat().st_size
    if leave > free:
        os.truncate(ballast, max(0, size - (leave - free)))
    return ballast


def hidden_leftovers(folder: Path) -> list[str]:
    """Temporary files / folders of writers (``.NAME.tmp-PID``, ``checkpoint.tmp``) under ``folder``."""
    return [str(p.relative_to(folder)) for p in folder.rglob("*")
            if ".tmp-" in p.name or p.name in ("checkpoint.tmp", "checkpoint.old")]


# ------------------------------------------------------------------ another process holding a lock
@contextmanager
def lock_held_by_other_process(lock_file: Path, command: str = "diffuse train --out x"):
    """A subprocess that holds ``lock_file`` as a diffuse command would, until the block ends."""
    code = textwrap.dedent(f"""
        import sys
        sys.argv = {command.split()!r}
        from diffuse.core.lock import exclusive
        with exclusive({str(lock_file)!r}, "run folder"):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=cli_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


# ------------------------------------------------------------------ a decompression bomb
def png_declaring(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header declares ``width x height`` (8-bit grayscale)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def xyz(path: Path, n: int, seed: int = 0, nan: bool = False) -> Path:
    """An XYZ file of one ``n``-atom carbon cloud (a NaN coordinate with ``nan``)."""
    import numpy as np
    pos = np.random.default_rng(seed).normal(0, 0.5 * n ** (1 / 3), (n, 3))
    if nan:
        pos[0, 1] = float("nan")
    lines = [str(n), "cloud"] + [f"C {x:.4f} {y:.4f} {z:.4f}" for x, y, z in pos]
    path.write_text("\n".join(lines) + "\n")
    return path


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
