"""Chemistry of generated 3-D molecules: bonds from distances, stability, RDKit validity.

The definitions follow EDM (Hoogeboom et al. 2022, "Equivariant Diffusion for Molecule
Generation in 3D", sec. 5 and appendix; its ``qm9/bond_analyze.py`` and ``qm9/analyze.py``) so
that figures compare with the papers:

* a bond between atoms ``a, b`` at distance ``d`` (in pm) exists when ``d < L1(a, b) + 10``;
  it is double when also ``d < L2(a, b) + 5`` and triple when also ``d < L3(a, b) + 3``, where
  ``L1 / L2 / L3`` are typical single / double / triple bond lengths (tables below, from
  wiredchemist.com and chemistry-reference.com as cited by EDM); pairs without a typical
  length never bond;
* an atom is *stable* when the sum of its bond orders equals its element's allowed valence
  (``ALLOWED_VALENCE``), a molecule when all its atoms are;
* a molecule is *valid* when RDKit sanitizes the molecule built from these bonds; its SMILES
  is that of the largest fragment (EDM's validity, so a cloud of fragments whose largest piece is
  one F atom counts as valid); *valid and connected* also asks for one fragment; uniqueness is
  among valid molecules, novelty among the unique ones against the training molecules' SMILES.

Two bond rules, as EDM's two evaluations (``BOND_RULES``; a table says which it used):

* ``qm9`` (EDM's QM9 evaluation): the tables are read in either order of the pair (over
  H, C, N, O, F they are symmetric, so this is EDM's lookup exactly), and RDKit judges the
  molecule with the inferred single / double / triple bonds;
* ``geom`` (EDM's GEOM-Drugs evaluation, for drug-like elements S, Cl, Br, P, I...): the pair is
  ordered by atomic number (EDM's GEOM atom decoder order) and each table is read only in that
  direction, a pair absent from the single-bond table never bonding (``check_exists``); so
  asymmetric entries count as EDM counts them: C=S is listed under C only and the pair is read
  as (C, S), so C=S can be double; P=S is listed under P only, read as (P, S). (Every one-sided
  entry of EDM's tables sits under the lighter element, so both rules find the same
  thresholds; ``tests/test_molecules_metrics.py`` checks this against EDM's lookup.)
  Stability uses these bond orders, while the molecule given to RDKit for validity has single
  bonds only (``limit_bonds_to_one``), so aromatic rings and their Kekule structures do not
  decide validity.

``bond_rule(elements)`` picks ``qm9`` for data within H, C, N, O, F and ``geom`` otherwise.

The tables are facts re-typed as data; bond lengths are in picometres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Geometry import Point3D
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from ...core.errors import UserInputError

__all__ = ["BOND_RULES", "bond_rule", "BOND_LENGTHS_SINGLE", "BOND_LENGTHS_DOUBLE", "BOND_LENGTHS_TRIPLE", "MARGINS", "ALLOWED_VALENCE",
           "BondTables", "MoleculeReport", "analyze_molecule", "build_rdkit_mol", "validity_table",
           "smiles_of"]

# Typical single-bond lengths (pm), EDM's table (symmetric; one row per element).
BOND_LENGTHS_SINGLE: dict[str, dict[str, int]] = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92, "B": 119, "Si": 148, "P": 144, "As": 152, "S": 134,
          "Cl": 127, "Br": 141, "I": 161},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135, "Si": 185, "P": 184, "S": 182, "Cl": 177, "Br": 194,
          "I": 214},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136, "Cl": 175, "Br": 214, "S": 168, "I": 222, "P": 177},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142, "Br": 172, "S": 151, "P": 163, "Si": 163, "Cl": 164,
          "I": 194},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142, "S": 158, "Si": 160, "Cl": 166, "Br": 178, "P": 156,
          "I": 187},
    "B": {"H": 119, "Cl": 175},
    "Si": {"Si": 233, "H": 148, "C": 185, "O": 163, "S": 200, "F": 160, "Cl": 202, "Br": 215, "I": 243},
    "Cl": {"Cl": 199, "H": 127, "C": 177, "N": 175, "O": 164, "P": 203, "S": 207, "B": 175, "Si": 202, "F": 166,
           "Br": 214},
    "S": {"H": 134, "C": 182, "N": 168, "O": 151, "S": 204, "F": 158, "Cl": 207, "Br": 225, "Si": 200, "P": 210,
          "I": 234},
    "Br": {"Br": 228, "H": 141, "C": 194, "O": 172, "N": 214, "Si": 215, "S": 225, "F": 178, "Cl": 214, "P": 222},
    "P": {"P": 221, "H": 144, "C": 184, "O": 163, "Cl": 203, "S": 210, "F": 156, "N": 177, "Br": 222},
    "I": {"H": 161, "C": 214, "Si": 243, "N": 222, "O": 194, "S": 234, "F": 187, "I": 266},
    "As": {"H": 152},
}
# Typical double-bond lengths (pm).
BOND_LENGTHS_DOUBLE: dict[str, dict[str, int]] = {
    "C": {"C": 134, "N": 129, "O": 120, "S": 160},
    "N": {"C": 129, "N": 125, "O": 121},
    "O": {"C": 120, "N": 121, "O": 121, "P": 150},
    "P": {"O": 150, "S": 186},
    "S": {"P": 186},   # EDM's table: C=S is listed under C only (see the bond rules above)
}
# Typical triple-bond lengths (pm).
BOND_LENGTHS_TRIPLE: dict[str, dict[str, int]] = {
    "C": {"C": 120, "N": 116, "O": 113},
    "N": {"C": 116, "N": 110},
    "O": {"C": 113},
}
#: margins (pm) added to the single / double / triple lengths, tuned by EDM on QM9.
MARGINS = (10.0, 5.0, 3.0)
#: allowed sum of bond orders per element (EDM's ``allowed_bonds``).
ALLOWED_VALENCE: dict[str, tuple[int, ...]] = {
    "H": (1,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "B": (3,), "Al": (3,), "Si": (4,), "P": (3, 5),
    "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,), "Hg": (1, 2), "Bi": (3, 5),
}

_BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


#: EDM's two evaluation rules (module docstring): QM9's, and GEOM-Drugs' for drug-like elements
BOND_RULES = ("qm9", "geom")
_QM9_ELEMENTS = frozenset(("H", "C", "N", "O", "F"))


def bond_rule(elements: Sequence[str], rule: str | None = "auto") -> str:
    """The bond rule for a vocabulary: ``rule`` when given, else ``qm9`` for elements within
    H, C, N, O, F and ``geom`` (EDM's GEOM-Drugs evaluation) otherwise."""
    if rule in (None, "auto"):
        return "qm9" if set(elements) <= _QM9_ELEMENTS else "geom"
    if rule not in BOND_RULES:
        raise UserInputError(f"unknown bond rule {rule!r}; expected auto, {' or '.join(BOND_RULES)}")
    return str(rule)


def _lookup(table: dict[str, dict[str, int]], a: str, b: str, either_order: bool = True) -> float:
    v = table.get(a, {}).get(b)
    if v is None and either_order:
        v = table.get(b, {}).get(a)
    return float(v) if v is not None else -np.inf


def _atomic_number(symbol: str) -> int:
    return Chem.GetPeriodicTable().GetAtomicNumber(symbol)


class BondTables:
    """Bond-length thresholds as ``[K, K]`` matrices over an element vocabulary (in Angstrom),
    read by one of ``BOND_RULES`` (``qm9``: either order; ``geom``: the pair ordered by atomic
    number, each table in that direction only)."""

    def __init__(self, elements: Sequence[str], margins: tuple[float, float, float] = MARGINS,
                 rule: str | None = "auto") -> None:
        self.elements = list(elements)
        self.rule = bond_rule(self.elements, rule)
        k = len(self.elements)
        self.thresholds = np.full((3, k, k), -np.inf)
        z = [_atomic_number(e) for e in self.elements]
        geom = self.rule == "geom"
        for t, (table, margin) in enumerate(zip((BOND_LENGTHS_SINGLE, BOND_LENGTHS_DOUBLE, BOND_LENGTHS_TRIPLE),
                                                margins)):
            for i, a in enumerate(self.elements):
                for j, b in enumerate(self.elements):
                    first, second = (a, b) if not geom or z[i] <= z[j] else (b, a)
                    self.thresholds[t, i, j] = (_lookup(table, first, second, not geom) + margin) / 100.0
        self.valences = [ALLOWED_VALENCE.get(e, ()) for e in self.elements]

    def validity_orders(self, orders: np.ndarray) -> np.ndarray:
        """The bond orders RDKit judges: as inferred (``qm9``), or every bond single (``geom``)."""
        return np.minimum(orders, 1) if self.rule == "geom" else orders

    def bond_orders(self, pos: np.ndarray, types: np.ndarray) -> np.ndarray:
        """Symmetric ``[n, n]`` integer bond orders (0 = no bond) inferred from distances."""
        pos = np.asarray(pos, dtype=np.float64)
        d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
        t1, t2, t3 = (self.thresholds[k][types[:, None], types[None, :]] for k in range(3))
        order = (d < t1).astype(np.int64) * (1 + (d < t2) * (1 + (d < t3).astype(np.int64)))
        np.fill_diagonal(order, 0)
        return order


@dataclass
class MoleculeReport:
    """Per-molecule analysis."""

    num_atoms: int
    stable_atoms: int
    stable: bool
    connected: bool
    smiles: str | None                     # largest fragment, when valid
    bonds: np.ndarray = field(repr=False)  # [n, n] orders

    @property
    def valid(self) -> bool:
        return self.smiles is not None


def build_rdkit_mol(symbols: Sequence[str], pos: np.ndarray | None, orders: np.ndarray,
                    charges: Sequence[int] | None = None) -> Chem.RWMol:
    """An unsanitized RDKit molecule with the given atoms, bonds (upper triangle of ``orders``)
    and, when ``pos`` is given, a 3-D conformer."""
    mol = Chem.RWMol()
    for k, s in enumerate(symbols):
        atom = Chem.Atom(s)
        if charges is not None and int(charges[k]) != 0:
            atom.SetFormalCharge(int(charges[k]))
        mol.AddAtom(atom)
    ii, jj = np.nonzero(np.triu(orders, 1))
    for i, j in zip(ii.tolist(), jj.tolist()):
        mol.AddBond(i, j, _BOND_TYPES.get(int(orders[i, j]), Chem.BondType.SINGLE))
    if pos is not None:
        conf = Chem.Conformer(len(symbols))
        for k, p in enumerate(np.asarray(pos, dtype=np.float64)):
            conf.SetAtomPosition(k, Point3D(float(p[0]), float(p[1]), float(p[2])))
        conf.Set3D(True)
        mol.AddConformer(conf, assignId=True)
    return mol


def smiles_of(mol: Chem.Mol) -> str | None:
    """EDM's validity: sanitize; ``None`` when RDKit rejects it, else the largest fragment's SMILES."""
    mol = Chem.Mol(mol)
    with rdBase.BlockLogs():   # silent here; the caller's RDKit log settings are restored after
        try:
            Chem.SanitizeMol(mol)
            frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
            largest = max(frags, default=mol, key=lambda m: m.GetNumAtoms())
            return Chem.MolToSmiles(largest)
        except Exception:  # RDKit raises several exception types for bad valences / kekulization
            return None


def analyze_molecule(pos: np.ndarray, types: np.ndarray, tables: BondTables,
                     charges: Sequence[int] | None = None) -> MoleculeReport:
    """Bonds, atom / molecule stability, connectivity and validity of one molecule."""
    types = np.asarray(types, dtype=np.int64)
    n = len(types)
    orders = tables.bond_orders(pos, types)
    valence = orders.sum(1)
    stable_atoms = sum(int(v in tables.valences[t]) for v, t in zip(valence.tolist(), types.tolist()))
    if n:
        n_comp, _ = connected_components(csr_matrix(orders > 0), directed=False)
    else:
        n_comp = 0
    symbols = [tables.elements[t] for t in types.tolist()]
    smiles = smiles_of(build_rdkit_mol(symbols, None, tables.validity_orders(orders), charges)) if n else None
    return MoleculeReport(n, stable_atoms, stable_atoms == n and n > 0, n_comp == 1, smiles, orders)


def validity_table(reports: Iterable[MoleculeReport], reference_smiles: set[str] | None = None) -> dict[str, float]:
    """The molecule metrics, led by what a chemist would trust:

    ``valid_connected`` (RDKit-valid and one fragment), ``mol_stability``, ``atom_stability``
    (EDM's), then ``validity`` (EDM's: the largest fragment is RDKit-valid), ``uniqueness``
    (among valid), ``valid_unique``, ``novelty`` (among unique valid, against
    ``reference_smiles``, the training molecules; only when given), ``connected`` (one fragment,
    valid or not) and ``num_molecules``."""
    reports = list(reports)
    n_mol = len(reports)
    n_atoms = sum(r.num_atoms for r in reports)
    valid = [r.smiles for r in reports if r.valid]
    unique = set(valid)
    out = {
        "valid_connected": sum(r.valid and r.connected for r in reports) / max(n_mol, 1),
        "mol_stability": sum(r.stable for r in reports) / max(n_mol, 1),
        "atom_stability": sum(r.stable_atoms for r in reports) / max(n_atoms, 1),
        "validity": len(valid) / max(n_mol, 1),
        "uniqueness": len(unique) / len(valid) if valid else 0.0,
        "valid_unique": len(unique) / max(n_mol, 1),
    }
    if reference_smiles is not None:
        out["novelty"] = len(unique - reference_smiles) / len(unique) if unique else 0.0
    out["connected"] = sum(r.connected for r in reports) / max(n_mol, 1)
    out["num_molecules"] = float(n_mol)
    return out
