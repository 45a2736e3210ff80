"""The one error boundary of the command line: a UserInputError anywhere (the API, a domain, the
core) is one ``error:`` line with exit code 2; any other exception is a bug and keeps its
traceback (exit code 1), even a bare ValueError."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from diffuse import api
from diffuse.cli.main import main
from diffuse.core.errors import (CheckpointError, ConfigError, DataError, MissingPathError, NotSupportedError,
                                 OutputExistsError, UserInputError)


@pytest.mark.parametrize("exc", [UserInputError("bad thing"), DataError("bad thing"), ConfigError("bad thing"),
                                 CheckpointError("bad thing"), NotSupportedError("bad thing"),
                                 MissingPathError("bad thing"), OutputExistsError("bad thing")])
def test_a_user_input_error_is_one_line_exit_2(monkeypatch, exc):
    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(api, "load_pretrained", fail)
    res = CliRunner().invoke(main, ["sample", "--pretrained", "image", "--num", "1"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == ["error: bad thing"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), ValueError("boom"), KeyError("boom"), TypeError("boom")])
def test_any_other_exception_is_a_bug_with_its_traceback(monkeypatch, exc):
    def fail(*args, **kwargs):
        raise exc
    monkeypatch.setattr(api, "load_pretrained", fail)
    res = CliRunner().invoke(main, ["sample", "--pretrained", "image", "--num", "1"])
    assert res.exit_code == 1 and res.exception is exc
    assert "error:" not in res.output


def test_a_bug_prints_a_traceback_from_the_console_command(tmp_path):
    """Through the real entry point: a programming error (here a TypeError raised inside a command
    by a broken plug-in domain) prints Python's traceback and exits 1."""
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text("from diffuse.core import Domain\n"
                      "class Broken(Domain):\n"
                      "    name = 'broken'\n    description = 'a domain whose data loader has a bug'\n"
                      "    def load_data(self, path, options):\n        return 1 + 'x'\n"
                      "    def build_backbone(self, model, *a):\n        raise NotImplementedError\n"
                      "    def template(self, *a, **k):\n        raise NotImplementedError\n"
                      "    def metrics(self, *a):\n        return {}\n"
                      "    def write(self, *a):\n        return []\n")
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from diffuse.core.data.registry import register_domain\n"
            "from broken_plugin import Broken\nregister_domain(Broken)\n"
            "from diffuse.cli.main import main\n"
            "sys.exit(main(['train', '--domain', 'broken', '--out', %r, '--no-progress']))" % (str(tmp_path), str(tmp_path / "run")))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert "Traceback" in res.stderr and "TypeError" in res.stderr and "error:" not in res.stderr
