"""The documentation cannot rot: the site builds in strict mode (no broken link, no missing
reference, the CLI and API references generated from the code), every code block marked runnable
in the guides runs at its small size, and the README's setup commands are exactly what CI runs."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import diffuse

ROOT = Path(diffuse.__file__).resolve().parent
DOCS = ROOT / "docs"
#: a fenced block right after this line is executed by :func:`test_runnable_block`
MARKER = "<!-- runnable -->"
_FENCE = re.compile(r"^<!-- runnable -->\n```(bash|python)\n(.*?)^```", re.S | re.M)


def runnable_blocks() -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(page, [(language, code), ...])]``: the runnable blocks of each page, in order."""
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        blocks = [(m.group(1), m.group(2)) for m in _FENCE.finditer(text)]
        if sum(line == MARKER for line in text.splitlines()) != len(blocks):
            raise AssertionError(f"{page}: a {MARKER} line not followed by a ```bash or ```python block")
        if blocks:
            out.append((str(page.relative_to(DOCS)), blocks))
    return out


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def test_the_site_builds_in_strict_mode(tmp_path):
    if not _have("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "mkdocs_click"):
        pytest.skip('the docs extra is not installed (pip install -e ".[docs]")')
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for command in ("diffuse train", "diffuse inpaint", "diffuse save-pretrained", "--pretrained"):
        assert command in cli, command                     # generated from the click commands
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "save_pretrained" in api and "from_pretrained" in api


def test_runnable_blocks_are_found():
    pages = dict(runnable_blocks())
    assert {"getting-started.md", "guides/pretrained.md", "guides/few-step.md"} <= set(pages)


@pytest.mark.parametrize("page, blocks", runnable_blocks(), ids=[p for p, _ in runnable_blocks()])
def test_runnable_block(page, blocks, tmp_path, monkeypatch):
    """Each page's blocks run in order in one fresh folder, as a reader would paste them: every
    line of a bash block is a ``diffuse`` command (run through the CLI in this process, so torch
    is imported once), a python block is executed as it stands."""
    from click.testing import CliRunner

    from diffuse.cli.main import main

    monkeypatch.chdir(tmp_path)
    for k, (lang, code) in enumerate(blocks):
        where = f"{page} block {k + 1} ({lang})"
        if lang == "python":
            exec(compile(code, where, "exec"), {"__name__": "__docs__"})   # noqa: S102 - our own docs
            continue
        for line in code.splitlines():
            args = shlex.split(line, comments=True)
            if not args:
                continue
            assert args[0] == "diffuse", f"{where}: runnable bash lines are diffuse commands: {line}"
            res = CliRunner().invoke(main, args[1:])
            assert res.exit_code == 0, f"{where}: {line}\n{res.output[-3000:]}\n{res.exception!r}"


def _readme_setup() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Setup", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines()]


def test_ci_runs_exactly_the_readme_setup():
    """`.ci/run` runs the README's install command and then its test command, nothing else."""
    install, test = _readme_setup()
    assert install == 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"'
    assert test == "python -m pytest -q"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    body = ci[ci.index("rm -rf .venv") + 1:]
    assert " && ".join(body[:3]) == install and body[3:] == [test], ci


def test_the_readme_fits_on_a_few_screens():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    links = re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines))
    assert links and all((ROOT / link).is_file() for link in links), [k for k in links if not (ROOT / k).is_file()]
