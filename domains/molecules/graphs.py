"""Molecular graphs for bond-generating models: bonds and formal charges of 3-D molecules.

Every molecule becomes its atoms (elements, coordinates), formal charges and the Kekule bond
orders of its bonds (1 single, 2 double, 3 triple; 0 for every other pair of atoms), with all
hydrogens explicit:

* QM9 (qm9pack's rows, the bundled subset): the molecule's SMILES gives the graph and the
  geometry the atoms (:func:`graph_from_smiles`). The SMILES graph (hydrogens added, kekulized) is
  matched onto the atoms by element through RDKit's substructure search on the geometry's
  covalent connectivity (``rdDetermineBonds.DetermineConnectivity``), so a strained cage whose
  distance-based connectivity has an extra bond still maps; among several matches (symmetric
  hydrogens) the one with the shortest bonds is taken. Bond orders and charges are the SMILES's.
* SDF files: the bonds and charges the file holds (:func:`graph_from_mol`), kekulized; a
  record whose bonds RDKit rejects (a bad valence, an aromatic ring that cannot be kekulized) is
  a :class:`~diffuse.core.errors.DataError` naming it and RDKit's reason.
* SMILES files: the SMILES's graph with an ETKDG conformer (``readers.embed_smiles``).

XYZ files hold no bonds, so they cannot train a bond-generating model.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import rdDetermineBonds
from rdkit.Geometry import Point3D

from ...core.errors import DataError

__all__ = ["graph_from_smiles", "graph_from_mol", "GraphError", "BOND_ORDERS", "read_bonded_sdf",
           "pair_index", "graph_smiles"]

#: bond classes: no bond, single, double, triple (Kekule structures, so no aromatic class)
BOND_ORDERS = (0, 1, 2, 3)
_ORDER = {Chem.BondType.SINGLE: 1, Chem.BondType.DOUBLE: 2, Chem.BondType.TRIPLE: 3}
_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}


class GraphError(ValueError):
    """Why a molecule's graph could not be built (a reason for the skipped-records summary)."""


def _bonds_of(mol: Chem.Mol) -> np.ndarray:
    out = []
    for b in mol.GetBonds():
        order = _ORDER.get(b.GetBondType())
        if order is None:
            raise GraphError(f"bond {b.GetBeginAtomIdx() + 1}-{b.GetEndAtomIdx() + 1} is "
                             f"{str(b.GetBondType()).lower()} (expected single, double or triple after kekulization)")
        i, j = sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
        out.append((i, j, order))
    return np.array(out, np.int64).reshape(-1, 3)


def _geometry_mol(symbols: list[str], pos: np.ndarray) -> Chem.RWMol:
    mol = Chem.RWMol()
    for s in symbols:
        mol.AddAtom(Chem.Atom(s))
    conf = Chem.Conformer(len(symbols))
    for k, p in enumerate(np.asarray(pos, dtype=np.float64)):
        conf.SetAtomPosition(k, Point3D(float(p[0]), float(p[1]), float(p[2])))
    mol.AddConformer(conf, assignId=True)
    return mol


def graph_from_smiles(symbols: list[str], pos: np.ndarray, smiles: str) -> tuple[np.ndarray, np.ndarray]:
    """``(bonds [M, 3] as (i, j, order) with i < j, charges [n])`` of the atoms ``symbols`` at ``pos``
    whose molecule is ``smiles`` (module docstring); a :class:`GraphError` with the reason otherwise."""
    with rdBase.BlockLogs():
        tmpl = Chem.MolFromSmiles(smiles)
        if tmpl is None:
            raise GraphError(f"RDKit cannot parse the SMILES {smiles!r}")
        tmpl = Chem.AddHs(tmpl)
        try:
            Chem.Kekulize(tmpl, clearAromaticFlags=True)
        except Exception as exc:  # noqa: BLE001 - RDKit raises several kinds
            raise GraphError(f"the SMILES {smiles!r} cannot be kekulized ({exc})") from None
        if tmpl.GetNumAtoms() != len(symbols):
            raise GraphError(f"the SMILES {smiles!r} has {tmpl.GetNumAtoms()} atoms with hydrogens, the geometry "
                             f"{len(symbols)}")
        geo = _geometry_mol(list(symbols), pos)
        try:
            rdDetermineBonds.DetermineConnectivity(geo)
        except Exception as exc:  # noqa: BLE001
            raise GraphError(f"no connectivity from the geometry ({exc})") from None
        fast = _same_graph(tmpl, geo)
        if fast is not None:
            return fast
        query = Chem.RWMol(tmpl)
        for b in query.GetBonds():
            b.SetBondType(Chem.BondType.SINGLE)
            b.SetIsAromatic(False)
        for a in query.GetAtoms():
            a.SetIsAromatic(False)
            a.SetFormalCharge(0)
            a.SetNoImplicit(True)
        geo.UpdatePropertyCache(strict=False)
        query.UpdatePropertyCache(strict=False)
        matches = geo.GetSubstructMatches(query, uniquify=False, useChirality=False, maxMatches=256)
    if not matches:
        raise GraphError(f"the SMILES {smiles!r} does not match the geometry's connectivity")
    p = np.asarray(pos, dtype=np.float64)
    ends = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in tmpl.GetBonds()], np.int64).reshape(-1, 2)
    best = min(matches, key=lambda m: float(np.linalg.norm(p[np.asarray(m)[ends[:, 0]]] - p[np.asarray(m)[ends[:, 1]]],
                                                          axis=1).sum()) if len(ends) else 0.0)
    mapping = np.asarray(best)                               # template atom -> geometry atom
    charges = np.zeros(len(symbols), np.int64)
    for a in tmpl.GetAtoms():
        charges[mapping[a.GetIdx()]] = a.GetFormalCharge()
    bonds = _bonds_of(tmpl)
    if len(bonds):
        ij = np.sort(mapping[bonds[:, :2]], axis=1)
        bonds = np.concatenate([ij, bonds[:, 2:]], 1)
    return bonds[np.lexsort((bonds[:, 1], bonds[:, 0]))] if len(bonds) else bonds, charges


