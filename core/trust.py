"""Files that are programs load only from a path the user gave: never from what a run folder says.

A TorchScript or ``torch.export`` file (an Inception network for FID, say) is a program:
``torch.jit.load`` runs what it holds. diffuse therefore loads such a file only when its path came
from the user in this process: a command-line option (``diffuse evaluate --feature-net FILE``) or
the user's own config for a new run (``data_options.feature_net`` in ``--config``, or the dict given
to ``diffuse.api.train``). A path read from a run folder's ``config.json`` (which anyone may have
written: a downloaded run, a shared folder) or from the run a new one starts from (``--init``) is
refused with one line that says how to give it. Weights (safetensors) and data files are not
programs and are read as before; pickled files are never read at all (``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path

from .errors import NotSupportedError

__all__ = ["allow_program", "check_program", "is_allowed"]

_ALLOWED: set[str] = set()


def _key(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def allow_program(path: str | Path) -> Path:
    """Record that the user named program file ``path`` in this process (so it may be loaded)."""
    _ALLOWED.add(_key(path))
    return Path(path)


def is_allowed(path: str | Path) -> bool:
    """Whether the user named program file ``path`` in this process."""
    return _key(path) in _ALLOWED


def check_program(path: str | Path, what: str, option: str) -> Path:
    """``path`` if the user named it in this process, else one line (:class:`NotSupportedError`)
    saying that it comes from a run's config and how to give it (``option``)."""
    if not is_allowed(path):
        raise NotSupportedError(f"the run's config names the {what} {path}, a program file (TorchScript); diffuse "
                                f"loads programs only from a path you give: add {option} {path} if you trust "
                                "that file")
    return Path(path)
