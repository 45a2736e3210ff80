"""Make every pickle load fail: ``pickle.load`` / ``pickle.loads`` / ``Unpickler``, and torch's
loader unless it is asked for weights only, raise ``PickleForbidden``.

Loaded by ``scripts/cold_offline.sh`` through a ``sitecustomize`` module of its virtual
environment, so every Python process of the check (the CLI commands and their workers) runs with
it; a single pickle load on any path fails the check. Torch's loader with weights only stays
allowed: it reads tensors and plain containers only and cannot run code.
"""

from __future__ import annotations

import pickle


class PickleForbidden(RuntimeError):
    """A pickle load was attempted where none may happen."""


def _refuse(*args, **kwargs):
    raise PickleForbidden("a pickle load was attempted (forbidden by scripts/no_pickle.py)")


class _Unpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        _refuse()


def install() -> None:
    pickle.load = _refuse
    pickle.loads = _refuse
    pickle.Unpickler = _Unpickler
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    original = torch.load

    def load(*args, weights_only=None, **kwargs):
        if weights_only is not True:
            raise PickleForbidden(f"torch.load with weights_only={weights_only!r} (forbidden by scripts/no_pickle.py)")
        return original(*args, weights_only=True, **kwargs)

    torch.load = load
