"""The molecule domain bound to data with bonds: a mixed state of coordinates, element types,
formal charges and bond orders (``bonded_data``), generated together.

:meth:`MoleculeDomain.bind <diffuse.domains.molecules.domain.MoleculeDomain.bind>` returns a
``BondedMoleculeDomain`` (:class:`BondedMethods` before ``MoleculeDomain``) for a data set whose ``data_info`` says ``bonds: true``; the unbound
domain (its defaults, data reading, conditions) is the same ``molecules`` domain. What differs:

* ``template``: zero mixed states (``bonded_data.bonded_space``), atom counts as for every molecule model;
* ``metrics`` / ``describe_samples``: both protocols of ``bonded_metrics`` (the generated graph's
  figures, and EDM's distance-inferred ones under ``edm/`` keys) on the same samples; novelty against
  the training molecules under each protocol's own SMILES;
* ``write``: one SDF whose records hold the generated bonds and formal charges (read them back with
  ``Chem.SDMolSupplier(path, removeHs=False)``; a valid record sanitizes to the same graph), with each
  record's figures under both protocols as properties, plus one XYZ per molecule;
* ``completion_input``: a fragment from an SDF file whose atoms (element, position, charge) and the
  bonds among them are fixed; the bonds of the free atoms are generated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from rdkit import Chem
from rdkit.Geometry import Point3D

from ...core.data.domain import Batch, DomainDataset
from ...core.data.product import State
from ...core.errors import DataError, MissingPathError, UserInputError
from .bonded_data import bonded_space, pair_orders
from .bonded_metrics import bonded_metrics, split_bonded
from .atom_counts import draw_num_atoms
from .graphs import GraphError, graph_from_mol, read_bonded_sdf
from .writer import write_xyz

__all__ = ["BondedMethods", "write_bonded_sdf"]

_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


def _reference(reference: DomainDataset, name: str) -> set[str] | None:
    """The SMILES of the molecules the model was trained on (the complement of a held-out split)."""
    complement = getattr(reference, "complement", None)
    source = complement() if callable(complement) else reference
    ref = getattr(source, name, None)
    return set(ref) if ref is not None else None


def write_bonded_sdf(path: Path, molecules: list[dict[str, np.ndarray]], graphs: list, edm: list,
                     elements: list[str]) -> Path:
    """All molecules in one SDF with their generated bonds and formal charges (temporary name, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    writer = Chem.SDWriter(str(tmp))
    writer.SetKekulize(False)
    try:
        for k, (m, g, e) in enumerate(zip(molecules, graphs, edm)):
            mol = Chem.RWMol()
            for t, q in zip(m["types"].tolist(), m["charges"].tolist()):
                atom = Chem.Atom(elements[t])
                atom.SetFormalCharge(int(q))
                atom.SetNoImplicit(True)
                mol.AddAtom(atom)
            ii, jj = np.nonzero(np.triu(m["orders"], 1))
            for i, j in zip(ii.tolist(), jj.tolist()):
                mol.AddBond(i, j, _TYPES[int(m["orders"][i, j])])
            conf = Chem.Conformer(len(m["types"]))
            for a, p in enumerate(m["pos"]):
                conf.SetAtomPosition(a, Point3D(float(p[0]), float(p[1]), float(p[2])))
            conf.Set3D(True)
            mol.AddConformer(conf, assignId=True)
            mol.UpdatePropertyCache(strict=False)
            mol.SetProp("_Name", f"sample_{k:05d}")
            for key, value in (("num_atoms", g.num_atoms), ("stable_atoms", g.stable_atoms),
                               ("mol_stable", int(g.stable)), ("valid", int(g.valid)), ("connected", int(g.connected)),
                               ("edm_stable_atoms", e.stable_atoms), ("edm_mol_stable", int(e.stable)),
                               ("edm_valid", int(e.valid))):
                mol.SetIntProp(key, int(value))
            mol.SetProp("smiles", g.smiles or "")
            mol.SetProp("edm_smiles", e.smiles or "")
            writer.write(mol)
    finally:
        writer.close()
    tmp.replace(path)
    return path


class BondedMethods:
    """What the ``molecules`` domain does differently when bound to data with bonds (see the module
    docstring); ``domain.BondedMoleculeDomain`` puts it before ``MoleculeDomain``."""

    def default_sampling(self) -> tuple[str, int | None]:
        """DDPM's ancestral step on the coordinates and each categorical component's own rule (D3PM)
        on 100 steps: 100 network evaluations (chosen on seeds 0-1 of ``benchmarks/bench_molecules_bonds.py``)."""
        return "ddpm", 100

    def template(self, num: int, generator: Any = None, structure: Any = None) -> Batch:
        """``num`` zero molecules (all four components); atom counts as the bond-free model."""
        counts = draw_num_atoms(num, self.info, generator, structure)
        batch = torch.repeat_interleave(torch.arange(num), counts)
        n = int(counts.sum())
        x = State({"pos": torch.zeros(n, 3), "atoms": torch.zeros(n, dtype=torch.long),
                   "charges": torch.zeros(n, dtype=torch.long),
                   "bonds": torch.zeros(int((counts * (counts - 1) // 2).sum()), dtype=torch.long)})
        return Batch(x, bonded_space(batch, num), None, {"elements": list(self.info["elements"])})

    def describe_samples(self, samples: Batch) -> dict[str, float]:
        return bonded_metrics(samples, self.info)[0]

    def metrics(self, samples: Batch, reference: DomainDataset) -> dict[str, float]:
        return bonded_metrics(samples, self.info, _reference(reference, "reference_graph_smiles"),
                              _reference(reference, "reference_smiles"))[0]

    def write(self, samples: Batch, out_dir: Path) -> list[Path]:
        out_dir = Path(out_dir)
        xyz_dir = out_dir / "xyz"
        xyz_dir.mkdir(parents=True, exist_ok=True)
        elements = list(self.info["elements"])
        _, graphs, edm = bonded_metrics(samples, self.info)
        molecules = split_bonded(samples, self.info)
        paths = [write_bonded_sdf(out_dir / "molecules.sdf", molecules, graphs, edm, elements)]
        for k, (m, g) in enumerate(zip(molecules, graphs)):
            comment = f"sample_{k:05d} stable={int(g.stable)} valid={int(g.valid)} smiles={g.smiles or '-'}"
            paths.append(write_xyz(xyz_dir / f"sample_{k:05d}.xyz", m["pos"],
                                   [elements[t] for t in m["types"].tolist()], comment))
        return paths

    def completion_input(self, path: str | Path, options: dict[str, Any]) -> tuple[Batch, dict[str, torch.Tensor]]:
        """A fragment (one SDF record) whose atoms and the bonds among them are fixed, plus
        ``num_atoms`` minus its size free atoms; the mask is ``{component: mask}``."""
        unknown = sorted(set(options) - {"num_atoms"})
        if unknown:
            raise UserInputError(f"molecule completion takes num_atoms, not {', '.join(unknown)}")
        p = Path(path)
        if not p.exists():
            raise MissingPathError(f"fragment file {p} does not exist")
        if not p.name.lower().endswith((".sdf", ".sdf.gz", ".mol")):
            raise DataError(f"fragment {p}: a bond-generating model completes an SDF fragment (its bonds are "
                            "fixed too); XYZ files hold no bonds")
        records = list(read_bonded_sdf(p, add_hydrogens=False))
        if len(records) != 1:
            raise DataError(f"fragment {p} holds {len(records)} molecules; give a file with one fragment")
        mol = records[0][1]
        try:
            bonds, charges = graph_from_mol(mol)
        except GraphError as exc:
            raise DataError(f"fragment {p}: {exc}") from None
        info = self.info
        vocab, values = list(info["elements"]), list(info.get("charge_values", [0]))
        symbols = [a.GetSymbol() for a in mol.GetAtoms()]
        missing = sorted({s for s in symbols if s not in vocab})
        if missing:
            raise DataError(f"fragment {p}: element {', '.join(missing)} is not in the model's vocabulary "
                            f"({', '.join(vocab)})")
        bad = sorted({int(q) for q in charges.tolist() if int(q) not in values})
        if bad:
            raise DataError(f"fragment {p}: formal charge {bad[0]:+d} is not among the model's ({values})")
        k = len(symbols)
        n = options.get("num_atoms", k)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserInputError(f"--num-atoms must be a positive whole number, got {n!r}")
        if k > n:
            raise UserInputError(f"the fragment has {k} atoms, more than the requested molecule (--num-atoms {n})")
        self.check_structure([n], batch_size=1)
        pos = torch.zeros(n, 3)
        pos[:k] = torch.as_tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
        atoms = torch.zeros(n, dtype=torch.long)
        atoms[:k] = torch.tensor([vocab.index(s) for s in symbols])
        qidx = torch.full((n,), values.index(0), dtype=torch.long)
        qidx[:k] = torch.tensor([values.index(int(q)) for q in charges.tolist()])
        orders = pair_orders(torch.tensor([n]), torch.as_tensor(bonds, dtype=torch.long),
                             torch.zeros(len(bonds), dtype=torch.long))
        space = bonded_space(torch.zeros(n, dtype=torch.long), 1)
        row, col = space["pos"].pairs()
        known_atoms = torch.zeros(n, dtype=torch.bool)
        known_atoms[:k] = True
        mask = {"pos": known_atoms.unsqueeze(1), "atoms": known_atoms, "charges": known_atoms,
                "bonds": known_atoms[row] & known_atoms[col]}
        x = State({"pos": pos, "atoms": atoms, "charges": qidx, "bonds": orders})
        return Batch(x, space, None, {"elements": vocab}), mask
