"""Exclusive locks on run folders and other outputs: one writer at a time.

Every command that writes a run folder (``train`` and ``--resume``, ``train-autoencoder``,
``train-classifier``, ``evaluate``'s ``evaluation.json``, ``optimize-grid``'s ``grids.json``) and
``export-pretrained``'s destination holds an exclusive ``fcntl.flock`` on a lock file (``.lock``
inside a run folder; ``.NAME.lock`` beside an exported model) for as long as it writes. The
kernel releases it when the process ends in any way (a SIGKILL included), so a lock is never
stale; the file is removed when the lock is released (a killed holder leaves it, harmless). A second process that wants it gets one line naming the first one's PID and command
(:class:`~diffuse.core.errors.InUseError`) instead of interleaving its writes. Readers (``sample``,
``load``) take no lock: checkpoints and files are replaced atomically.

Locks are re-entrant within a process (a command that holds a run's lock may call code that
takes it again), and are advisory: only diffuse processes honour them. Where ``fcntl`` is
missing (Windows) the lock is a no-op.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import InUseError
from .io import writing

__all__ = ["exclusive", "run_lock", "LOCK_NAME", "holder", "command_line"]

#: the lock file inside a run folder
LOCK_NAME = ".lock"

_held: dict[str, list] = {}      # resolved lock path -> [fd, depth]
_guard = threading.Lock()


def command_line() -> str:
    """What this process is, for the other process's message (``diffuse train --out runs/x``)."""
    argv = list(sys.argv)
    if argv and (argv[0] == "-m" or argv[0].endswith(("__main__.py", "/diffuse"))):
        argv = ["diffuse", *argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


def holder(lock_file: str | Path) -> dict | None:
    """What the lock file says about its holder (``{"pid", "command", "since"}``), if readable."""
    try:
        data = json.loads(Path(lock_file).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def exclusive(lock_file: str | Path, what: str, hint: str = "wait for it to finish or stop it") -> Iterator[Path]:
    """Hold an exclusive lock on ``lock_file`` (created if needed; its folder must exist) for the
    block; ``what`` names the locked thing in the refusal (``run folder runs/x``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform
        yield Path(lock_file)
        return
    path = Path(lock_file)
    key = str(path.parent.resolve() / path.name)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield path
        finally:
            with _guard:
                entry[1] -= 1
        return
    while True:
        with writing(path, f"{what} was not changed"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = holder(path) or {}
            who = f"process {info.get('pid', '?')}" + (f" ({info['command']})" if info.get("command") else "")
            raise InUseError(f"{what} is in use by {who}; {hint}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)          # the holder removed the file as we opened it: lock the new one
    try:
        record = json.dumps({"pid": os.getpid(), "command": command_line(), "since": time.time()})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
        except OSError:       # a full disk: the lock holds all the same, its holder is just not named
            pass
        with _guard:
            _held[key] = [fd, 1]
        try:
            yield path
        finally:
            with _guard:
                _held.pop(key, None)
            try:
                os.unlink(path)   # while still locked: a process that opened it meanwhile retries
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | Path, create: bool = False,
             hint: str = "wait for it to finish or stop it") -> Iterator[Path]:
    """Hold run folder ``run_dir``'s lock (``RUN/.lock``) for the block; ``create`` makes the
    folder first (a new run)."""
    run = Path(run_dir)
    if create:
        with writing(run, "nothing was written"):
            run.mkdir(parents=True, exist_ok=True)
    with exclusive(run / LOCK_NAME, f"run folder {run}", hint) as path:
        yield path
