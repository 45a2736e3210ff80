"""Pretrained models shipped inside the package (nothing is downloaded at run time).

Each model is a folder ``pretrained/NAME/`` (``diffuse/pretrained/NAME/`` once installed)::

    config.json        the run's RunConfig: domain, data, model, diffusion, train, data_info
    ema.safetensors    the EMA weights (float32, or float16 storage where that keeps quality)
    MODEL_CARD.md      data, recipe, steps, wall time, hardware, metrics, license

and ``recipes/NAME.json`` at the repository root reproduces it with
``diffuse train --config recipes/NAME.json``. Every file stays under :data:`MAX_FILE_BYTES`.
:mod:`diffuse.pretrained.export` writes this layout from a run folder;
``diffuse.api.load_pretrained(NAME)`` and ``diffuse sample --pretrained NAME`` read it.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..core.errors import CheckpointError, UserInputError

__all__ = ["PRETRAINED_DIR", "MAX_FILE_BYTES", "FILES", "available", "folder", "check_name"]

#: where the shipped models live (this package's folder)
PRETRAINED_DIR = Path(__file__).resolve().parent
#: the most bytes one shipped file may hold (5 MB)
MAX_FILE_BYTES = 5 * 1024 * 1024
#: the files of one pretrained model
FILES = ("config.json", "ema.safetensors", "MODEL_CARD.md")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_name(name: str) -> str:
    """``name`` when it is a valid pretrained-model name (lower-case letters, digits, ``-``, ``_``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserInputError(f"invalid pretrained model name {name!r}; use lower-case letters, digits, '-' and '_' "
                         "(e.g. molecules)")
    return name


def _base(root: str | Path | None) -> Path:
    return Path(root) / "pretrained" if root is not None else PRETRAINED_DIR


def available(root: str | Path | None = None) -> list[str]:
    """Names of the complete pretrained models in ``root/pretrained`` (default: the shipped ones;
    ``root`` is a folder laid out like the package, holding ``pretrained/`` and ``recipes/``)."""
    base = _base(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and _NAME.match(p.name) and all((p / f).is_file() for f in FILES))


def folder(name: str, root: str | Path | None = None) -> Path:
    """The folder of pretrained model ``name``; a CheckpointError naming the available ones if
    there is no such (complete) model."""
    check_name(name)
    path = _base(root) / name
    have = available(root)
    if name not in have:
        listed = f"available: {', '.join(have)}" if have else "none is installed in this copy of diffuse"
        missing = [f for f in FILES if path.is_dir() and not (path / f).is_file()]
        why = f" ({path} lacks {', '.join(missing)})" if missing else ""
        raise CheckpointError(f"no pretrained model {name!r}{why}; {listed}")
    return path
