"""The CLI's CPU thread policy (diffuse.cli.threads): the OpenMP spin count reaches the OpenMP
runtime (read back from the runtime itself via OMP_DISPLAY_ENV), user settings win, and
--threads / DIFFUSE_THREADS set torch's thread count or fail as one ``error:`` line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from diffuse.cli.main import main
from diffuse.cli.threads import SPIN_ENV, USER_KNOBS, configure, parse_threads, policy_env

KNOBS = (*USER_KNOBS, "OMP_NUM_THREADS", "DIFFUSE_THREADS", "OMP_DISPLAY_ENV")


def _runtime_env(code: str, **env: str) -> str:
    """stderr of a fresh interpreter running ``code`` with OMP_DISPLAY_ENV=VERBOSE: the OpenMP
    runtime prints the settings it started with."""
    base = {k: v for k, v in os.environ.items() if k not in KNOBS}
    base.update(OMP_DISPLAY_ENV="VERBOSE", OMP_NUM_THREADS="1", **env)
    res = subprocess.run([sys.executable, "-c", code + "; import torch; torch.ones(64, 64).sum()"],
                         capture_output=True, text=True, env=base, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stderr


def _spincount(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.strip().startswith("GOMP_SPINCOUNT"):
            return line.split("=", 1)[1].strip().strip("'")
    return None


@pytest.fixture(scope="module")
def gomp():
    """Skip where torch's OpenMP runtime is not GNU libgomp (nothing to read back)."""
    plain = _spincount(_runtime_env("pass"))
    if plain is None:
        pytest.skip("torch's OpenMP runtime does not report GOMP_SPINCOUNT (not libgomp)")
    return plain


def test_cli_import_sets_spin_count_before_the_runtime_starts(gomp):
    # the package alone sets it without importing torch; the runtime then starts with it
    code = ("import sys, os, diffuse.cli; assert 'torch' not in sys.modules; "
            "assert os.environ['GOMP_SPINCOUNT'] == %r; import diffuse.cli.main" % SPIN_ENV["GOMP_SPINCOUNT"])
    assert _spincount(_runtime_env(code)) == SPIN_ENV["GOMP_SPINCOUNT"] != gomp


@pytest.mark.parametrize("knob,value,expect", [("GOMP_SPINCOUNT", "5000", "5000"),
                                               ("OMP_WAIT_POLICY", "PASSIVE", "0")])
def test_user_settings_win(gomp, knob, value, expect):
    assert _spincount(_runtime_env("import diffuse.cli.main", **{knob: value})) == expect


def test_policy_env_and_configure():
    assert policy_env({}) == SPIN_ENV
    for knob in USER_KNOBS:
        assert policy_env({knob: "1"}) == {}
    env: dict[str, str] = {}
    assert "torch" in sys.modules
    assert configure(env) == {} and env == {}  # too late once torch is imported: nothing is touched


def test_parse_threads():
    assert parse_threads(None) is None and parse_threads("auto") is None and parse_threads(" ") is None
    assert parse_threads("3") == 3 and parse_threads(2) == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="DIFFUSE_THREADS"):
            parse_threads(bad)


def test_threads_option_and_env(monkeypatch):
    before = torch.get_num_threads()
    runner = CliRunner()
    try:
        monkeypatch.delenv("DIFFUSE_THREADS", raising=False)
        res = runner.invoke(main, ["--threads", "1", "domains"])
        assert res.exit_code == 0 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("DIFFUSE_THREADS", "1")
        res = runner.invoke(main, ["domains"])
        assert res.exit_code == 0 and torch.get_num_threads() == 1
        monkeypatch.delenv("DIFFUSE_THREADS")
        torch.set_num_threads(2)
        assert runner.invoke(main, ["domains"]).exit_code == 0 and torch.get_num_threads() == 2  # left alone
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("args,env", [(["--threads", "0", "domains"], {}), (["--threads", "x", "domains"], {}),
                                      (["domains"], {"DIFFUSE_THREADS": "-2"})])
def test_bad_thread_counts_are_one_line_errors(args, env, monkeypatch):
    monkeypatch.delenv("DIFFUSE_THREADS", raising=False)
    before = torch.get_num_threads()
    res = CliRunner().invoke(main, args, env=env)
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "threads" in lines[0].lower() and torch.get_num_threads() == before
