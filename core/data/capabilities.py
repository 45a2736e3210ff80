"""Optional capabilities of a domain: small protocols beside the required :class:`Domain` contract.

A domain must read data, build a backbone, make sampling templates, score and write samples.
Everything else is a capability it may have, declared by implementing that protocol's methods
(as on :class:`~diffuse.core.data.domain.Domain`, the ones about a data set are called on a
bound domain, ``domain.bind(data_info)``):

=============== ========================================== ======================================
capability      methods                                    what it enables
=============== ========================================== ======================================
conditional     ``condition_data_options``                 ``diffuse train --condition NAME``,
                (``conditional_structure``)                guidance, ``--label`` / ``--prompt``
completable     ``completion_input``                       ``diffuse inpaint`` / ``edit``
restorable      ``restoration_input``                      ``diffuse upscale``
autoencoder     ``build_autoencoder``                      ``diffuse train-autoencoder``, latent
                (``default_autoencoder``)                  models (``train --latent``)
classifier      ``build_classifier``                       ``diffuse train-classifier``, classifier
                (``classifier_data_options``,              guidance
                ``classifier_property``)
=============== ========================================== ======================================

:func:`capabilities` lists what a domain has (``diffuse domains`` prints it); :func:`require`
refuses a command a domain cannot do with one line, before any work. A domain has a capability
when its class implements the protocol's first method (the :class:`~diffuse.core.data.domain.Domain`
base only refuses them); a wrapper whose capabilities depend on what it wraps (a latent model's
domain) answers ``capabilities()`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import NotSupportedError
from .domain import Batch, Domain

__all__ = ["Conditional", "Completable", "Restorable", "HasAutoencoder", "HasClassifier", "CAPABILITIES",
           "capabilities", "require"]


@runtime_checkable
class Conditional(Protocol):
    """Trains on conditions of its data (labels, text, property values, a low-resolution input)."""

    capability = "conditional"

    def condition_data_options(self, names: list[str]) -> dict[str, Any]:
        """Data options that make ``load_data`` attach the conditions ``names`` to its batches."""

    def conditional_structure(self, num: int, cond: Any, generator: Any = None) -> Any:
        """Sampling structure drawn given the condition (e.g. atom counts given a property), or None."""


@runtime_checkable
class Completable(Protocol):
    """Completes and edits an input: the known part of a user file kept, the rest generated."""

    capability = "completable"

    def completion_input(self, path: str | Path, options: dict[str, Any]) -> tuple[Batch, Tensor]:
        """``(Batch of one sample in model space, mask of its known part)`` from a user file."""


@runtime_checkable
class Restorable(Protocol):
    """Restores a degraded input (super-resolution of a low-resolution image or a low-rate clip)."""

    capability = "restorable"

    def restoration_input(self, path: str | Path) -> dict[str, Any]:
        """The network condition ``{name: value}`` of a restoration model from a degraded file."""


@runtime_checkable
class HasAutoencoder(Protocol):
    """Has an autoencoder: latent diffusion on its latents."""

    capability = "autoencoder"

    def build_autoencoder(self, config: dict[str, Any]) -> nn.Module:
        """An :class:`~diffuse.core.models.latent.Autoencoder` for the bound data."""

    def default_autoencoder(self) -> dict[str, Any]:
        """``{"model": {...}, "train": {...}}`` defaults of the autoencoder."""


@runtime_checkable
class HasClassifier(Protocol):
    """Has a noise-aware classifier network: classifier guidance towards labels or properties."""

    capability = "classifier"

    def build_classifier(self, model: dict[str, Any], target: Any) -> nn.Module:
        """``f(x, noise_level, space=...) -> [B, out]`` for the target."""

    def classifier_property(self, name: str, batch: Batch) -> torch.Tensor:
        """Per-sample values of a real property of a data batch."""


#: every capability protocol, in the order ``diffuse domains`` lists them
CAPABILITIES: tuple[type, ...] = (Conditional, Completable, Restorable, HasAutoencoder, HasClassifier)

#: the method whose implementation declares each capability
_DECLARED_BY = {Conditional: "condition_data_options", Completable: "completion_input",
                Restorable: "restoration_input", HasAutoencoder: "build_autoencoder",
                HasClassifier: "build_classifier"}


def capabilities(domain: Domain) -> list[str]:
    """The names of the capabilities ``domain`` has (see the module docstring)."""
    own = getattr(domain, "capabilities", None)
    if callable(own):
        return list(own())
    cls = type(domain)
    return [cap.capability for cap in CAPABILITIES
            if getattr(cls, _DECLARED_BY[cap], None) is not getattr(Domain, _DECLARED_BY[cap], None)]


_WHAT = {"conditional": "condition on its data (it has no conditions)", "completable": "complete or edit an input",
         "restorable": "restore a degraded input (no super-resolution)", "autoencoder": "build an autoencoder",
         "classifier": "build a noise-aware classifier"}


def require(domain: Domain, capability: type) -> None:
    """A NotSupportedError naming the domain and what it cannot do, unless it has ``capability``."""
    if capability.capability not in capabilities(domain):
        raise NotSupportedError(f"the {domain.name} domain cannot {_WHAT[capability.capability]}; its capabilities: "
                                f"{', '.join(capabilities(domain)) or 'none'}")
