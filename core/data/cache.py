"""An on-disk cache of arrays derived from data files (decoded audio, converted image / molecule
sets), so that large data sets are converted once and then read lazily (memory-mapped).

* location: ``$DIFFUSE_CACHE``, else ``$XDG_CACHE_HOME/diffuse``, else ``~/.cache/diffuse``;
* key: a hash of the source files' resolved paths, modification times (ns) and sizes, and of the
  conversion's parameters (:func:`file_key`): a changed file gets a new entry;
* safe to share between processes: entries are written to a temporary file in the same folder
  and renamed into place (atomic), so a reader sees a whole entry or none; two processes
  converting the same file at once both write and the last rename wins (same content);
* safe to read: arrays with ``np.load(allow_pickle=False)`` (``.npy`` only), metadata as JSON;
  an unreadable entry is rebuilt. Nothing in a cache file can run code;
* bounded by the user: every read of an entry refreshes its modification time (its "last used"),
  :func:`cache_entries` lists the entries and :func:`clear_cache` removes them, all or those of
  one kind or unused for some days (``diffuse cache [--clear] [--kind K] [--older-than DAYS]``).
  Removing an entry another process has open is safe (a memory map outlives the unlink; a reader
  that finds it half-removed rebuilds it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from ..errors import UserInputError

__all__ = ["cache_dir", "file_key", "cached_array", "cached_json", "cached_arrays", "cache_entries",
           "clear_cache"]

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
    text = json.dumps({"v": VERSION, "files": parts, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _entry(kind: str, key: str, suffix: str) -> Path:
    if not kind.isidentifier() or not all(c in "0123456789abcdef" for c in key):
        raise UserInputError(f"bad cache entry {kind!r}/{key!r}")
    return cache_dir() / kind / f"{key}{suffix}"


def _used(target: Path) -> None:
    """Mark an entry as used now (its mtime); best effort (a read-only cache stays as it is)."""
    try:
        os.utime(target)
    except OSError:
        pass


def _readable_by_others(path: str | Path, mode: int = 0o666) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)   # as a plain file / folder would be (mkstemp / mkdtemp: owner only)


def _atomic(target: Path, write: Callable[[Path], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        _readable_by_others(tmp)
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
            arr = np.load(target, mmap_mode="r", allow_pickle=False)
            _used(target)
            return arr
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
                _used(target)
                return value
        except (ValueError, OSError):
            pass
    value = build()
    _atomic(target, lambda p: p.write_text(json.dumps(value)))
    return value


def _load_folder(target: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    try:
        meta = json.loads((target / "meta.json").read_text())
        names = meta["arrays"]
        if not all(isinstance(n, str) and n.isidentifier() for n in names):
            return None
        arrays = {n: np.load(target / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in names}
        return arrays, meta["meta"]
    except (ValueError, OSError, EOFError, KeyError, TypeError):
        return None


def cached_arrays(kind: str, key: str, build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any], bool]:
    """Several named arrays plus JSON metadata as one entry (a folder renamed into place whole):
    ``(arrays memory-mapped read-only, meta, built)``; ``build() -> (arrays, meta)`` runs when the
    entry is absent or unreadable (``built`` is then true)."""
    target = _entry(kind, key, "")
    found = _load_folder(target) if target.is_dir() else None
    if found is not None:
        _used(target)
        return (*found, False)
    arrays, meta = build()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=target.parent))
    try:
        _readable_by_others(tmp, 0o777)
        for name, a in arrays.items():
            if not name.isidentifier():
                raise UserInputError(f"bad array name {name!r}")
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
            _readable_by_others(tmp / f"{name}.npy")
        (tmp / "meta.json").write_text(json.dumps({"arrays": sorted(arrays), "meta": meta}))
        _readable_by_others(tmp / "meta.json")
        if target.exists() and _load_folder(target) is None:
            shutil.rmtree(target, ignore_errors=True)   # an unreadable entry: replaced
        try:
            os.replace(tmp, target)
        except OSError:
            if _load_folder(target) is None:             # not another process's complete entry
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = _load_folder(target)
    if found is None:
        raise OSError(f"cache entry {target} could not be read back")
    return (*found, True)


#: a temporary file or folder left by a writer is removed only when it is at least this old (a
#: younger one may belong to a conversion running now)
STALE_TEMP_SECONDS = 3600.0


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def cache_entries(kind: str | None = None) -> list[dict[str, Any]]:
    """The cache's entries (of ``kind`` only, when given), oldest use first: dicts with ``kind``,
    ``name``, ``path``, ``bytes``, ``last_used`` (seconds since the epoch) and ``partial`` (a
    temporary file or folder a writer left behind, e.g. when it was killed)."""
    root = cache_dir()
    if kind is not None and not kind.isidentifier():
        raise UserInputError(f"bad cache kind {kind!r}: expected a name such as audio, images or molecules")
    if root.exists() and not root.is_dir():
        raise UserInputError(f"the cache location {root} is a file, not a folder (set $DIFFUSE_CACHE to a folder)")
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not folder.name.isidentifier() or (kind is not None and folder.name != kind):
            continue
        for path in sorted(folder.iterdir()):
            try:
                used = path.stat().st_mtime
            except OSError:
                continue      # removed meanwhile
            out.append({"kind": folder.name, "name": path.name, "path": str(path), "bytes": _size(path),
                        "last_used": used, "partial": path.name.startswith(".") and ".tmp" in path.name})
    return sorted(out, key=lambda e: e["last_used"])


def clear_cache(*, kind: str | None = None, older_than_days: float | None = None,
                dry_run: bool = False) -> list[dict[str, Any]]:
    """Remove cache entries (all, those of ``kind``, or those unused for ``older_than_days``) and
    return them; ``dry_run`` only lists what would go. Temporary leftovers of writers are removed
    only when older than :data:`STALE_TEMP_SECONDS`. The next use of a removed entry rebuilds it."""
    if older_than_days is not None and not (older_than_days >= 0 and math.isfinite(older_than_days)):
        raise UserInputError(f"--older-than must be a number of days >= 0, got {older_than_days}")
    now = time.time()
    removed = []
    for e in cache_entries(kind):
        age = now - e["last_used"]
        if older_than_days is not None and age < older_than_days * 86400.0:
            continue
        if e["partial"] and age < STALE_TEMP_SECONDS:
            continue
        if not dry_run:
            path = Path(e["path"])
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        removed.append(e)
    return removed
