"""Writing a model folder (the layout of ``save_pretrained`` and of the shipped models) all at once.

The files are written into a staging folder beside the destination, which is then renamed into
place (``--force`` / ``force=True``: the old folder is swapped out by renames), so a failure or a
kill leaves either the old folder or the new one, never half of one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..core.errors import OutputExistsError

__all__ = ["write_model_folder", "check_destination"]


def check_destination(dest: str | Path, force: bool = False) -> Path:
    """``dest`` when a model folder may be written there: absent, an empty folder, or (``force``)
    anything but a file. An :class:`OutputExistsError` otherwise, before anything is written."""
    dest = Path(dest)
    if str(dest).strip() == "":
        raise OutputExistsError("the destination of a model folder is an empty string; give a folder")
    if dest.exists() and not dest.is_dir():
        raise OutputExistsError(f"{dest} is a file; give a folder for the model")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise OutputExistsError(f"{dest} exists and is not empty; give a new folder (or force=True / --force "
                                "to replace it)")
    return dest


def write_model_folder(dest: str | Path, blobs: dict[str, bytes], force: bool = False) -> list[Path]:
    """Write ``{relative path: bytes}`` as folder ``dest`` (see the module docstring); returns the paths."""
    dest = check_destination(dest, force)
    staging, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    for leftover in (staging, old):          # left by a write that was killed
        if leftover.exists():
            shutil.rmtree(leftover)
    staging.mkdir(parents=True)
    try:
        for rel, data in blobs.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(data)
        if dest.exists():                    # swap by renames; a whole folder is on disk throughout
            dest.rename(old)
        staging.rename(dest)
    finally:
        for leftover in (staging, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    return [dest / rel for rel in blobs]
