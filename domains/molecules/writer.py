"""Write generated molecules: one SDF with all samples and one XYZ per molecule.

Each SDF record holds the coordinates, the bonds inferred from distances (EDM's rule, see
``chem``) and properties with the per-molecule metrics (``num_atoms``, ``stable_atoms``,
``mol_stable``, ``valid``, ``connected``, ``smiles``). Records are written unsanitized, so an
unstable sample is still written as generated; read them back with
``Chem.SDMolSupplier(path, sanitize=False, removeHs=False)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from rdkit import Chem

from .chem import MoleculeReport, build_rdkit_mol

__all__ = ["write_sdf", "write_xyz"]


def write_sdf(path: Path, molecules: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
              reports: Sequence[MoleculeReport], elements: Sequence[str], with_charges: bool = False) -> Path:
    """All molecules in one SDF (written to a temporary name, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    writer = Chem.SDWriter(str(tmp))
    writer.SetKekulize(False)
    try:
        for k, ((pos, types, charges), rep) in enumerate(zip(molecules, reports)):
            symbols = [elements[t] for t in types.tolist()]
            mol = build_rdkit_mol(symbols, pos, rep.bonds, charges if with_charges else None)
            mol.UpdatePropertyCache(strict=False)
            mol.SetProp("_Name", f"sample_{k:05d}")
            mol.SetIntProp("num_atoms", rep.num_atoms)
            mol.SetIntProp("stable_atoms", rep.stable_atoms)
            mol.SetIntProp("mol_stable", int(rep.stable))
            mol.SetIntProp("valid", int(rep.valid))
            mol.SetIntProp("connected", int(rep.connected))
            mol.SetProp("smiles", rep.smiles or "")
            writer.write(mol)
    finally:
        writer.close()
    tmp.replace(path)
    return path


def write_xyz(path: Path, pos: np.ndarray, symbols: Sequence[str], comment: str = "") -> Path:
    """One molecule in XYZ format (atom count, comment, ``symbol x y z`` in Angstrom)."""
    lines = [str(len(symbols)), comment.replace("\n", " ")]
    lines += [f"{s:<2s} {p[0]:12.6f} {p[1]:12.6f} {p[2]:12.6f}" for s, p in zip(symbols, np.asarray(pos))]
    path.write_text("\n".join(lines) + "\n")
    return path
