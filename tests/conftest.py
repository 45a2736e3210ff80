"""Shared fixtures."""

from __future__ import annotations

import os

# The CLI's OpenMP policy (diffuse/cli/threads.py) for the test process too: the suite imports
# torch before diffuse.cli, and on shared cores the default spin count makes steps several
# times slower. Set before torch starts its OpenMP runtime; a user's own setting wins.
if not any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")):
    os.environ["GOMP_SPINCOUNT"] = "1000"

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: intra-op threads only add overhead there, and on a shared
    2-core runner they contend (measured 10-20x slower under load). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _diffuse_cache(tmp_path_factory):
    """Data converted into the on-disk cache (core.cache) goes to a session folder, not ~/.cache."""
    import os

    old = os.environ.get("DIFFUSE_CACHE")
    os.environ["DIFFUSE_CACHE"] = str(tmp_path_factory.mktemp("diffuse-cache"))
    yield
    if old is None:
        os.environ.pop("DIFFUSE_CACHE", None)
    else:
        os.environ["DIFFUSE_CACHE"] = old
