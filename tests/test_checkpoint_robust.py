"""Checkpoints survive kills: a crash at every filesystem operation of a save, twice in a row;
signals during a save; SIGTERM on a real training process; read-only run folders; samples
written through a temporary folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import diffuse.api as api
import diffuse.core.training.checkpoint as ckpt_mod
from diffuse.core.errors import CheckpointError
from diffuse.core.training.checkpoint import load_checkpoint, save_checkpoint
from diffuse.core.config import RunConfig

from toy import points_domain

TESTS = Path(__file__).resolve().parent
FAST = dict(batch_size=32, warmup_steps=3, eval_samples=32, eval_steps=5, log_every=1, checkpoint_every=0,
            device="cpu", lr_schedule="constant")


@pytest.fixture(scope="module", autouse=True)
def _register():
    points_domain()


# ---------------------------------------------------------------------------- crash at every operation
class Crash(BaseException):
    """A kill: nothing after this operation happens (not an Exception, so nothing catches it)."""


#: every os call a save, a clean-up or shutil.rmtree makes that changes (or flushes) the file system
OPS = ("mkdir", "open", "write", "fsync", "replace", "rename", "unlink", "remove", "rmdir")


@contextmanager
def crash_at(k: int):
    """The k-th (1-based) file-system operation is killed: it does not happen, or, for a write,
    only half of its bytes reach the file (a torn write). fsync is counted but skipped (a
    process kill, not a power cut, so it changes nothing here, and it is slow)."""
    count = [0]
    real = {name: getattr(os, name) for name in OPS}

    def wrap(name):
        fn = real[name]

        def op(*args, **kwargs):
            count[0] += 1
            if count[0] == k:
                if name == "write":
                    data = bytes(args[1])
                    fn(args[0], data[: len(data) // 2])
                raise Crash(f"{name} #{k}")
            if name == "fsync":
                return None
            return fn(*args, **kwargs)
        return op

    with pytest.MonkeyPatch.context() as mp:
        for name in OPS:
            mp.setattr(os, name, wrap(name))
        yield count


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)


def _save(run: Path, step: int) -> None:
    """A checkpoint whose every file says which save wrote it."""
    model, ema = Tiny(), Tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(step))
        for p in ema.parameters():
            p.fill_(-float(step))
    save_checkpoint(run, model, ema, {"step": step, "tag": torch.tensor([step])}, {"domain": "toy", "step": step})


def _loaded_step(run: Path) -> int:
    """Load (must not fail) and check that every file of the loaded checkpoint is from one save."""
    ck = load_checkpoint(run, with_state=True)
    step = ck["meta"]["step"]
    assert ck["state"]["step"] == step and int(ck["state"]["tag"]) == step
    assert all(torch.all(v == step) for v in ck["model"].values())
    assert all(torch.all(v == -step) for v in ck["ema"].values())
    return step


def _marked(run: Path) -> dict[str, int]:
    """Folders holding a completeness marker (a valid meta.json), and their steps: each must be whole."""
    out = {}
    for folder in run.iterdir():
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        out[folder.name] = meta["step"]
        model = load_file(str(folder / "model.safetensors"))
        assert all(torch.all(v == meta["step"]) for v in model.values()), folder
    return out


def _fresh_run(run: Path) -> None:
    if run.exists():
        shutil.rmtree(run)
    run.mkdir()
    (run / "config.json").write_text(RunConfig(domain="toy").to_json())


def _count_ops(run: Path) -> int:
    _fresh_run(run)
    _save(run, 1)
    with crash_at(10 ** 9) as count:
        _save(run, 2)
    return count[0]


def test_crash_at_every_operation_of_two_saves_in_a_row(tmp_path, monkeypatch):
    """For every k1 and k2: save 1 cleanly, crash save 2 at its k1-th operation, crash save 3 at
    its k2-th, then load: it never fails, the loaded checkpoint is whole, it is the newest one
    that carries a completeness marker, it never goes back to an older one than was loadable
    before, and a finished save is always the one loaded. A last save then succeeds and leaves
    a clean run folder."""
    # fsync only matters for power cuts, not for a killed process; skipping it makes the ~1000
    # save sequences 10x faster
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    shm = Path("/dev/shm")  # a memory file system where there is one: the same semantics, faster
    base = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    try:
        _crash_twice_everywhere(base / "run")
    finally:
        if base != tmp_path:
            shutil.rmtree(base, ignore_errors=True)


def _crash_twice_everywhere(run: Path) -> None:
    n = _count_ops(run)
    assert n >= 15  # sanity: the save really goes through the patched operations
    combos = 0
    for k1 in range(1, n + 2):
        for k2 in range(1, n + 9):  # the second save may have more to clean up
            _fresh_run(run)
            _save(run, 1)
            done1 = True
            with crash_at(k1):
                try:
                    _save(run, 2)
                except Crash:
                    done1 = False
            v1 = _loaded_step(run)
            assert v1 == max(_marked(run).values())
            assert v1 == 2 if done1 else v1 in (1, 2)
            done2 = True
            with crash_at(k2):
                try:
                    _save(run, 3)
                except Crash:
                    done2 = False
            v2 = _loaded_step(run)
            assert v2 == max(_marked(run).values())
            assert v2 >= v1
            assert v2 == 3 if done2 else v2 in (v1, 3)
            _save(run, 4)
            assert _loaded_step(run) == 4
            assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.json"]
            combos += 1
            if done2:  # every larger k2 also lets the second save finish: the same case
                break
        assert done2, "the k2 range must reach a save that completes"
    assert combos >= (n + 1) * n


def test_legacy_run_folders_still_load_and_upgrade(tmp_path):
    """Format-1 folders (meta.json without a generation): checkpoint/ loads; after a kill between
    the old code's renames, checkpoint.old wins over an unmarked-format checkpoint.tmp."""
    run = tmp_path / "run"
    _fresh_run(run)
    _save(run, 5)
    meta = json.loads((run / "checkpoint" / "meta.json").read_text())
    legacy = {"format": 1, "domain": "toy", "step": meta["step"]}
    (run / "checkpoint" / "meta.json").write_text(json.dumps(legacy))
    assert _loaded_step(run) == 5
    # the old code's kill states: checkpoint.old (complete) + checkpoint.tmp (unknown)
    os.rename(run / "checkpoint", run / "checkpoint.old")
    shutil.copytree(run / "checkpoint.old", run / "checkpoint.tmp")
    (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"torn")
    assert _loaded_step(run) == 5
    _save(run, 6)
    assert _loaded_step(run) == 6
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.json"]


