"""CPU threads for the ``diffuse`` command line: the OpenMP wait policy and the thread count.

PyTorch's CPU kernels run on OpenMP threads. Between parallel regions the GNU OpenMP runtime
(the one PyTorch's Linux wheels ship) lets waiting threads *spin* for ``GOMP_SPINCOUNT``
iterations (300,000 by default) before they sleep. On an idle machine that saves a few wake-ups;
on cores shared with other work the spinning threads burn the time slices the thread they wait
for needs, and a training step becomes 2-20x slower and erratic (``benchmarks/bench_cpu_load.py``
measures it). The CLI therefore, unless the user set any of these variables:

* sets a short spin count (:data:`SPIN_ENV`) before torch is imported (the OpenMP runtime reads
  it once, when it starts; :func:`configure` is called from ``diffuse/cli/__init__.py``, the first
  module the ``diffuse`` console script and ``python -m diffuse.cli`` import);
* uses ``DIFFUSE_THREADS`` (or ``--threads``) as the torch thread count when given, else torch's
  default (one per core), except when the machine is already busy at start (:func:`choose_threads`).

Users who set ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` (Intel OpenMP builds)
keep their values; ``OMP_NUM_THREADS`` set by the user is honoured by torch itself and then this
module leaves the thread count alone.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping

__all__ = ["SPIN_ENV", "USER_KNOBS", "policy_env", "configure", "parse_threads", "choose_threads",
           "apply_threads"]

#: what the CLI sets when the user set none of :data:`USER_KNOBS`
SPIN_ENV: dict[str, str] = {"GOMP_SPINCOUNT": "10000"}
#: variables that mean "the user chose the OpenMP waiting behaviour": then nothing is set
USER_KNOBS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def policy_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables :func:`configure` would add to ``environ`` (empty if the user set any knob)."""
    if any(k in environ for k in USER_KNOBS):
        return {}
    return dict(SPIN_ENV)


def configure(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Add :func:`policy_env` to ``environ`` (default ``os.environ``) if torch is not imported yet
    (afterwards the OpenMP runtime has read its settings and changing them does nothing).
    Returns what was set. Child processes (e.g. ``torchrun`` workers) inherit it."""
    if "torch" in sys.modules:
        return {}
    environ = os.environ if environ is None else environ
    add = policy_env(environ)
    environ.update(add)
    return add


def parse_threads(value: str | int | None, source: str = "DIFFUSE_THREADS") -> int | None:
    """A thread count from the user: ``None`` / ``""`` / ``"auto"`` (choose) or an integer >= 1;
    anything else is a ``ValueError`` naming ``source``."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{source} must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise ValueError(f"{source} must be a positive integer or 'auto', got {value!r}")
    return n


def _busy_cpus() -> float | None:
    """Runnable tasks on the machine right now, not counting this process (Linux ``/proc/loadavg``'s
    running count); ``None`` where it cannot be read."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - 1)


def choose_threads(cpu_count: int | None = None, busy: float | None = None) -> int:
    """The thread count for a run that starts now, ``cpu_count`` cores (default ``os.cpu_count()``)
    with ``busy`` of them already in use (default: measured): all free cores, at least one."""
    cpus = cpu_count or os.cpu_count() or 1
    if busy is None:
        busy = _busy_cpus() or 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def apply_threads(threads: int | None = None, environ: Mapping[str, str] | None = None) -> int | None:
    """Set torch's intra-op thread count: ``threads`` if given, else ``DIFFUSE_THREADS``, else
    :func:`choose_threads` -- unless the user set ``OMP_NUM_THREADS`` (torch honours it) and gave
    no explicit count. Returns the count set, or ``None`` when left alone."""
    environ = os.environ if environ is None else environ
    if threads is None:
        threads = parse_threads(environ.get("DIFFUSE_THREADS"))
    if threads is None:
        if environ.get("OMP_NUM_THREADS"):
            return None
        threads = choose_threads()
    import torch

    torch.set_num_threads(threads)
    return threads
