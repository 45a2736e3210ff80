"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks``).

The package's folder is the repository root (setuptools ``package-dir``), so the API reference's
loader (griffe) cannot find ``diffuse`` by a folder of that name. When MkDocs loads this file it
makes ``build/docs-src/diffuse``, a link to the repository root, which ``mkdocs.yml`` gives the
Python handler as its search path.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = ROOT / "build" / "docs-src" / "diffuse"

if not LINK.is_symlink():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(ROOT, LINK, target_is_directory=True)
