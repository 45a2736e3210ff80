"""Build ``data/qm9_subset.npz``, the bundled default molecules (a seeded QM9 subset).

Run once by a maintainer with qm9pack installed (``pip install --no-deps qm9pack``)::

    python -m diffuse.domains.molecules.build_bundled_data --num 2000 --seed 0

Molecules are drawn uniformly at random (seeded) from all 130,831 QM9 molecules, i.e. across
all three qm9pack CSV parts (they are ordered small-first). Stored: atomic numbers ``z``
(uint8), coordinates ``pos`` in Angstrom (float32), offsets ``ptr``, the QM9 indices and QM9's own SMILES (GDB-17 / B3LYP relaxed),
and the six properties EDM conditions on (``properties`` float32 ``[N, 6]``, columns ``property_names`` in
``property_units``): dipole moment mu (D), isotropic polarizability alpha (Bohr^3), HOMO, LUMO and their gap
(meV, converted from Hartree with 1 Ha = 27211.386 meV as EDM does) and heat capacity Cv (cal/mol K).

``--bonds`` (:func:`add_bonds`) adds the molecular graphs a bond-generating model trains on to an
existing file (the other arrays unchanged): ``bonds`` (uint8 ``[M, 3]``: atom ``i < j`` within the
molecule and the Kekule bond order 1-3), ``bond_ptr`` (int32 offsets, molecule ``k``'s bonds are
``bond_ptr[k]:bond_ptr[k + 1]``) and ``formal_charge`` (int8 per atom), from each molecule's QM9
SMILES on its geometry (``graphs.graph_from_smiles``)::

    python -m diffuse.domains.molecules.build_bundled_data --bonds
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import numpy as np
from rdkit import Chem

from .readers import qm9pack_files, read_qm9pack
from ...core.errors import UserInputError

log = logging.getLogger(__name__)

HARTREE_MEV = 27211.386
#: name -> (qm9pack CSV column, unit, factor to the unit)
PROPERTIES = {"mu": ("Dipole_debye", "D", 1.0), "alpha": ("Polarizability_bohr3", "Bohr^3", 1.0),
              "homo": ("HOMO_au", "meV", HARTREE_MEV), "lumo": ("LUMO_au", "meV", HARTREE_MEV),
              "gap": ("HOMO_LUMO_gap_au", "meV", HARTREE_MEV), "Cv": ("Heatcapacity_Cv_cal_mol_K", "cal/mol K", 1.0)}


def read_properties(indices: np.ndarray) -> np.ndarray:
    """The :data:`PROPERTIES` of the QM9 molecules with the given indices, ``[len(indices), 6]`` float32."""
    csv.field_size_limit(1 << 27)
    want = {int(i): k for k, i in enumerate(indices.tolist())}
    out = np.full((len(want), len(PROPERTIES)), np.nan, np.float32)
    for f in qm9pack_files():
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                k = want.get(int(row["Index"]))
                if k is not None:
                    out[k] = [float(row[col]) * factor for col, _, factor in PROPERTIES.values()]
    if np.isnan(out).any():
        raise UserInputError("some requested QM9 indices are not in qm9pack's CSVs")
    return out


def add_properties(path: Path) -> Path:
    """Add the property arrays to an existing bundled npz (same molecules, other arrays unchanged)."""
    data = dict(np.load(path))
    data["properties"] = read_properties(data["qm9_index"])
    data["property_names"] = np.array(list(PROPERTIES))
    data["property_units"] = np.array([u for _, u, _ in PROPERTIES.values()])
    np.savez_compressed(path, **data)
    return path


def add_bonds(path: Path) -> Path:
    """Add the molecular graphs (bonds, formal charges) to an existing bundled npz (module docstring)."""
    from .graphs import graph_from_smiles

    data = dict(np.load(path))
    table = Chem.GetPeriodicTable()
    z, pos, ptr, smiles = data["z"], data["pos"], data["ptr"], data["smiles"]
    bonds, bond_ptr, charges = [], [0], np.zeros(len(z), np.int8)
    for i in range(len(ptr) - 1):
        a, b = int(ptr[i]), int(ptr[i + 1])
        symbols = [table.GetElementSymbol(int(k)) for k in z[a:b]]
        found, q = graph_from_smiles(symbols, pos[a:b].astype(np.float64), str(smiles[i]))
        bonds.append(found.astype(np.uint8))
        bond_ptr.append(bond_ptr[-1] + len(found))
        charges[a:b] = q
    data.update(bonds=np.concatenate(bonds), bond_ptr=np.array(bond_ptr, np.int32), formal_charge=charges)
    np.savez_compressed(path, **data)
    log.info("added %d bonds of %d molecules to %s", bond_ptr[-1], len(ptr) - 1, path)
    return path


def build(num: int, seed: int, out: Path) -> Path:
    """Write ``num`` seeded QM9 molecules to ``out`` (npz, compressed)."""
    mols, index = read_qm9pack()
    pick = np.sort(np.random.default_rng(seed).choice(len(mols), size=num, replace=False))
    table = Chem.GetPeriodicTable()
    z, pos, ptr = [], [], [0]
    for i in pick.tolist():
        z.append(np.array([table.GetAtomicNumber(s) for s in mols.symbols[i]], np.uint8))
        pos.append(mols.positions[i].astype(np.float32))
        ptr.append(ptr[-1] + len(mols.symbols[i]))
    np.savez_compressed(out, z=np.concatenate(z), pos=np.concatenate(pos), ptr=np.array(ptr, np.int32),
                        qm9_index=index[pick].astype(np.int32),
                        smiles=np.array([mols.names[i].split()[2] for i in pick.tolist()]))
    add_properties(out)
    log.info("wrote %d molecules (%d atoms) to %s", num, ptr[-1], out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("data") / "qm9_subset.npz")
    ap.add_argument("--bonds", action="store_true", help="add the molecular graphs to the existing file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.bonds:
        add_bonds(args.out)
        return
    build(args.num, args.seed, args.out)
    add_bonds(args.out)


if __name__ == "__main__":
    main()
