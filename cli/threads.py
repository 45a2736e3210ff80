"""CPU threads for the ``diffuse`` command line: the OpenMP wait policy and the thread count.

PyTorch's CPU kernels run on OpenMP threads. Between parallel regions the GNU OpenMP runtime
(the one PyTorch's Linux wheels ship) lets waiting threads *spin* for ``GOMP_SPINCOUNT``
iterations (300,000 by default, milliseconds) before they sleep. On an idle machine that saves
a few wake-ups; on cores shared with other work the spinning threads burn the time slices that
the thread they wait for needs, and a training step becomes several times slower and erratic
(``benchmarks/bench_cpu_load.py`` measures it: the default image U-Net, batch 32, took 13-20 s
per step with the default spin count on a machine loaded by other jobs, 2.2-3.0 s with no or
little spinning). So the CLI, unless the user set any of :data:`USER_KNOBS`:

* looks at what the machine is doing as it starts (:func:`busy_cores`: two readings of
  ``/proc/stat`` 0.1 s apart, while this process sleeps): when other work keeps at least
  :data:`BUSY_CORES` (half a core) busy, it sets ``OMP_WAIT_POLICY=PASSIVE`` (:data:`PASSIVE_ENV`:
  waiting threads sleep at once); otherwise ``GOMP_SPINCOUNT=1000`` (:data:`SPIN_ENV`: the spin
  count libgomp itself falls back to when it sees more threads than cores in its own process; it
  cannot see other processes). Measured (``bench_cpu_load.py``, default image U-Net, 2 cores):
  idle, passive waiting costs 14-16 % and the short spin 1-4 %; beside one other training process
  passive waiting is the faster of the two (2.0-2.3x torch's idle step time against 2.3-2.6x). The
  choice is made before torch is imported -- the runtime reads it once, when it starts.
  :func:`configure` is called from ``diffuse/cli/__init__.py``, the first module the ``diffuse``
  console script, ``python -m diffuse.cli`` and ``torchrun -m diffuse.cli`` import; child
  processes inherit it. Work that starts after this process is not seen (the short spin then
  stays: 2.3-2.6x of idle beside one such job);
* sets torch's thread count from ``--threads`` or ``DIFFUSE_THREADS`` when given (else torch's
  default: ``OMP_NUM_THREADS``, or one thread per core). Measured under load, two threads with
  little spinning beat one thread, so the count is not lowered automatically.

Users who set ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` (Intel OpenMP builds)
keep exactly their settings.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Mapping, MutableMapping
from ..core.errors import UserInputError

__all__ = ["SPIN_ENV", "PASSIVE_ENV", "BUSY_CORES", "USER_KNOBS", "busy_cores", "policy_env", "configure",
           "parse_threads", "apply_threads"]

#: what the CLI sets on a machine that is idle as it starts (and the user set none of :data:`USER_KNOBS`)
SPIN_ENV: dict[str, str] = {"GOMP_SPINCOUNT": "1000"}
#: what it sets when other work keeps at least :data:`BUSY_CORES` cores busy as it starts
PASSIVE_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}
#: cores kept busy by other work (at the CLI's start) from which waiting threads sleep at once
BUSY_CORES = 0.5
#: variables that mean "the user chose the OpenMP waiting behaviour": then nothing is set
USER_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def busy_cores(seconds: float = 0.1, stat: str = "/proc/stat") -> float | None:
    """Cores kept busy by all work on the machine over ``seconds`` (this process sleeps meanwhile,
    so it is other work): the non-idle, non-iowait share of two ``/proc/stat`` readings, times the
    number of CPUs there. ``None`` where ``/proc/stat`` cannot be read (not Linux)."""
    def read() -> tuple[list[int], int]:
        with open(stat) as fh:
            lines = fh.read().splitlines()
        total = [int(v) for v in lines[0].split()[1:]]
        return total, sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())

    try:
        first, _ = read()
        time.sleep(seconds)
        second, cpus = read()
    except (OSError, ValueError, IndexError):
        return None
    delta = [b - a for a, b in zip(first, second)]
    total = sum(delta[:8])                # user nice system idle iowait irq softirq steal
    if total <= 0 or len(delta) < 5:
        return None
    idle = delta[3] + delta[4]
    return max(cpus, 1) * (total - idle) / total


def _user_chose(environ: Mapping[str, str]) -> bool:
    return any(k in environ for k in USER_KNOBS)


def policy_env(environ: Mapping[str, str], busy: float | None = 0.0) -> dict[str, str]:
    """The variables :func:`configure` would add to ``environ`` when other work keeps ``busy``
    cores busy (``None``: unknown, taken as idle): empty if the user set any of
    :data:`USER_KNOBS`, else :data:`PASSIVE_ENV` from :data:`BUSY_CORES` up, else :data:`SPIN_ENV`."""
    if _user_chose(environ):
        return {}
    return dict(PASSIVE_ENV if busy is not None and busy >= BUSY_CORES else SPIN_ENV)


def configure(environ: MutableMapping[str, str] | None = None, busy: float | None = None) -> dict[str, str]:
    """Add :func:`policy_env` to ``environ`` (default ``os.environ``) if torch is not imported yet
    (afterwards the OpenMP runtime has read its settings and changing them does nothing); ``busy``
    defaults to :func:`busy_cores` measured now. Returns what was set. Child processes (e.g.
    ``torchrun`` workers) inherit it."""
    if "torch" in sys.modules:
        return {}
    environ = os.environ if environ is None else environ
    if _user_chose(environ):   # nothing to choose: skip the 0.1 s measurement
        return {}
    add = policy_env(environ, busy_cores() if busy is None else busy)
    environ.update(add)
    return add


def parse_threads(value: str | int | None, source: str = "DIFFUSE_THREADS") -> int | None:
    """A thread count from the user: ``None`` / ``""`` / ``"auto"`` (torch's default) or an integer >= 1;
    anything else is a ``ValueError`` naming ``source``."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        raise UserInputError(f"{source} must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise UserInputError(f"{source} must be a positive integer or 'auto', got {value!r}")
    return n


def apply_threads(threads: int | None = None, environ: Mapping[str, str] | None = None) -> int | None:
    """Set torch's intra-op thread count to ``threads`` if given, else to ``DIFFUSE_THREADS`` if
    set; otherwise leave it (torch's default: ``OMP_NUM_THREADS``, else one per core). Returns the
    count set, or ``None`` when left alone. A bad ``DIFFUSE_THREADS`` is a ``ValueError``."""
    environ = os.environ if environ is None else environ
    if threads is None:
        threads = parse_threads(environ.get("DIFFUSE_THREADS"))
    if threads is None:
        return None
    import torch

    torch.set_num_threads(threads)
    return threads
