"""The video domain is a domain from outside: it imports only public names of diffuse (the modules of
``diffuse.domains.PLUGIN_API``, names in their ``__all__``, nothing with a leading underscore), and it
is registered through the ``diffuse.domains`` entry-point group in ``pyproject.toml``, as a
third-party package registers its domain."""

from __future__ import annotations

import ast
import importlib
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import diffuse
from diffuse.domains import PLUGIN_API

ROOT = Path(diffuse.__file__).resolve().parent
VIDEO = ROOT / "domains" / "video"


def public_names(module: str) -> set[str]:
    """The names a domain may take from a PLUGIN_API module: its ``__all__``."""
    return set(importlib.import_module(module).__all__)


def boundary_violations(source: str, package: str = "diffuse.domains.video") -> list[str]:
    """Every import in ``source`` (a module of ``package``) that goes past the public API."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "diffuse" or alias.name.startswith("diffuse."):
                    if alias.name not in PLUGIN_API:
                        bad.append(f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                bad.append(f"from {'.' * node.level}{node.module or ''} import ... (outside {package})")
                continue
            if node.level == 1:                 # the package's own modules
                continue
            mod = node.module or ""
            if not (mod == "diffuse" or mod.startswith("diffuse.")):
                continue
            if mod == package or mod.startswith(package + "."):
                continue
            if mod not in PLUGIN_API:
                bad.append(f"from {mod} import ... (not a public module)")
                continue
            allowed = public_names(mod)
            for alias in node.names:
                if alias.name.startswith("_") or alias.name not in allowed:
                    bad.append(f"from {mod} import {alias.name} (not public)")
    return bad


def test_the_video_domain_imports_only_public_names():
    files = sorted(VIDEO.rglob("*.py"))
    assert len(files) >= 8
    bad = {str(f.relative_to(ROOT)): v for f in files if (v := boundary_violations(f.read_text()))}
    assert not bad, bad


@pytest.mark.parametrize("source, expected", [
    ("from diffuse.core.data.domain import Domain", "not a public module"),
    ("from diffuse.core import _PUBLIC", "not public"),
    ("from diffuse.core import get_sampler, SpaceTimeThing", "SpaceTimeThing"),
    ("from diffuse.domains.image.unet import ResBlock", "not a public module"),
    ("from ...core.errors import DataError", "outside"),
    ("import diffuse.core.sampling.completion", "import diffuse.core.sampling.completion"),
    ("def f():\n    from diffuse.domains.image.features import _rotate_batch", "not a public module"),
])
def test_the_boundary_check_catches_private_imports(source, expected):
    """The check can fail: private modules, private names, unknown names, relative imports out of
    the package, also inside functions."""
    found = boundary_violations(source)
    assert found and any(expected in v for v in found), found


def test_allowed_imports_pass():
    assert not boundary_violations("from diffuse.core import Domain, Batch\nfrom diffuse.domains.image import ResBlock\n"
                                   "from diffuse.domains.layers import Attention\nfrom .moving import fold\nimport torch")


def test_every_public_name_exists():
    """Each PLUGIN_API module's ``__all__`` names what it has (no stale public names)."""
    for module in PLUGIN_API:
        mod = importlib.import_module(module)
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, (module, missing)


def test_the_domain_is_registered_by_entry_point():
    """pyproject.toml registers it in the entry-point group (no register_domain call in the code),
    and where the package is installed with that metadata the registry finds the class."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    eps = project["project"]["entry-points"]["diffuse.domains"]
    assert eps["video"] == "diffuse.domains.video:VideoDomain"
    assert "diffuse.domains.video" in project["tool"]["setuptools"]["packages"]
    assert not any("register_domain" in f.read_text() for f in VIDEO.rglob("*.py"))
    installed = {ep.name: ep.value for ep in entry_points(group="diffuse.domains")}
    if "video" not in installed:
        pytest.skip("this environment's diffuse metadata predates the video entry point (pip install -e . again)")
    from diffuse.core.data.registry import domain_class
    from diffuse.domains.video import VideoDomain
    assert domain_class("video") is VideoDomain


def test_the_docs_name_the_public_modules():
    text = (ROOT / "docs" / "guides" / "adding-a-domain.md").read_text()
    for module in PLUGIN_API:
        assert f"`{module}`" in text, module
