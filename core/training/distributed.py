"""Several training processes (DistributedDataParallel): the launch environment, the process
group, each rank's shard of the global batch, and stopping every rank when one fails.

Launch with ``torchrun --nproc_per_node N -m diffuse.cli train ...``, ``diffuse train --nproc N``
(which re-launches itself through ``torch.distributed.run``'s launcher), ``accelerate launch`` or
anything else that sets the standard variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``. Without them (or with ``WORLD_SIZE=1``) training runs in
one process as always. The backend is NCCL on CUDA (each process on ``cuda:LOCAL_RANK``) and
gloo on CPU.

Failure: the first rank that raises posts one line (``rank R failed: ...``) to the process
group's key-value store; a watchdog thread in every other rank polls the store and stops its
process at once with ``rank S stopped: rank R failed: ...`` (exit code :data:`EXIT_STOPPED`),
whatever collective it is waiting in. A rank that dies without a word (killed) closes its
connections: gloo peers then fail at their next collective, and the process group's ``timeout``
(:data:`DEFAULT_TIMEOUT_S`, ``DIFFUSE_DIST_TIMEOUT`` seconds) bounds every other wait. Under the
``--nproc`` launcher each rank also writes its one line to ``$DIFFUSE_ERROR_DIR/rank<R>.json``,
from which the launcher prints a single ``error:`` line naming the failing rank.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import torch
from ..errors import UserInputError

__all__ = ["DistContext", "current", "init_distributed", "world_from_env", "shard_bounds", "failure_guard",
           "EXIT_STOPPED", "DEFAULT_TIMEOUT_S", "ERROR_DIR_ENV", "PeerFailed", "restart_count"]

#: exit code of a rank stopped because another rank failed
EXIT_STOPPED = 3
#: process-group timeout (seconds): the longest any rank waits in one collective (rank 0's
#: periodic evaluation included); ``DIFFUSE_DIST_TIMEOUT`` overrides it
DEFAULT_TIMEOUT_S = 1800.0
#: the ``--nproc`` launcher's folder for one-line error records of its ranks
ERROR_DIR_ENV = "DIFFUSE_ERROR_DIR"
_POLL_S = 0.2


def restart_count() -> int:
    """How many times an elastic launcher (``torchrun --max-restarts N``) has restarted this
    process's group after a failure (``TORCHELASTIC_RESTART_COUNT``; 0 on the first start)."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
    except ValueError:
        return 0


def _key(name: str) -> str:
    """A key of this attempt in the launcher's store: a restarted group must not read the
    failure of the attempt before it (the store outlives the workers under torchrun)."""
    return f"diffuse/{restart_count()}/{name}"


class PeerFailed(RuntimeError):
    """This rank stopped because another rank failed (the message names it)."""


