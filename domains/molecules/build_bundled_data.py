"""Build ``data/qm9_subset.npz``, the bundled default molecules (a seeded QM9 subset).

Run once by a maintainer with qm9pack installed (``pip install --no-deps qm9pack``)::

    python -m diffuse.domains.molecules.build_bundled_data --num 2000 --seed 0

Molecules are drawn uniformly at random (seeded) from all 130,831 QM9 molecules, i.e. across
all three qm9pack CSV parts (they are ordered small-first). Stored: atomic numbers ``z``
(uint8), coordinates ``pos`` in Angstrom (float32), offsets ``ptr``, the QM9 indices and QM9's own SMILES (GDB-17 / B3LYP relaxed).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from rdkit import Chem

from .readers import read_qm9pack

log = logging.getLogger(__name__)


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
    log.info("wrote %d molecules (%d atoms) to %s", num, ptr[-1], out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("data") / "qm9_subset.npz")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    build(args.num, args.seed, args.out)


if __name__ == "__main__":
    main()
