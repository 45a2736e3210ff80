"""Writing results so that an error, a full disk or a kill never leaves a half-written file or folder.

``atomic_write_text`` writes a sibling temporary file, fsyncs it and renames it over the
target. ``write_samples`` lets a domain's writer fill a temporary sibling folder and then moves
the result into place; used by ``diffuse sample`` and by the trainer's ``samples/final`` and
``samples/step_NNNNNN`` folders alike.

Failures: every writer runs inside :func:`writing`, which turns an ``OSError`` of a write (no
space left on the device, a quota, a read-only file system, a permission, a folder that
vanished) into one :class:`~diffuse.core.errors.WriteFailedError` line naming the file, the
cause in words and what was kept (``"the previous checkpoint at step 200 is intact"``); the
error is also an ``OSError``. The temporary file or folder of the failed write is removed at once.

Temporary names: a writer's temporary sibling of ``NAME`` is ``.NAME.tmp-PID``. One left by a
process that died (SIGKILL, power loss) is removed by the next write into the same folder
(:func:`remove_stale_tmp`), whatever its name; a live process's is never touched.

Output paths are checked before any work (:func:`check_output_path`): a dangling symbolic
link, a symbolic-link loop, a file where a folder is needed, or a folder that cannot be
written is one line in words, never raw ``[Errno N]`` text after the work is done.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from .errors import NotWritableError, UserInputError, WriteFailedError

if TYPE_CHECKING:  # pragma: no cover
    from .data.domain import Batch, Domain

__all__ = ["write_synced", "fsync_dir", "atomic_write_text", "write_samples", "fresh_sample_dir", "writing", "os_error_text", "remove_stale_tmp",
           "tmp_name", "check_output_path", "check_links", "append_text", "keeping"]

log = logging.getLogger(__name__)

#: ``.NAME.tmp-PID``: the temporary sibling of ``NAME`` written by process ``PID``
_TMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")

#: causes in words for the errors a write meets most (``os.strerror`` for the others)
_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ELOOP: "the path is a loop of symbolic links",
    errno.ENOENT: "a folder of the path does not exist (removed while writing?)",
    errno.EIO: "an input/output error of the device",
    errno.EFBIG: "the file is too large for the file system",
    errno.EISDIR: "it is a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def os_error_text(exc: OSError) -> str:
    """The cause of an ``OSError`` in words (no ``[Errno N]``)."""
    if exc.errno in _CAUSES:
        return _CAUSES[exc.errno]
    if exc.errno:
        text = os.strerror(exc.errno)
        return text[:1].lower() + text[1:]
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def writing(path: str | Path, kept: str | Callable[[], str | None] | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into one :class:`WriteFailedError` line: ``cannot
    write FILE: CAUSE; KEPT``. ``FILE`` is the file the error names, else ``path``; ``kept`` (text,
    or a callable evaluated at failure time) says what is intact. An inner ``WriteFailedError``
    without a ``kept`` part gets this one's."""
    try:
        yield
    except WriteFailedError as exc:
        if kept is not None and getattr(exc, "kept", None) is None:
            raise _failed(exc.target, exc.cause, kept, exc.errno) from None
        raise
    except UserInputError:
        raise
    except OSError as exc:
        target = _untmp(exc.filename) if exc.filename is not None else path
        raise _failed(target, os_error_text(exc), kept, exc.errno) from None


@contextmanager
def keeping(kept: str | Callable[[], str | None]) -> Iterator[None]:
    """Around work that writes through :func:`writing` (and reads, which stay as they are): a
    :class:`WriteFailedError` raised in the block without a ``kept`` part gets this one's."""
    try:
        yield
    except WriteFailedError as exc:
        if getattr(exc, "kept", None) is None:
            raise _failed(exc.target, exc.cause, kept, exc.errno) from None
        raise


def _untmp(path) -> Path:
    """A path with each temporary name (``.NAME.tmp-PID``) replaced by the name it stands for: the
    file the user knows about."""
    p = Path(path)
    return Path(*[m["name"] if (m := _TMP.match(part)) else part for part in p.parts])


def _failed(target, cause: str, kept, code) -> WriteFailedError:
    what = kept() if callable(kept) else kept
    err = WriteFailedError(f"cannot write {target}: {cause}" + (f"; {what}" if what else ""))
    err.target, err.cause, err.kept, err.errno = target, cause, what, code
    return err