def test_incomplete_checkpoint_is_ignored_then_cleaned_with_a_log_line(tmp_path, caplog):
    run = tmp_path / "run"
    _fresh_run(run)
    _save(run, 1)
    (run / "checkpoint.tmp").mkdir()
    (run / "checkpoint.tmp" / "model.safetensors").write_bytes(b"half")
    with caplog.at_level(logging.WARNING, logger="diffuse.core.training.checkpoint"):
        assert _loaded_step(run) == 1
    assert "checkpoint.tmp" in caplog.text and "interrupted save" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffuse.core.training.checkpoint"):
        _save(run, 2)
    assert "removed" in caplog.text and "checkpoint.tmp" in caplog.text
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.json"]
    # nothing complete at all: one clear error, not a traceback
    shutil.rmtree(run / "checkpoint")
    (run / "checkpoint.tmp").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(run)


# ---------------------------------------------------------------------------- signals
def test_signal_during_a_save_is_held_until_the_checkpoint_is_complete(tmp_path, monkeypatch, caplog):
    """SIGTERM sent while the step-3 checkpoint is being written: the save finishes, then the
    run stops (KeyboardInterrupt), the checkpoint is the whole step-3 one, and resuming continues."""
    run = tmp_path / "run"
    real = ckpt_mod._write_file
    sent = []

    def write_and_signal(path, data):
        if not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGTERM)
        real(path, data)

    monkeypatch.setattr(ckpt_mod, "_write_file", write_and_signal)
    handler = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        api.train("points2d", out=run, steps=6, progress=False, final_eval=False, **{**FAST, "checkpoint_every": 3})
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == handler  # restored
    assert "SIGTERM arrived while saving the checkpoint of step 3" in caplog.text
    assert "interrupted at step 3" in caplog.text
    assert load_checkpoint(run, with_state=True)["state"]["step"] == 3
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.json", "metrics.jsonl"]
    res = api.train("points2d", resume=run, progress=False)
    assert res.steps == 6


