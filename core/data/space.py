"""Spaces: how a domain's samples live in tensors.

Everything in core (schedules, samplers, losses, guidance) is written against a
:class:`Space`, never against a shape: a Space knows how to draw the standard Gaussian of
the data space, how to broadcast a per-sample coefficient to elements, how to project onto
the data subspace (e.g. zero centre of mass), how to reduce per-element values to one value
per sample, and how many degrees of freedom a sample has.

A Space may carry batch structure (a graph Space holds the batch index of its nodes); it is
then bound to one batch and created by the domain together with the batch.

Randomness: ``generator`` is either one ``torch.Generator`` (fast; the draws depend on the
batch composition) or a sequence of one generator per sample, in which case sample ``i``'s
noise comes only from generator ``i``: the same seed gives the same sample whatever the
batch size (the EDM convention).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence, Union

import torch
from torch import Tensor
from ..errors import UserInputError

__all__ = ["Space", "DenseSpace", "GeneratorLike", "per_sample_generators"]

GeneratorLike = Union[torch.Generator, Sequence[torch.Generator], None]


def per_sample_generators(seed: int, count: int, start: int = 0, device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One generator per sample, sample ``start + i`` seeded from ``(seed, start + i)``."""
    gens = []
    for i in range(start, start + count):
        g = torch.Generator(device=device)
        g.manual_seed((int(seed) * 1_000_003 + i) % (2 ** 63 - 1))
        gens.append(g)
    return gens


class Space(ABC):
    """The contract between core and a domain's tensors."""

    @abstractmethod
    def batch_size(self, x: Tensor) -> int:
        """Number of samples held in ``x``."""

    @abstractmethod
    def noise(self, like: Tensor, generator: GeneratorLike = None) -> Tensor:
        """A draw of the standard Gaussian of this space, shaped like ``like``."""

    @abstractmethod
    def expand(self, per_sample: Tensor, like: Tensor) -> Tensor:
        """Broadcast ``per_sample`` (shape ``[B]``) against ``like`` element-wise."""

    def project(self, x: Tensor) -> Tensor:
        """Project onto the data subspace (identity for dense data)."""
        return x

    @abstractmethod
    def reduce(self, per_element: Tensor) -> Tensor:
        """Mean over the valid elements of each sample: ``[...] -> [B]``."""

    @abstractmethod
    def dof(self, like: Tensor) -> Tensor:
        """Degrees of freedom per sample (``[B]``), for likelihoods."""

    def sum(self, per_element: Tensor) -> Tensor:
        """Sum over the valid elements of each sample: ``[...] -> [B]``."""
        return self.reduce(per_element) * self.num_elements(per_element)

    @abstractmethod
    def num_elements(self, like: Tensor) -> Tensor:
        """Number of (valid) elements per sample, ``[B]``."""

    def inner(self, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample inner product ``<a, b>``."""
        return self.sum(a * b)

    def frame_shift(self, x: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """The per-sample translation of ``x``'s frame relative to ``target`` on the elements where
        ``mask`` (broadcastable to ``x``) is true, broadcast to elements: ``target + shift`` is
        ``target`` in ``x``'s frame, ``x - shift`` is ``x`` in ``target``'s frame. Spaces without a
        translation symmetry (dense data, whose ``project`` is the identity) return zeros; a space
        that removes each sample's centre of mass returns the mean offset over the masked
        elements of its centred channels (used by completion, ``core.sampling.completion``)."""
        return torch.zeros_like(x)

    def to(self, device: torch.device | str) -> "Space":
        """This space on ``device`` (a space that holds batch structure moves it; dense ones hold none)."""
        return self

    @staticmethod
    def concat(xs: Sequence[Tensor], spaces: Sequence["Space"]) -> tuple[Tensor, "Space"]:
        """Join chunks of samples into one ``(x, space)`` (structured spaces renumber their batches)."""
        return torch.cat(list(xs), 0), spaces[0]

    def take(self, x: Tensor, start: int, stop: int) -> tuple[Tensor, "Space"]:
        """Samples ``start .. stop - 1`` of ``x`` and their space (a rank's shard of a global batch in
        multi-process training). Dense spaces: rows of the sample dimension; structured spaces
        renumber their batch."""
        return x[start:stop], self

    def coef(self, per_sample: Tensor | float, like: Tensor) -> Tensor:
        """Cast a float64 per-sample (or scalar) coefficient to ``like``'s dtype and expand it."""
        c = torch.as_tensor(per_sample, device=like.device)
        if c.ndim == 0:
            return c.to(like.dtype)
        return self.expand(c.to(like.dtype), like)


class DenseSpace(Space):
    """Dense tensors ``[B, ...]``: images ``[B, C, H, W]``, audio ``[B, C, L]``, vectors ``[B, D]``."""

    def batch_size(self, x):
        return x.shape[0]

    def noise(self, like, generator=None):
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        if len(generator) != like.shape[0]:
            raise UserInputError(f"got {len(generator)} generators for a batch of {like.shape[0]}")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=like.device, dtype=like.dtype)
                            for g in generator])

    def expand(self, per_sample, like):
        return per_sample.reshape(per_sample.shape[0], *([1] * (like.ndim - 1)))

    def reduce(self, per_element):
        return per_element.reshape(per_element.shape[0], -1).mean(1)

    def num_elements(self, like):
        n = like[0].numel() if like.shape[0] else 0
        return torch.full((like.shape[0],), float(n), device=like.device, dtype=like.dtype)

    def dof(self, like):
        return self.num_elements(like)

    def __repr__(self) -> str:
        return "DenseSpace()"