def _env_int(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserInputError(f"environment variable {name}={raw!r} is not an integer") from None


def world_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``
    (``(0, 1, 0)`` when unset); ``ValueError`` for inconsistent values."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserInputError(f"inconsistent launch environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    return rank, world, local


def shard_bounds(count: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous shard of ``count`` samples: sizes differ by
    at most one, the first ``count % world`` ranks take one more (``torch.tensor_split``'s rule)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _timeout_s() -> float:
    raw = os.environ.get("DIFFUSE_DIST_TIMEOUT")
    if raw is None or raw.strip() == "":
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserInputError(f"DIFFUSE_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return value


@dataclass
class DistContext:
    """One process's place in a run: ``rank`` of ``world_size`` (a single process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    backend: str | None = None
    #: bytes this process has all-reduced in training collectives (gradients, DiLoCo's outer
    #: gradients, losses): counted from the tensors sent, not estimated
    allreduced_bytes: int = 0
    #: bytes gathered for checkpoints (a DiLoCo run's worker states), apart from training traffic
    checkpoint_bytes: int = 0
    _store: Any = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        """Several processes (a process group is up)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: logs, evaluates, writes checkpoints and the progress bar."""
        return self.rank == 0

    def shard(self, count: int) -> tuple[int, int] | None:
        """This rank's ``[start, stop)`` of a global batch of ``count`` samples; ``None`` in one process."""
        return shard_bounds(count, self.rank, self.world_size) if self.enabled else None

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over the ranks (``value`` itself in one process)."""
        if not self.enabled:
            return value
        import torch.distributed as dist
        out = value.detach().clone()
        self.allreduced_bytes += out.numel() * out.element_size()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of ``value`` over the ranks (counted in :attr:`allreduced_bytes`)."""
        return self.all_reduce_sum(value) / self.world_size if self.enabled else value

    def broadcast(self, value: torch.Tensor, src: int = 0) -> None:
        """Rank ``src``'s ``value`` on every rank, in place (nothing in one process)."""
        if self.enabled:
            import torch.distributed as dist
            dist.broadcast(value, src=src)

    def gather_object(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` as a list on rank 0 (``None`` on the others; ``[obj]`` in one
        process); the pickled bytes are counted in :attr:`checkpoint_bytes`."""
        if not self.enabled:
            return [obj]
        import io
        import torch.distributed as dist
        buf = io.BytesIO()
        torch.save(obj, buf)
        self.checkpoint_bytes += buf.getbuffer().nbytes
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def count_gradients(self, ddp: Any) -> None:
        """Count the bytes DistributedDataParallel all-reduces (a communication hook that adds up
        each gradient bucket and then runs DDP's own averaging all-reduce)."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def hook(state, bucket):
            buf = bucket.buffer()
            self.allreduced_bytes += buf.numel() * buf.element_size()
            return default_hooks.allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)

    # ------------------------------------------------------------------ failure
    def _start_watchdog(self) -> None:
        addr, port = os.environ.get("MASTER_ADDR"), _env_int("MASTER_PORT")
        if not addr or port is None:
            return
        import torch.distributed as dist
        self._store = dist.TCPStore(addr, port, is_master=False, timeout=timedelta(seconds=30),
                                    wait_for_workers=False)
        self._thread = threading.Thread(target=self._watch, name="diffuse-dist-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(_POLL_S):
            try:
                failed = self._store.check([_key("failed")])
                message = self._store.get(_key("failed")).decode() if failed else None
            except Exception:  # noqa: BLE001 - the store went away with the rank that hosted it
                if self._stop.wait(1.0):   # a normal end: rank 0 may exit right after the last barrier
                    return
                message = "rank 0 exited (lost contact with it)"
            if message is None:
                continue
            if self._stop.is_set():
                return
            try:
                self._store.add(_key("failure_acks"), 1)
            except Exception:  # noqa: BLE001
                pass
            _stop_process(self.rank, f"rank {self.rank} stopped: {message}", "stopped", EXIT_STOPPED)

    def report_failure(self, line: str) -> str | None:
        """Tell the other ranks that this one failed (first failure wins). Returns the message of
        an earlier failure of another rank (this rank then merely stopped), else ``None``."""
        if self._store is None:
            return None
        self._stop.set()
        mine = f"rank {self.rank} failed: {line}"
        try:
            now = self._store.compare_set(_key("failed"), "", mine).decode()
        except Exception:  # noqa: BLE001 - rank 0 (the store's host) is gone
            return "rank 0 exited (lost contact with it)"
        if now != mine:
            try:
                self._store.add(_key("failure_acks"), 1)
            except Exception:  # noqa: BLE001
                pass
            return now
        deadline = time.monotonic() + 3.0   # let the others read the message before a host rank exits
        while time.monotonic() < deadline:
            try:
                if self._store.add(_key("failure_acks"), 0) >= self.world_size - 1:
                    break
            except Exception:  # noqa: BLE001
                break
            time.sleep(0.05)
        return None

    def finish(self) -> None:
        """After a training run's last collective: stop the watchdog (the other ranks may now
        exit). The process group stays up for another run in this process (``init_distributed``
        returns this context and restarts the watchdog); it is destroyed at exit."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _POLL_S + 2)
            self._thread = None

    def _restart_watchdog(self) -> None:
        if self.enabled and self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._watch, name="diffuse-dist-watchdog", daemon=True)
            self._thread.start()


_CURRENT: DistContext | None = None


def current() -> DistContext:
    """The active context (a single process when no process group was set up)."""
    return _CURRENT if _CURRENT is not None else DistContext()


def _stop_process(rank: int, line: str, kind: str, code: int) -> None:
    _write_error_record(rank, kind, line)
    if not os.environ.get(ERROR_DIR_ENV):
        sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


def _write_error_record(rank: int, kind: str, line: str, code: int = EXIT_STOPPED) -> None:
    """``{"rank", "kind": "failed" | "stopped", "message", "code", "time"}`` for the ``--nproc`` launcher."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder:
        return
    try:
        path = Path(folder) / f"rank{rank}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rank": rank, "kind": kind, "message": line, "code": code, "time": time.time()}))
        os.replace(tmp, path)
    except OSError:
        pass


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group the launcher describes (``WORLD_SIZE > 1``), or return the single-
    process context. ``device``: ``auto`` / ``cuda`` put each rank on ``cuda:LOCAL_RANK`` (NCCL)
    when CUDA is available, ``cpu`` (or no CUDA) uses gloo; ``cuda:N`` is refused with several
    processes. Idempotent. Blocks until every rank has joined."""
    global _CURRENT
    if _CURRENT is not None:
        _CURRENT._restart_watchdog()
        _CURRENT.barrier()
        return _CURRENT
    rank, world, local = world_from_env()
    if world == 1:
        return DistContext()
    import torch.distributed as dist

    if device not in ("auto", "cpu", "cuda"):
        raise UserInputError(f"device {device!r} cannot be used with {world} processes: each process takes "
                         "cuda:LOCAL_RANK; give --device cuda, auto or cpu")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise UserInputError("device 'cuda' requested but CUDA is not available on this machine")
    if use_cuda and local >= torch.cuda.device_count():
        raise UserInputError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                         "start at most one process per GPU")
    timeout = _timeout_s()
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise UserInputError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun, "
                             "diffuse train --nproc N or accelerate launch")
    if use_cuda:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if use_cuda else {}
        store = _attempt_store(world, timeout)
        if store is not None:
            kwargs["store"] = store
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout), **kwargs)
    ctx = DistContext(rank, world, local, dev, backend)
    _CURRENT = ctx
    atexit.register(_destroy)
    ctx._start_watchdog()
    ctx.barrier()
    return ctx


def _attempt_store(world: int, timeout: float) -> Any:
    """Under an elastic agent that hosts the store (torchrun), the process group's keys of this
    attempt under their own prefix: the agent's store outlives the workers it restarts, and a
    restarted rank could otherwise read the address its dead predecessor published (gloo then
    fails to connect, or waits). None elsewhere (``env://`` as usual)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    import torch.distributed as dist
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size=world,
                           is_master=False, timeout=timedelta(seconds=timeout))
    return dist.PrefixStore(f"diffuse/attempt_{restart_count()}/", client)


def _destroy() -> None:
    import torch.distributed as dist
    if _CURRENT is not None:
        _CURRENT.finish()
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - at exit, peers may be gone already
        pass


def _one_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    text = " ".join(str(text).split())
    return text or type(exc).__name__


@contextmanager
def failure_guard() -> Iterator[None]:
    """Around one rank's work: an exception is reported to the other ranks (which stop) and
    recorded for the ``--nproc`` launcher; an exception that follows another rank's failure
    (a collective broken by it) becomes :class:`PeerFailed` naming that rank. A no-op in one
    process (apart from the launcher's record)."""
    try:
        yield
    except KeyboardInterrupt:
        # Ctrl-C / SIGTERM reach every process (a terminal's process group, the launcher): each
        # stops on its own, rank 0 checkpointing first; telling the others could cut that short
        raise
    except SystemExit as exc:
        if exc.code not in (0, None) and current().enabled:
            current().report_failure(f"exit code {exc.code}")
        raise
    except BaseException as exc:
        ctx = current()
        rank = ctx.rank if ctx.enabled else world_from_env()[0]
        # the record first: once the other ranks read the failure they exit, and the launcher may
        # then stop this process before it could write anything (it would read as "killed")
        code = 2 if isinstance(exc, UserInputError) else getattr(exc, "exit_code", 1)
        _write_error_record(rank, "failed", _one_line(exc), code)
        earlier = ctx.report_failure(_one_line(exc)) if ctx.enabled else None
        if earlier is not None:             # another rank failed first: this one merely stopped
            line = f"rank {rank} stopped: {earlier}"
            _write_error_record(rank, "stopped", line)
            raise PeerFailed(line) from None
        raise