def test_a_signal_between_the_two_handler_swaps_leaves_no_handler_behind(monkeypatch):
    """A SIGTERM that arrives after SIGINT's holding handler is in place but before SIGTERM's
    raises through the old SIGTERM handler; the SIGINT handler must be put back all the same (a
    handler left behind would swallow every later Ctrl-C)."""
    import diffuse.core.training.signals as signals_mod

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    real = signal.signal
    calls = []

    def swap_then_interrupt(signum, handler):
        calls.append(signum)
        if len(calls) == 2:            # the old SIGTERM handler raises before the second swap
            raise KeyboardInterrupt("signal SIGTERM")
        return real(signum, handler)

    monkeypatch.setattr(signals_mod.signal, "signal", swap_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with signals_mod.signals_held():
            pytest.fail("the block must not run")
    monkeypatch.undo()
    assert {s: signal.getsignal(s) for s in before} == before
    with signals_mod.signals_held() as pending:    # and a complete hold still works
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    assert pending == [signal.SIGINT]
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("where", ["after_gradients", "in_update", "after_update"])
def test_signal_at_any_point_of_a_step_leaves_checkpoint_and_log_in_agreement(tmp_path, monkeypatch, caplog, where):
    """SIGTERM at step 4: after its backward pass (no update yet: the run stops at step 3), inside
    its update, or right after it (the update completes and its log line is written: step 4).
    Either way the checkpoint's step is the last step in metrics.jsonl (CI once caught a SIGTERM
    that landed between an update and its log line: the checkpoint said 28, the log stopped at 27)."""
    from diffuse.core.training.trainer import Trainer
    run = tmp_path / "run"
    real_grad, real_update = Trainer._gradients, Trainer._update

    def kill():
        os.kill(os.getpid(), signal.SIGTERM)

    def gradients(self):
        out = real_grad(self)
        if where == "after_gradients" and self.step == 3:
            kill()
        return out

    def update(self):
        if where == "in_update" and self.step == 3:
            kill()
        real_update(self)
        if where == "after_update" and self.step == 4:
            kill()

    monkeypatch.setattr(Trainer, "_gradients", gradients)
    monkeypatch.setattr(Trainer, "_update", update)
    with caplog.at_level(logging.WARNING), pytest.raises(KeyboardInterrupt):
        api.train("points2d", out=run, steps=8, progress=False, final_eval=False, **FAST)
    monkeypatch.undo()
    expected = 3 if where == "after_gradients" else 4
    assert f"interrupted at step {expected}" in caplog.text
    assert load_checkpoint(run, with_state=True)["state"]["step"] == expected
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, expected + 1))


def _python(script: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(api.__file__).parent.parent.parent), str(TESTS)]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, text=True, **popen)