def tmp_name(path: str | Path) -> Path:
    """This process's temporary sibling of ``path`` (``.NAME.tmp-PID``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (``.NAME.tmp-PID``) in ``folder`` whose process is
    gone (killed while writing); returns what was removed. Errors are ignored (best effort)."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for tmp in entries:
        m = _TMP.match(tmp.name)
        if m is None or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except OSError:
            continue
        removed.append(tmp)
        log.info("removed %s, left by an interrupted writer (process %s is gone)", tmp, m["pid"])
    return removed


def _remove_stale_tmp(out: Path) -> None:   # the name earlier versions used
    remove_stale_tmp(Path(out).parent)


def write_synced(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (the caller renames or marks it complete)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a folder, so that the renames and new names in it are on disk (where the platform
    gives folders a file descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, kept: str | None = None) -> None:
    """Replace ``path`` with ``text`` in one rename (readers see the old or the new file, whole).
    A failure is a :class:`WriteFailedError` (``kept`` defaults to "PATH was not changed")."""
    path = Path(path)
    tmp = tmp_name(path)
    with writing(path, kept if kept is not None else f"{path.name} was not changed"):
        remove_stale_tmp(path.parent)
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (a log such as ``metrics.jsonl``); a failure is a
    :class:`WriteFailedError` naming the file (a torn last line is what readers skip)."""
    with writing(path):
        with open(path, "a") as fh:
            fh.write(text)


def write_samples(domain: "Domain", samples: "Batch", out_dir: str | Path, kept: str | None = None) -> list[Path]:
    """Write ``samples`` with a bound ``domain``'s ``write`` into a temporary sibling folder, then
    move them into ``out_dir``: an error, a full disk or a kill never leaves a half-written set of
    samples (the temporary folder is removed at once, or by the next write after a kill). A new
    ``out_dir`` appears in one rename; into an existing one each file is moved in by its own rename."""
    out = Path(out_dir)
    tmp = tmp_name(out)
    with writing(out, kept if kept is not None else "no samples were written"):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(out.parent)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            paths = _domain_write(domain, samples, tmp)
            if not out.exists():
                os.replace(tmp, out)
            else:
                for f in sorted(tmp.iterdir()):
                    dest = out / f.name
                    if dest.is_dir():
                        shutil.rmtree(dest)
                    os.replace(f, dest)
                tmp.rmdir()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return [out / Path(p).relative_to(tmp) if Path(p).is_relative_to(tmp) else Path(p) for p in paths]


def _domain_write(domain: "Domain", samples: "Batch", tmp: Path) -> list:
    """The domain's writer; a non-``OSError`` failure of a writer library while the device is
    full (a sound-file or image library's own exception type) is reported as the full disk it is."""
    try:
        return domain.write(samples, tmp)
    except (OSError, UserInputError):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised unless the disk is the cause
        if _device_full(tmp):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from exc
        raise


def _device_full(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def fresh_sample_dir(base: str | Path) -> Path:
    """``base`` if it does not exist or is an empty folder, else the first free ``base-2``,
    ``base-3``, ...: new samples never land among old ones."""
    base = Path(base)

    def free(p: Path) -> bool:
        return not (p.exists() or p.is_symlink()) or (p.is_dir() and not any(p.iterdir()))

    if free(base):
        return base
    k = 2
    while not free(base.with_name(f"{base.name}-{k}")):
        k += 1
    return base.with_name(f"{base.name}-{k}")


def check_links(path: str | Path, what: str = "--out") -> None:
    """One line in words for an output path that is, or passes through, a loop of symbolic links
    or a symbolic link to nothing (checked before any work; writing there would fail after it)."""
    p = Path(path)
    try:
        p.resolve(strict=False)
    except (RuntimeError, OSError):
        raise UserInputError(f"{what} {p}: the path is a loop of symbolic links") from None
    anc = p
    while True:
        if anc.is_symlink() and not anc.exists():
            try:
                target = os.readlink(anc)
            except OSError:
                target = "?"
            where = "" if anc == p else f" ({anc} on the way)"
            raise UserInputError(f"{what} {p}: {anc} is a symbolic link to {target}, which does not exist"
                                 f"{where}; give a real folder or fix the link")
        if anc.exists() or anc.parent == anc:
            return
        anc = anc.parent


def check_output_path(path: str | Path, what: str = "--out", folder: bool = True) -> Path:
    """Check, before any work, that ``path`` can be created or replaced as a folder (``folder``)
    or a file: no symbolic-link loop or dangling link on the way (:func:`check_links`), no file
    where a folder is needed, and a writable nearest existing folder. One line in words for each
    problem (a :class:`UserInputError`); returns ``path``."""
    p = Path(path)
    check_links(p, what)
    anc = p
    while not anc.exists() and anc.parent != anc:
        anc = anc.parent
    if anc == p:
        if folder and not p.is_dir():
            raise UserInputError(f"{what} {p} is a file; give a folder")
        if not folder and p.is_dir():
            raise UserInputError(f"{what} {p} is a folder; give a file name")
        parent = p if folder else p.parent
    else:
        parent = anc
        if not parent.is_dir():
            raise UserInputError(f"{what} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        try:
            read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        except (OSError, AttributeError):
            read_only = False
        why = f"{parent} is on a read-only file system" if read_only else f"no permission to write in {parent}"
        raise NotWritableError(f"{what} {p}: {why}")
    return p
