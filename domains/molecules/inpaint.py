"""Molecule inputs for completion and editing (``MoleculeDomain.completion_input``): a fragment
from an SDF or XYZ file whose atoms (element and position, and formal charge where the model
uses charges) are fixed, plus ``num_atoms - len(fragment)`` atoms to generate.

The fragment's atoms are the first rows of the molecule, in the file's order and frame; the
file's hydrogens are taken as they are (no implicit hydrogens are added: the free atoms are
where the rest comes from). ``core.sampling.completion`` keeps the fixed atoms in the sample's zero-CoM
frame during sampling and returns the molecule in the fragment's frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...core.data.domain import Batch
from ...core.errors import DataError, MissingPathError, UserInputError
from ...core.data.graph import GraphSpace
from .dataset import FeatureCodec
from .readers import read_file

__all__ = ["molecule_completion_input"]


def molecule_completion_input(path: str | Path, options: dict[str, Any], data_info: dict[str, Any],
                              check_structure=None) -> tuple[Batch, Tensor]:
    unknown = sorted(set(options) - {"num_atoms"})
    if unknown:
        raise UserInputError(f"molecule completion takes num_atoms, not {', '.join(unknown)}")
    p = Path(path)
    if not p.exists():
        raise MissingPathError(f"fragment file {p} does not exist")
    if not (p.name.lower().endswith((".sdf", ".sdf.gz", ".xyz"))):
        raise DataError(f"fragment {p}: expected an SDF or XYZ file with 3-D coordinates")
    raw = read_file(p, {"add_hydrogens": False})
    if len(raw) == 0:
        reason = raw.skipped[0][1] if raw.skipped else "no molecule"
        raise DataError(f"fragment {p}: no usable molecule ({reason})")
    if len(raw) > 1:
        raise DataError(f"fragment {p} holds {len(raw)} molecules; give a file with one fragment")
    symbols, pos, charges = raw.symbols[0], raw.positions[0], raw.charges[0]
    vocab = list(data_info["elements"])
    missing = sorted({s for s in symbols if s not in vocab}, key=symbols.index)
    if missing:
        raise DataError(f"fragment {p}: element {', '.join(missing)} is not in the model's vocabulary "
                        f"({', '.join(vocab)})")
    k = len(symbols)
    n = options.get("num_atoms")
    if n is None:
        n = k
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserInputError(f"--num-atoms must be a positive whole number, got {n!r}")
    if k > n:
        raise UserInputError(f"the fragment has {k} atoms, more than the requested molecule (--num-atoms {n})")
    if check_structure is not None:
        check_structure([n], batch_size=1)
    codec = FeatureCodec.from_info(data_info)
    types = torch.tensor([vocab.index(s) for s in symbols], dtype=torch.long)
    frag = codec.encode(torch.as_tensor(pos, dtype=torch.float32), types, torch.as_tensor(charges, dtype=torch.long))
    x = torch.zeros(n, 3 + codec.num_features)
    x[:k] = frag
    known = torch.zeros(n, 1, dtype=torch.bool)
    known[:k] = True
    space = GraphSpace(torch.zeros(n, dtype=torch.long), 1, centred=3)
    return Batch(x, space, None, {"elements": vocab}), known