def test_sigterm_checkpoints_the_current_step_and_resume_continues_exactly(tmp_path):
    run = tmp_path / "run"
    opts = {**FAST, "batch_size": 16}
    proc = _python(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from toy import points_domain
        points_domain()
        import diffuse.api as api
        api.train("points2d", out={str(run)!r}, steps=100000, progress=False, final_eval=False, **{opts!r})
        """, stderr=subprocess.PIPE)
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the training process ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode != 0
    line = next(l for l in err.splitlines() if "interrupted at step" in l)
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    assert f"--resume {run}" in line
    assert step >= 5
    assert load_checkpoint(run, with_state=True)["state"]["step"] == step
    # resume to step + 3; metrics.jsonl then holds each step once; weights == one uninterrupted run
    api.train("points2d", resume=run, steps=step + 3, progress=False)
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if "loss" in json.loads(l)]
    assert steps == list(range(1, step + 4))
    api.train("points2d", out=tmp_path / "once", steps=step + 3, progress=False, final_eval=False, **opts)
    a, b = load_checkpoint(run), load_checkpoint(tmp_path / "once")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k


# ---------------------------------------------------------------------------- read-only run folders
@pytest.mark.parametrize("read_only", ["checkpoint", "run"])
def test_read_only_run_is_refused_before_anything_is_written(read_only):
    """Checked for real: as root, the CLI runs in a child process that drops to user nobody
    (root may write anywhere) after importing what it needs."""
    base = Path(tempfile.mkdtemp(prefix="diffuse-ro-"))
    try:
        os.chmod(base, 0o755)
        run = base / "run"
        api.train("points2d", out=run, steps=4, stop_at=2, progress=False, final_eval=False, **FAST)
        before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
        root = os.geteuid() == 0
        if root:  # nobody owns the run folder and metrics; root keeps checkpoint/
            for p in (run, run / "metrics.jsonl", run / "config.json"):
                os.chown(p, 65534, 65534)
        target = run / "checkpoint" if read_only == "checkpoint" else run
        os.chmod(target, 0o555)
        proc = _python(f"""
            import os, sys
            sys.path.insert(0, {str(TESTS)!r})
            from toy import points_domain
            points_domain()
            import diffuse.api, diffuse.cli.main, tqdm.auto, click.testing
            if {root!r}:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            diffuse.cli.main.main(["train", "--resume", {str(run)!r}, "--no-progress"])
            """, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=240)
        os.chmod(target, 0o755)
        assert proc.returncode == 2, (out, err)
        assert err.strip().splitlines() == [f"error: {target} is not writable; training must write the run folder, "
                                            "its checkpoint, metrics and samples (fix the permissions or copy the run)"]
        after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
        assert after == before  # config.json, checkpoint and metrics untouched
        # and, writable again, it resumes
        assert api.train("points2d", resume=run, progress=False, final_eval=False).steps == 4
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_save_into_a_read_only_checkpoint_fails_before_changing_anything(tmp_path, monkeypatch):
    """save_checkpoint checks writability before its first change on disk (os.access, which
    is what decides for a non-root user), so the previous checkpoint stays current."""
    run = tmp_path / "run"
    _fresh_run(run)
    _save(run, 1)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p).name == "checkpoint" else real(p, mode, **kw))
    with pytest.raises(PermissionError, match="checkpoint is not writable"):
        _save(run, 2)
    monkeypatch.undo()
    assert _loaded_step(run) == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.json"]
    _save(run, 2)
    assert _loaded_step(run) == 2


# ---------------------------------------------------------------------------- samples
def test_trainer_writes_samples_through_a_temporary_folder(tmp_path, monkeypatch):
    """A writer that fails half-way leaves no samples/final (and no temporary folder); the
    helper is the one api re-exports."""
    from diffuse.core import io as core_io

    assert api.write_samples is core_io.write_samples
    dom = api.get_domain("points2d")
    real = type(dom).write

    def half_then_fail(self, samples, out_dir):
        real(self, samples, out_dir)
        raise OSError("disk full")

    monkeypatch.setattr(type(dom), "write", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        api.train("points2d", out=tmp_path / "run", steps=3, progress=False, **FAST)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "samples").exists() or not any((tmp_path / "run" / "samples").iterdir())
    res = api.train("points2d", out=tmp_path / "ok", steps=3, progress=False, **FAST)
    assert sorted(p.name for p in res.sample_dir.iterdir()) == ["points.csv"]
    assert sorted(p.name for p in res.sample_dir.parent.iterdir()) == ["final"]
