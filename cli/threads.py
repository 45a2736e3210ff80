"""CPU threads for the ``diffuse`` command line: the OpenMP wait policy and the thread count.

PyTorch's CPU kernels run on OpenMP threads. Between parallel regions the GNU OpenMP runtime
(the one PyTorch's Linux wheels ship) lets waiting threads *spin* for ``GOMP_SPINCOUNT``
iterations (300,000 by default, milliseconds) before they sleep. On an idle machine that saves
a few wake-ups; on cores shared with other work the spinning threads burn the time slices that
the thread they wait for needs, and a training step becomes several times slower and erratic
(``benchmarks/bench_cpu_load.py`` measures it: the default image U-Net, batch 32, took 13-20 s
per step with the default spin count on a machine loaded by other jobs, 2.2-3.0 s with no or
little spinning). So the CLI, unless the user set any of :data:`USER_KNOBS`:

* sets ``GOMP_SPINCOUNT=1000`` (:data:`SPIN_ENV`: the spin count libgomp itself falls back to
  when it sees more threads than cores in its own process; it cannot see other processes) before
  torch is imported -- the runtime reads it once, when it starts. :func:`configure` is called
  from ``diffuse/cli/__init__.py``, the first module the ``diffuse`` console script, ``python -m
  diffuse.cli`` and ``torchrun -m diffuse.cli`` import; child processes inherit it;
* sets torch's thread count from ``--threads`` or ``DIFFUSE_THREADS`` when given (else torch's
  default: ``OMP_NUM_THREADS``, or one thread per core). Measured under load, two threads with
  little spinning beat one thread, so the count is not lowered automatically.

Users who set ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` (Intel OpenMP builds)
keep exactly their settings.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping

__all__ = ["SPIN_ENV", "USER_KNOBS", "policy_env", "configure", "parse_threads", "apply_threads"]

#: what the CLI sets when the user set none of :data:`USER_KNOBS`
SPIN_ENV: dict[str, str] = {"GOMP_SPINCOUNT": "1000"}
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
        raise ValueError(f"{source} must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise ValueError(f"{source} must be a positive integer or 'auto', got {value!r}")
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