def _same_graph(tmpl: Chem.Mol, geo: Chem.Mol) -> tuple[np.ndarray, np.ndarray] | None:
    """The quick case: the geometry's connectivity is the SMILES graph itself (RDKit's
    ``AssignBondOrdersFromTemplate``); ``None`` when it is not (then the substructure search decides)."""
    from rdkit.Chem import AllChem

    if geo.GetNumBonds() != tmpl.GetNumBonds():
        return None
    try:
        mol = AllChem.AssignBondOrdersFromTemplate(tmpl, geo)
        Chem.SanitizeMol(mol)
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:  # noqa: BLE001 - no match, or RDKit rejects the result
        return None
    return graph_from_mol(mol)


def graph_from_mol(mol: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """``(bonds [M, 3], charges [n])`` of an RDKit molecule as read (its own bonds), sanitized and
    kekulized; a :class:`GraphError` with RDKit's reason when it rejects them."""
    mol = Chem.Mol(mol)
    with rdBase.BlockLogs():
        try:
            Chem.SanitizeMol(mol)
            Chem.Kekulize(mol, clearAromaticFlags=True)
        except Exception as exc:  # noqa: BLE001 - RDKit raises several kinds
            raise GraphError(f"RDKit rejects its bonds ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                             ) from None
    charges = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], np.int64)
    bonds = _bonds_of(mol)
    return bonds[np.lexsort((bonds[:, 1], bonds[:, 0]))] if len(bonds) else bonds, charges


def read_bonded_sdf(path: Path, add_hydrogens: bool = True) -> Iterator[tuple[str, Chem.Mol]]:
    """The records of an SDF file as RDKit molecules with their own bonds (``removeHs=False``;
    implicit hydrogens made explicit with coordinates when ``add_hydrogens``). A record whose
    bonds RDKit rejects is a DataError naming the file, the record and the reason."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh, rdBase.BlockLogs():
            for k, mol in enumerate(Chem.ForwardSDMolSupplier(fh, removeHs=False, sanitize=False)):
                rec = f"{path.name} record {k + 1}"
                if mol is None:
                    raise DataError(f"{rec}: RDKit cannot parse the record")
                if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
                    rec += f" ({mol.GetProp('_Name').strip()})"
                try:
                    graph_from_mol(mol)
                except GraphError as exc:
                    raise DataError(f"{rec}: {exc}") from None
                if mol.GetNumConformers() == 0:
                    raise DataError(f"{rec}: no coordinates (a bond-generating model needs 3-D molecules)")
                if add_hydrogens:
                    fixed = Chem.Mol(mol)
                    Chem.SanitizeMol(fixed)
                    if any(a.GetNumImplicitHs() for a in fixed.GetAtoms()):
                        mol = Chem.AddHs(fixed, addCoords=True)
                yield rec, mol
    except OSError as exc:
        raise DataError(f"{path}: cannot read the SDF file ({exc})") from None


def pair_index(i: np.ndarray | int, j: np.ndarray | int, n: np.ndarray | int):
    """The position of the pair ``(i, j)``, ``i < j``, among the ``n (n - 1) / 2`` pairs of an
    ``n``-atom molecule in row-major order (``GraphSpace.pairs``' canonical order)."""
    return i * n - (i * (i + 1)) // 2 + (j - i - 1)


def graph_smiles(symbols: list[str], bonds: np.ndarray, charges: np.ndarray, largest: bool = True) -> str | None:
    """The canonical SMILES of a graph (its largest fragment with ``largest``; hydrogens implicit in
    the string), or ``None`` when RDKit does not sanitize it."""
    mol = Chem.RWMol()
    for s, q in zip(symbols, np.asarray(charges).tolist()):
        atom = Chem.Atom(s)
        atom.SetFormalCharge(int(q))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    for i, j, o in np.asarray(bonds).reshape(-1, 3).tolist():
        if o > 0:
            mol.AddBond(int(i), int(j), _TYPES.get(int(o), Chem.BondType.SINGLE))
    with rdBase.BlockLogs():
        try:
            m = mol.GetMol()
            Chem.SanitizeMol(m)
            if largest:
                frags = Chem.GetMolFrags(m, asMols=True, sanitizeFrags=False)
                m = max(frags, default=m, key=lambda f: f.GetNumAtoms())
            return Chem.MolToSmiles(Chem.RemoveHs(m))
        except Exception:  # noqa: BLE001 - RDKit raises several kinds for bad valences / kekulization
            return None
