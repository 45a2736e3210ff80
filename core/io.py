"""Writing results so that an error or a kill never leaves a half-written file or folder.

``atomic_write_text`` writes a sibling temporary file, fsyncs it and renames it over the
target. ``write_samples`` lets a domain's writer fill a temporary sibling folder and then moves
the result into place; used by ``diffuse sample`` and by the trainer's ``samples/final`` and
``samples/step_NNNNNN`` folders alike.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .data.domain import Batch, Domain

__all__ = ["atomic_write_text", "write_samples", "fresh_sample_dir"]

log = logging.getLogger(__name__)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename (readers see the old or the new file, whole)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale_tmp(out: Path) -> None:
    """Temporary folders of ``out`` left by a killed writer (its process is gone)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid) and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed %s, left by an interrupted writer", tmp)


def write_samples(domain: "Domain", samples: "Batch", out_dir: str | Path) -> list[Path]:
    """Write ``samples`` with a bound ``domain``'s ``write`` into a temporary sibling folder, then
    move them into ``out_dir``: an error or a kill never leaves a half-written set of samples. A new
    ``out_dir`` appears in one rename; into an existing one each file is moved in by its own rename."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        paths = domain.write(samples, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not out.exists():
        os.replace(tmp, out)
    else:
        for f in sorted(tmp.iterdir()):
            dest = out / f.name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(f, dest)
        tmp.rmdir()
    return [out / Path(p).relative_to(tmp) if Path(p).is_relative_to(tmp) else Path(p) for p in paths]


def fresh_sample_dir(base: str | Path) -> Path:
    """``base`` if it does not exist or is an empty folder, else the first free ``base-2``,
    ``base-3``, ...: new samples never land among old ones."""
    base = Path(base)

    def free(p: Path) -> bool:
        return not p.exists() or (p.is_dir() and not any(p.iterdir()))

    if free(base):
        return base
    k = 2
    while not free(base.with_name(f"{base.name}-{k}")):
        k += 1
    return base.with_name(f"{base.name}-{k}")
