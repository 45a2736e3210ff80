"""``from_pretrained``: any model from where it lives, by one argument.

``from_pretrained(SOURCE)`` takes a model folder written by
:func:`~diffuse.api.saving.save_pretrained`, a run folder of ``diffuse train`` /
``train-autoencoder`` / ``train-classifier``, a shipped model's name (``image``, ``audio``,
``molecules``) or ``pretrained:NAME``, and returns what the folder holds: a
:class:`~diffuse.api.model.DiffusionModel`, an autoencoder (frozen) or a
:class:`~diffuse.core.models.classifier.Classifier`. Every command that takes a model takes the
same (``-c DIR`` or ``--pretrained NAME|DIR``). Nothing is downloaded; weights are safetensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..core.errors import CheckpointError
from ..pretrained import folder
from .autoencoder import load_autoencoder
from .guiding import load_classifier
from .loading import load
from .plan import PRETRAINED_PREFIX
from .saving import model_kind

__all__ = ["from_pretrained", "resolve_model"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def resolve_model(source: str | Path) -> Path:
    """The folder ``source`` names: an existing folder as it is, ``pretrained:NAME`` or a bare
    NAME of a shipped model as that model's folder. One CheckpointError line otherwise."""
    text = str(source)
    if text.strip() == "":
        raise CheckpointError("the model is an empty string; give a run folder, a model folder or a shipped "
                              "model's name")
    if text.startswith(PRETRAINED_PREFIX):
        return folder(text[len(PRETRAINED_PREFIX):])
    path = Path(text)
    if path.exists():
        return path
    if _NAME.match(text):
        return folder(text)      # a shipped model, or one line naming the available ones
    raise CheckpointError(f"model folder {text} does not exist")


def from_pretrained(source: str | Path, *, device: str = "auto", domain: str | None = None,
                    ema: bool = True) -> Any:
    """The model ``source`` names (see the module docstring), on ``device``; ``domain``: the
    domain it must be of. ``ema=False`` takes a run folder's raw weights (a model folder has one
    set)."""
    path = resolve_model(source)
    kind = model_kind(path)
    if kind == "diffusion":
        return load(path, device=device, ema=ema, domain=domain)
    if kind == "classifier":
        return load_classifier(path, device=device, domain=domain)
    ae = load_autoencoder(path, device=device)
    return ae
