"""``diffuse train --nproc N``: re-launch the same command in N processes through
``torch.distributed.run``'s launcher (``torchrun --standalone``), and turn a failure into one
``error:`` line naming the rank that failed (see ``core.training.distributed``)."""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import uuid
from pathlib import Path

import click

from ..core.training.distributed import ERROR_DIR_ENV, EXIT_STOPPED

__all__ = ["launch"]


def launch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run ``python -m diffuse.cli ARGV`` in ``nproc`` processes; returns the exit code. With
    ``max_restarts`` the launcher restarts every process after a failure (elastic), up to that many
    times; ``train --out RUN`` then continues its run from the newest complete checkpoint."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    import torch.distributed.elastic.agent.server.api  # noqa: F401 - creates its loggers, silenced next

    # the agent's own log lines (rendezvous, worker start / stop): the one line below replaces them
    for name in list(logging.root.manager.loggerDict) + ["torch.distributed.elastic", "torch.distributed.run"]:
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    previous = os.environ.get(ERROR_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="diffuse-ranks-") as errors:
        os.environ[ERROR_DIR_ENV] = errors          # inherited by every process
        try:
            args = parse_args(["--standalone", "--nnodes=1", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
                               "--monitor-interval=0.1", "-m", "diffuse.cli", *argv])
            # what torchrun's --standalone sets up: a c10d rendezvous on a free local port
            args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
            config, cmd, cmd_args = config_from_args(args)
            elastic_launch(config, cmd)(*cmd_args)
        except SignalException as exc:      # Ctrl-C / SIGTERM to the launcher: every rank got it too
            click.echo(f"error: interrupted by {exc.sigval.name}; rank 0 checkpoints the current step "
                       "(continue with --resume RUN)", err=True)
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            line, code = failure_line(Path(errors), {r: (f.exitcode, f.timestamp) for r, f in exc.failures.items()},
                                      nproc)
            click.echo(f"error: {line}", err=True)
            return code
        finally:
            if previous is None:
                os.environ.pop(ERROR_DIR_ENV, None)
            else:
                os.environ[ERROR_DIR_ENV] = previous
    return 0


def failure_line(errors: Path, exits: dict[int, tuple[int, float]], nproc: int) -> tuple[str, int]:
    """One line and an exit code from the ranks' records (``core.training.distributed``) and their exit
    codes / times. A rank killed by a signal (out of memory...) leaves no record and is the
    cause (the others then fail in their next collective); otherwise the first rank that raised
    is named, and the same user error on every rank is printed once (exit 2)."""
    records = []
    for path in errors.glob("rank*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    recorded = {r.get("rank") for r in records}
    killed = sorted((t, r, c) for r, (c, t) in exits.items() if c is not None and c < 0 and r not in recorded)
    failed = sorted((r for r in records if r.get("kind") == "failed"), key=lambda r: r.get("time", 0.0))
    if failed and not killed:
        messages = {r["message"] for r in failed}
        if len(failed) == nproc and len(messages) == 1:   # every rank hit the same mistake
            return failed[0]["message"], 2 if all(r.get("code") == 2 for r in failed) else 1
        first = failed[0]
        code = 2 if first.get("code") == 2 else 1
        return (f"rank {first['rank']} of {nproc} failed: {first['message']} (the other processes were stopped)",
                code)
    candidates = killed or sorted((t, r, c) for r, (c, t) in exits.items() if r not in recorded and c != EXIT_STOPPED)
    if not candidates:
        return "the training processes failed", 1
    _, rank, code = candidates[0]
    if code is not None and code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"rank {rank} of {nproc} {how} (the other processes were stopped)", 1
