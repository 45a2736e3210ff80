"""An on-disk cache of arrays derived from data files (decoded audio, converted image / molecule
sets), so that large data sets are converted once and then read lazily (memory-mapped).

* location: ``$DIFFUSE_CACHE``, else ``$XDG_CACHE_HOME/diffuse``, else ``~/.cache/diffuse``;
* key: a hash of the source files' resolved paths, modification times (ns) and sizes, and of the
  conversion's parameters (:func:`file_key`): a changed file gets a new entry;
* safe to share between processes: entries are written to a temporary file in the same folder
  and renamed into place (atomic), so a reader sees a whole entry or none; two processes
  converting the same file at once both write and the last rename wins (same content);
* safe to read: arrays with ``np.load(allow_pickle=False)`` (``.npy`` only), metadata as JSON;
  an unreadable entry is rebuilt. Nothing in a cache file can run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

__all__ = ["cache_dir", "file_key", "cached_array", "cached_json"]

VERSION = 1


def cache_dir() -> Path:
    """The cache folder (created when first written)."""
    if os.environ.get("DIFFUSE_CACHE"):
        return Path(os.environ["DIFFUSE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "diffuse"


def file_key(files: Path | str | Iterable[Path | str], **params: Any) -> str:
    """A hex key of ``files`` (path, mtime, size each) and JSON-serialisable ``params``."""
    files = [files] if isinstance(files, (str, Path)) else list(files)
    parts = []
    for f in files:
        p = Path(f).resolve()
        st = p.stat()
        parts.append([str(p), st.st_mtime_ns, st.st_size])
    text = json.dumps({"v": VERSION, "files": parts, "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _entry(kind: str, key: str, suffix: str) -> Path:
    if not kind.isidentifier() or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"bad cache entry {kind!r}/{key!r}")
    return cache_dir() / kind / f"{key}{suffix}"


def _atomic(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # readable by others as a plain file would be (mkstemp: 0600)
        write(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_array(kind: str, key: str, build: Callable[[Path], None]) -> np.ndarray:
    """The array of entry ``kind/key``, memory-mapped read-only. When absent (or unreadable),
    ``build(path)`` writes it first: a ``.npy`` file at ``path`` (``np.save`` or
    ``np.lib.format.open_memmap``), which is then renamed into place."""
    target = _entry(kind, key, ".npy")
    if target.is_file():
        try:
            return np.load(target, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError):
            pass   # torn or foreign file: rebuild
    _atomic(target, build)
    return np.load(target, mmap_mode="r", allow_pickle=False)


def cached_json(kind: str, key: str, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The JSON object of entry ``kind/key``, computed by ``build()`` and stored when absent."""
    target = _entry(kind, key, ".json")
    if target.is_file():
        try:
            value = json.loads(target.read_text())
            if isinstance(value, dict):
                return value
        except (ValueError, OSError):
            pass
    value = build()
    _atomic(target, lambda p: p.write_text(json.dumps(value)))
    return value
