"""Data files in a user's folder: which ones a reader takes, and one line about the rest.

Readers of folders (images, audio clips, molecule files) share this: every file under the
folder (recursively, hidden files and folders excepted) is either taken, or skipped for a reason
(an extension the domain does not read, an empty file, a file the reader could not use), and
the skipped ones are summarised in ONE warning line by reason, with counts and a few examples::

    /data/imgs: skipped 3 files: 2 unsupported extension (.gif, .pdb), 1 empty (a.png)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Iterable

__all__ = ["scan_folder", "skipped_summary", "log_skipped", "UNSUPPORTED", "EMPTY"]

log = logging.getLogger(__name__)

UNSUPPORTED = "unsupported extension"
EMPTY = "empty"


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _matches(path: Path, suffixes: Iterable[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s.lower()) for s in suffixes)


def scan_folder(root: Path, suffixes: Iterable[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """``(taken, skipped)``: the non-empty files under ``root`` whose name ends with one of
    ``suffixes`` (case-insensitive, sorted), and ``(file, reason)`` for every other visible file
    (reasons :data:`UNSUPPORTED` and :data:`EMPTY`). Hidden files and folders are ignored."""
    suffixes = tuple(suffixes)
    taken: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or _hidden(p, root):
            continue
        if not _matches(p, suffixes):
            skipped.append((p, UNSUPPORTED))
        elif p.stat().st_size == 0:
            skipped.append((p, EMPTY))
        else:
            taken.append(p)
    return taken, skipped


def _example(path: Path, reason: str) -> str:
    if reason == UNSUPPORTED:
        suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix
        return suffix.lower() or path.name
    return path.name


def skipped_summary(skipped: list[tuple[Path, str]], examples: int = 3) -> str:
    """``"skipped N files: n1 reason1 (e.g. ...), n2 reason2 (...)"``; reasons by count."""
    groups: dict[str, list[str]] = defaultdict(list)
    for path, reason in skipped:
        groups[reason].append(_example(Path(path), reason))
    parts = []
    for reason, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = sorted(set(names))
        more = ", ..." if len(shown) > examples else ""
        parts.append(f"{len(names)} {reason} ({', '.join(shown[:examples])}{more})")
    n = len(skipped)
    return f"skipped {n} file{'s' if n != 1 else ''}: " + ", ".join(parts)


def log_skipped(root: Path | str, skipped: list[tuple[Path, str]]) -> None:
    """One warning line for the files of ``root`` that were skipped (nothing when none were)."""
    if skipped:
        log.warning("%s: %s", root, skipped_summary(skipped))
