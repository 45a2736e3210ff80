"""Scale-out that proves itself (issue 33): counted all-reduce bytes, DiLoCo (one process and two
gloo processes: its outer Nesterov step, exact resume, bytes), and a rank SIGKILLed under
``torchrun --max-restarts`` that resumes to the weights of a run without the kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import diffuse.api as api
from diffuse.core.training.diloco import DiLoCo
from diffuse.core.training.distributed import DistContext

from reliability_helpers import cli_env
from test_distributed import _close, _launch, _weights
from toy import points_domain

pytestmark = pytest.mark.usefixtures("one_thread")

POINTS = dict(batch_size=16, lr=1e-3, warmup_steps=1, log_every=1, checkpoint_every=0, final_eval=False, device="cpu",
              seed=7)


@pytest.fixture(scope="module", autouse=True)
def _register():
    points_domain()


def _params(run: Path) -> int:
    """Trainable parameters (what gradients and DiLoCo's outer gradients carry)."""
    return sum(p.numel() for p in api.load(run, device="cpu").denoiser.parameters() if p.requires_grad)


# ------------------------------------------------------------------ DiLoCo's outer step, exactly
def test_outer_step_is_nesterov_on_the_averaged_change():
    """One worker: Delta = theta_global - theta_local; SGD with Nesterov momentum m moves the global
    weights by -lr (Delta + m buf) with buf = Delta (first step), then m buf + Delta; the worker
    restarts from the new global weights."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    dl = DiLoCo(model, DistContext(), sync_every=2, outer_lr=0.7, outer_momentum=0.9)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)                                   # a round of inner steps moved the weights
    dl.sync()
    for p, s in zip(model.parameters(), start):
        delta = torch.full_like(s, -0.1)
        torch.testing.assert_close(p.detach(), s - 0.7 * (delta + 0.9 * delta))
    second = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.2)
    dl.sync()
    for p, s in zip(model.parameters(), second):
        buf = 0.9 * torch.full_like(s, -0.1) + torch.full_like(s, 0.2)
        torch.testing.assert_close(p.detach(), s - 0.7 * (torch.full_like(s, 0.2) + 0.9 * buf))
    assert dl.due(2, 5) and not dl.due(3, 5) and dl.due(5, 5)


def test_diloco_pauses_and_resumes_exactly_in_one_process(tmp_path):
    """Paused mid-round (step 3 of rounds of 2) and resumed: the weights of an uninterrupted run
    (the checkpoint holds the global weights, the outer momentum and the worker's inner state)."""
    kw = dict(progress=False, steps=6, sync_every=2, **POINTS)
    api.train("points2d", out=tmp_path / "full", **kw)
    api.train("points2d", out=tmp_path / "part", stop_at=3, **kw)
    state = torch.load(tmp_path / "part" / "checkpoint" / "state.pt", weights_only=True)
    assert state["diloco"]["sync_every"] == 2 and len(state["diloco"]["ranks"]) == 1
    api.train("points2d", resume=tmp_path / "part", progress=False)
    _close(_weights(tmp_path / "part"), _weights(tmp_path / "full"), tol=0)
    with pytest.raises(ValueError, match="train.sync_every"):
        api.train("points2d", resume=tmp_path / "part", progress=False, steps=8, sync_every=3)


def test_two_processes_count_their_bytes_and_diloco_sends_h_times_fewer(tmp_path):
    """Two gloo processes, 6 steps: synchronous training all-reduces every gradient byte (the
    parameters' size) and a 4-byte loss each step; DiLoCo with H = 3 all-reduces the parameters'
    size twice (after steps 3 and 6) and nothing else. Both counts exact; the DiLoCo run ends with
    every worker on the global weights, and pausing it at step 4 then resuming gives the same."""
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        import diffuse.api as api
        from toy import points_domain
        from test_scaleout import POINTS
        points_domain()
        root = sys.argv[1]
        out = {{}}
        for name, extra in (("sync", {{}}), ("diloco", {{"sync_every": 3}})):
            res = api.train("points2d", out=root + "/" + name, progress=False, steps=6, **POINTS, **extra)
            out[name] = res.allreduced_bytes
        api.train("points2d", out=root + "/paused", progress=False, steps=6, stop_at=4, sync_every=3, **POINTS)
        api.train("points2d", resume=root + "/paused", progress=False)
        from diffuse.core.training.distributed import current
        json.dump(out, open(root + f"/bytes-{{current().rank}}.json", "w"))
    """))
    results = _launch([str(script), str(tmp_path)])
    for rank, (code, _, err) in enumerate(results):
        assert code == 0, (rank, err[-3000:])
    n = _params(tmp_path / "sync")
    for rank in range(2):
        counted = json.loads((tmp_path / f"bytes-{rank}.json").read_text())
        assert counted["sync"] == 6 * (4 * n + 4), (counted, n)
        assert counted["diloco"] == 2 * 4 * n, (counted, n)
    # the checkpoint's global weights are what every worker ended with
    final = load_file(str(tmp_path / "diloco" / "checkpoint" / "model.safetensors"))
    state = torch.load(tmp_path / "diloco" / "checkpoint" / "state.pt", weights_only=True)
    ranks = state["diloco"]["ranks"]
    assert len(ranks) == 2
    for r in ranks:
        for k, v in final.items():
            torch.testing.assert_close(r["model"][k], v, rtol=0, atol=0)
    _close(_weights(tmp_path / "paused"), final, tol=0)
    # the workers trained on different shards: their EMA copies differ, the shipped EMA is their mean
    ema = load_file(str(tmp_path / "diloco" / "checkpoint" / "ema.safetensors"))
    assert any(not torch.equal(ranks[0]["ema"][k], ranks[1]["ema"][k]) for k in ema)
    for k in ema:
        torch.testing.assert_close(ema[k], (ranks[0]["ema"][k] + ranks[1]["ema"][k]) / 2)


# ------------------------------------------------------------------ elastic: a killed rank
SLOW_PLUGIN = '''
import os, time
from pathlib import Path
from points2d import PointsDomain


class SlowPoints(PointsDomain):
    """The toy points domain, 60 ms per batch, each process leaving its PID in $PIDS_DIR."""
    name = "slowpoints"

    def load_data(self, path, options):
        folder = Path(os.environ["PIDS_DIR"])
        (folder / f"rank{os.environ.get('RANK', '0')}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}").write_text(
            str(os.getpid()))
        (folder / f"env{os.environ.get('RANK', '0')}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}").write_text(
            " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if "MASTER" in k or "TORCHELASTIC" in k))
        data = super().load_data(path, options)
        inner = data.batch

        def batch(indices, generator=None):
            time.sleep(0.06)
            return inner(indices, generator)
        data.batch = batch
        return data
'''


def _slow_plugin(tmp_path: Path) -> str:
    site = tmp_path / "site"
    (site / "slowpoints-0.1.dist-info").mkdir(parents=True)
    (site / "slowpoints.py").write_text(SLOW_PLUGIN)
    (site / "slowpoints-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: slowpoints\nVersion: 0.1\n")
    (site / "slowpoints-0.1.dist-info" / "entry_points.txt").write_text(
        "[diffuse.domains]\nslowpoints = slowpoints:SlowPoints\n")
    return str(site)


@pytest.mark.skipif(os.environ.get("DIFFUSE_SLOW_TESTS") != "1",
                    reason="two torchrun rounds of 2 processes: about 45 s on 2 idle cores, 70 s loaded; run with "
                           "DIFFUSE_SLOW_TESTS=1")
def test_a_killed_rank_restarts_and_finishes_with_the_uninterrupted_weights(tmp_path):
    """torchrun --max-restarts 1, 2 gloo processes, 16 steps with a checkpoint every 4: rank 1 is
    SIGKILLed after step 6; torchrun restarts both, `train --out RUN` continues RUN from its newest
    complete checkpoint, and the final weights equal those of a 1-process run (the 2-process
    run equals it to float reduction order)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    run = tmp_path / "run"
    env = cli_env(PIDS_DIR=str(pids), DIFFUSE_DIST_TIMEOUT="120")
    env["PYTHONPATH"] = os.pathsep.join([_slow_plugin(tmp_path), env["PYTHONPATH"]])
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"train": {"checkpoint_every": 4, "log_every": 1, "warmup_steps": 1, "lr": 1e-3,
                                         "final_eval": False, "seed": 7}}))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
            "--max-restarts", "1", "--monitor-interval", "0.1", "-m", "diffuse.cli", "train", "--domain", "slowpoints",
            "--steps", "16", "--batch-size", "16", "--config", str(cfg), "--out", str(run), "--no-progress",
            "--device", "cpu", "--eval-samples", "0"]
    proc = subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        killed = False
        while time.monotonic() < deadline and not killed:
            time.sleep(0.05)
            try:
                steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            except (OSError, ValueError):
                continue
            if steps and steps[-1] >= 6 and (pids / "rank1-0").is_file():
                os.kill(int((pids / "rank1-0").read_text()), signal.SIGKILL)
                killed = True
        assert killed, "the run never reached step 6"
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-4000:]
    assert (pids / "rank1-1").is_file() and (pids / "rank0-1").is_file()      # both restarted once
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 17))                  # the log of one run
    points_domain()
    api.train("points2d", out=tmp_path / "one", progress=False, steps=16, batch_size=16, checkpoint_every=4,
              log_every=1, warmup_steps=1, lr=1e-3, final_eval=False, seed=7, device="cpu")
    _close(_weights(run), _weights(tmp_path / "one"))
