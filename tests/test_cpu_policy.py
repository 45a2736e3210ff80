"""The CLI's CPU thread policy (diffuse.cli.threads): the OpenMP waiting it chooses from the
machine's load (a short spin when idle, passive waiting beside busy work) reaches the OpenMP
runtime (read back from the runtime itself via OMP_DISPLAY_ENV), user settings win, and
--threads / DIFFUSE_THREADS set torch's thread count or fail as one ``error:`` line."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from diffuse.cli.main import main
import diffuse.cli.threads as threads_mod
from diffuse.cli.threads import (BUSY_CORES, PASSIVE_ENV, SPIN_ENV, USER_KNOBS, busy_cores, configure,
                                  parse_threads, policy_env)

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


def _chosen_and_runtime(**env: str) -> tuple[str, str | None]:
    """A fresh interpreter imports diffuse.cli (which chooses the policy without importing torch),
    prints what it chose, then starts torch's OpenMP runtime, which reports what it read."""
    code = ("import sys, os, diffuse.cli; assert 'torch' not in sys.modules; "
            "print(os.environ.get('OMP_WAIT_POLICY') or os.environ.get('GOMP_SPINCOUNT'), flush=True); "
            "import diffuse.cli.main")
    base = {k: v for k, v in os.environ.items() if k not in KNOBS}
    base.update(OMP_DISPLAY_ENV="VERBOSE", OMP_NUM_THREADS="1", **env)
    res = subprocess.run([sys.executable, "-c", code + "; import torch; torch.ones(64, 64).sum()"],
                         capture_output=True, text=True, env=base, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()[0], _spincount(res.stderr)


def test_cli_import_sets_the_policy_before_the_runtime_starts(gomp):
    # whichever the machine's load made it choose, the runtime starts with it
    chosen, runtime = _chosen_and_runtime()
    assert chosen in (SPIN_ENV["GOMP_SPINCOUNT"], PASSIVE_ENV["OMP_WAIT_POLICY"])
    assert runtime == ("0" if chosen == "PASSIVE" else chosen) != gomp


def test_a_busy_machine_gets_passive_waiting(gomp):
    """A competing process that keeps a core busy (a pure-Python loop) is seen at the CLI's start."""
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 120\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        chosen, runtime = _chosen_and_runtime()
    finally:
        hog.kill()
        hog.wait()
    assert (chosen, runtime) == ("PASSIVE", "0")


def test_busy_cores_reads_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal; two CPUs
    stat.write_text("cpu  100 0 50 1000 10 0 0 0 0 0\ncpu0 1 0 0 0 0\ncpu1 1 0 0 0 0\n")

    def later(seconds):   # 100 ticks pass: 30 user, 10 system, 50 idle, 10 iowait -> 40 % of 2 CPUs
        stat.write_text("cpu  130 0 60 1050 20 0 0 0 0 0\ncpu0 1 0 0 0 0\ncpu1 1 0 0 0 0\n")

    monkeypatch.setattr(threads_mod.time, "sleep", later)
    assert busy_cores(stat=str(stat)) == pytest.approx(0.8)
    assert busy_cores(stat=str(tmp_path / "missing")) is None


@pytest.mark.parametrize("knob,value,expect", [("GOMP_SPINCOUNT", "5000", "5000"),
                                               ("OMP_WAIT_POLICY", "PASSIVE", "0")])
def test_user_settings_win(gomp, knob, value, expect):
    assert _spincount(_runtime_env("import diffuse.cli.main", **{knob: value})) == expect


def test_policy_env_and_configure():
    assert policy_env({}) == SPIN_ENV == policy_env({}, busy=None) == policy_env({}, busy=BUSY_CORES - 0.01)
    assert policy_env({}, busy=BUSY_CORES) == PASSIVE_ENV == policy_env({}, busy=1.7)
    for knob in USER_KNOBS:
        assert policy_env({knob: "1"}) == {} == policy_env({knob: "1"}, busy=2.0)
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
