"""Atom counts of sampled molecules: given, or drawn from the training data's histogram."""

from __future__ import annotations

from typing import Any

import torch

from ...core.data.space import GeneratorLike
from ...core.errors import DataError, UserInputError

__all__ = ["draw_num_atoms"]


def draw_num_atoms(num: int, data_info: dict[str, Any], generator: GeneratorLike, cond: Any) -> torch.Tensor:
    """``num`` atom counts: from ``cond`` (one count, ``num`` of them, or ``{"num_atoms": ...}``) or
    drawn from ``data_info["num_atoms_hist"]`` with ``generator`` (one, or one per molecule)."""
    if cond is not None:
        if isinstance(cond, dict):
            cond = cond.get("num_atoms")
        counts = torch.as_tensor(cond, dtype=torch.long).reshape(-1)
        if counts.numel() == 1:
            counts = counts.expand(num).clone()
        if counts.numel() != num or bool((counts < 1).any()):
            raise UserInputError(f"num_atoms must be one positive count or {num} of them, got {cond!r}")
        return counts
    hist = data_info.get("num_atoms_hist")
    if not hist:
        raise DataError("the checkpoint's data_info has no atom-count histogram (num_atoms_hist); give num_atoms")
    sizes = torch.tensor([h[0] for h in hist], dtype=torch.long)
    weights = torch.tensor([float(h[1]) for h in hist], dtype=torch.float64)
    if generator is None or isinstance(generator, torch.Generator):
        draw = torch.multinomial(weights, num, replacement=True, generator=generator)
    else:  # one generator per sample: sample i's size depends only on generator i
        if len(generator) != num:
            raise UserInputError(f"got {len(generator)} generators for {num} molecules")
        draw = torch.cat([torch.multinomial(weights, 1, generator=g) for g in generator])
    return sizes[draw]
