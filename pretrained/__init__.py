"""Pretrained models shipped inside the package (nothing is downloaded at run time).

Each model is a folder ``pretrained/NAME/`` (``diffuse/pretrained/NAME/`` once installed)::

    config.json        the run's RunConfig: domain, data, model, diffusion, train, data_info
    ema.safetensors    the EMA weights (float32, or float16 storage where that keeps quality)
    MODEL_CARD.md      data, recipe, steps, wall time, hardware, metrics, license

and ``recipes/NAME.json`` at the repository root reproduces it with
``diffuse train --config recipes/NAME.json``. Every file stays under :data:`MAX_FILE_BYTES`.
A model exported by this version also holds ``export.json`` (written last: its generation and the
recipes it ships with), which makes a replacement recoverable: ``export-pretrained --force``
swaps folders by renames, and a kill between two renames leaves the previous model as
``.NAME.old`` and the new one as ``.NAME.tmp-PID``; :func:`folder` then finds the complete one of the
highest generation, and the next export puts it back in place and rewrites its recipes.
:mod:`diffuse.pretrained.export` writes this layout from a run folder;
``diffuse.api.load_pretrained(NAME)`` and ``diffuse sample --pretrained NAME`` read it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..core.errors import CheckpointError, UserInputError

__all__ = ["PRETRAINED_DIR", "MAX_FILE_BYTES", "FILES", "MARKER", "available", "folder", "check_name", "candidates",
           "marker"]

#: where the shipped models live (this package's folder)
PRETRAINED_DIR = Path(__file__).resolve().parent
#: the most bytes one shipped file may hold (5 MB)
MAX_FILE_BYTES = 5 * 1024 * 1024
#: the files of one pretrained model
FILES = ("config.json", "ema.safetensors", "MODEL_CARD.md")
#: written last into an exported model: ``{"generation", "recipes": {file name: recipe}}``
MARKER = "export.json"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LEFTOVER = re.compile(r"^\.(.+)\.(?:old|tmp-\d+)$")


def check_name(name: str) -> str:
    """``name`` when it is a valid pretrained-model name (lower-case letters, digits, ``-``, ``_``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserInputError(f"invalid pretrained model name {name!r}; use lower-case letters, digits, '-' and '_' "
                         "(e.g. molecules)")
    return name


def _base(root: str | Path | None) -> Path:
    return Path(root) / "pretrained" if root is not None else PRETRAINED_DIR


def marker(path: Path) -> dict | None:
    """A model folder's ``export.json`` (None if absent or unreadable)."""
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def candidates(base: Path, name: str) -> list[tuple[int, int, Path]]:
    """The complete folders of model ``name`` in ``base`` (``pretrained/``), best first:
    ``(generation, preference, path)`` for ``NAME`` itself, ``.NAME.old`` (the previous model during
    a replacement) and ``.NAME.tmp-PID`` (a new one whose ``export.json`` was written)."""
    found = []
    paths = [(base / name, 2), (base / f".{name}.old", 0)]
    if base.is_dir():
        paths += [(p, 1) for p in base.glob(f".{name}.tmp-*") if p.name[len(name) + 6:].isdigit()]
    for path, pref in paths:
        if not path.is_dir() or not all((path / f).is_file() for f in FILES):
            continue
        mark = marker(path)
        if pref == 1 and mark is None:
            continue                         # a staging folder is complete only with its marker
        try:
            generation = int((mark or {}).get("generation", 0))
        except (TypeError, ValueError):
            generation = 0
        found.append((generation, pref, path))
    return sorted(found, reverse=True, key=lambda c: c[:2])


def available(root: str | Path | None = None) -> list[str]:
    """Names of the complete pretrained models in ``root/pretrained`` (default: the shipped ones;
    ``root`` is a folder laid out like the package, holding ``pretrained/`` and ``recipes/``),
    including one whose replacement was interrupted (see the module docstring)."""
    base = _base(root)
    if not base.is_dir():
        return []
    names = {p.name for p in base.iterdir() if p.is_dir() and _NAME.match(p.name)}
    names |= {m.group(1) for p in base.iterdir() if (m := _LEFTOVER.match(p.name)) and _NAME.match(m.group(1))}
    return sorted(n for n in names if candidates(base, n))


def folder(name: str, root: str | Path | None = None) -> Path:
    """The folder of pretrained model ``name``; a CheckpointError naming the available ones if
    there is no such (complete) model."""
    check_name(name)
    path = _base(root) / name
    found = candidates(_base(root), name)
    if found:
        return found[0][2]
    have = available(root)
    if name not in have:
        listed = f"available: {', '.join(have)}" if have else "none is installed in this copy of diffuse"
        missing = [f for f in FILES if path.is_dir() and not (path / f).is_file()]
        why = f" ({path} lacks {', '.join(missing)})" if missing else ""
        raise CheckpointError(f"no pretrained model {name!r}{why}; {listed}")
    return path
