"""Molecules with bonds as a mixed state: the data of a bond-generating model (data option ``bonds``).

A batch of ``B`` molecules (``N`` atoms, ``P = sum_g n_g (n_g - 1) / 2`` atom pairs) is a
:class:`~diffuse.core.data.product.State` on a :class:`~diffuse.core.data.product.ProductSpace`:

========== ============= ============================================ ===============================
component  tensor         space                                        meaning
========== ============= ============================================ ===============================
``pos``    float ``[N,3]`` atoms, zero centre of mass per molecule      coordinates (Angstrom)
``atoms``  long ``[N]``    atoms                                        element index (``elements``)
``charges`` long ``[N]``   atoms                                        index into ``charge_values``
``bonds``  long ``[P]``    atom pairs (``GraphSpace.pairs`` order)      0 none, 1 single, 2 double, 3 triple
========== ============= ============================================ ===============================

``data_info`` records ``bonds: true``, the ``charge_values`` (the data's formal charges, 0
included) and, under ``components``, each component's kind, classes and class frequencies (the
``marginal`` prior of a categorical process uses them). Graphs come from ``graphs`` (QM9: its
SMILES on its geometry; SDF: the file's bonds; SMILES: an ETKDG conformer). QM9 and large user
sets are converted once into the cache (``core.data.cache``), with the SMILES of every molecule
under both evaluation protocols (its graph's, and the one EDM's distance rule gives) that novelty
is measured against.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rdkit import Chem
from torch import Tensor

from ...core.data.cache import cached_arrays, file_key
from ...core.data.domain import Batch
from ...core.data.graph import GraphSpace
from ...core.data.product import ProductSpace, State
from ...core.errors import DataError
from .build_bundled_data import PROPERTIES, read_properties
from .dataset import BUNDLED_FILE, QM9_ELEMENTS, FeatureCodec, MoleculeDataset
from .graphs import BOND_ORDERS, GraphError, graph_from_mol, graph_from_smiles, graph_smiles, pair_index, \
    read_bonded_sdf
from .readers import embed_smiles, qm9_split, qm9pack_files, read_qm9pack, report_skipped, RawMolecules

__all__ = ["BondedMoleculeDataset", "load_bonded", "COMPONENTS", "pair_orders"]

log = logging.getLogger(__name__)

#: the components of a molecule with bonds, in the order their processes draw
COMPONENTS = ("pos", "atoms", "charges", "bonds")


def pair_orders(counts: Tensor, bonds: Tensor, bond_mol: Tensor) -> Tensor:
    """Bond orders on every atom pair of a batch (``GraphSpace.pairs`` order): ``counts`` atoms per
    molecule, ``bonds`` ``[M, 3]`` (local ``i < j``, order) of the batch's molecules, ``bond_mol`` the
    batch position of each bond's molecule."""
    npairs = counts * (counts - 1) // 2
    out = torch.zeros(int(npairs.sum()), dtype=torch.long)
    if len(bonds):
        start = torch.cumsum(npairs, 0) - npairs
        n = counts[bond_mol]
        out[start[bond_mol] + pair_index(bonds[:, 0], bonds[:, 1], n)] = bonds[:, 2]
    return out


class BondedMoleculeDataset(MoleculeDataset):
    """Molecules with bonds and charges (see the module docstring). ``bonds`` ``[M, 3]`` local
    ``(i, j, order)`` rows, molecule ``k``'s at ``bond_ptr[k]:bond_ptr[k + 1]``; ``charges`` the
    formal charges themselves."""

    def __init__(self, types, pos, charges, ptr, codec: FeatureCodec, names, bonds, bond_ptr,
                 charge_values: Sequence[int] | None = None, graph_smiles: Sequence[str | None] | None = None,
                 edm_smiles: Sequence[str | None] | None = None) -> None:
        super().__init__(types, pos, charges, ptr, codec, names)
        self.bonds = torch.as_tensor(np.asarray(bonds), dtype=torch.long).reshape(-1, 3)
        self.bond_ptr = torch.as_tensor(np.asarray(bond_ptr), dtype=torch.long)
        values = sorted(set(self.charges.unique().tolist()) | {0}) if charge_values is None else list(charge_values)
        self.charge_values = [int(v) for v in values]
        lookup = {v: i for i, v in enumerate(self.charge_values)}
        bad = sorted(set(self.charges.unique().tolist()) - set(lookup))
        if bad:
            raise DataError(f"formal charge(s) {bad} are not among the model's charge values {self.charge_values}")
        self.charge_index = torch.as_tensor([lookup[int(c)] for c in self.charges.tolist()], dtype=torch.long) \
            if len(self.charges) else torch.zeros(0, dtype=torch.long)
        self._graph_smiles = list(graph_smiles) if graph_smiles is not None else None
        self._edm_smiles = list(edm_smiles) if edm_smiles is not None else None

    # ------------------------------------------------------------------ facts
    def marginals(self) -> dict[str, list[float]]:
        """Class frequencies of the atoms, charges and bond orders (over every atom pair)."""
        k = len(self.codec.elements)
        atoms = torch.bincount(self.types, minlength=k).double()
        charges = torch.bincount(self.charge_index, minlength=len(self.charge_values)).double()
        orders = torch.bincount(self.bonds[:, 2], minlength=len(BOND_ORDERS)).double()
        orders[0] = float((self.counts * (self.counts - 1) // 2).sum()) - float(orders[1:].sum())
        return {name: (v / v.sum().clamp_min(1)).tolist() for name, v in
                (("atoms", atoms), ("charges", charges), ("bonds", orders))}

    def info(self) -> dict[str, Any]:
        info = super().info()
        marg = self.marginals()
        info.update({
            "bonds": True,
            "charge_values": list(self.charge_values),
            "bond_orders": list(BOND_ORDERS),
            "components": {
                "pos": {"kind": "gaussian"},
                "atoms": {"kind": "categorical", "classes": len(self.codec.elements), "marginal": marg["atoms"]},
                "charges": {"kind": "categorical", "classes": len(self.charge_values), "marginal": marg["charges"]},
                "bonds": {"kind": "categorical", "classes": len(BOND_ORDERS), "marginal": marg["bonds"]},
            },
        })
        return info

    def take(self, indices: Tensor) -> "BondedMoleculeDataset":
        """The molecules at ``indices`` as a data set of their own (bonds, charges and both protocols'
        SMILES with them; properties as ``MoleculeDataset.take``)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        nodes, counts = self.node_index(idx)
        rows, nb = self._bond_rows(idx)
        pick = idx.tolist()
        out = BondedMoleculeDataset(
            self.types[nodes].numpy(), self.pos[nodes].double().numpy(), self.charges[nodes].numpy(),
            np.concatenate([[0], np.cumsum(counts.numpy())]), self.codec, [self.names[i] for i in pick],
            self.bonds[rows].numpy(), np.concatenate([[0], np.cumsum(nb.numpy())]), self.charge_values,
            [self._graph_smiles[i] for i in pick] if self._graph_smiles is not None else None,
            [self._edm_smiles[i] for i in pick] if self._edm_smiles is not None else None)
        if self.properties is not None:
            out.with_properties(self.properties[idx].numpy(), self.property_names, self.condition_properties)
            out._property_kind = self._property_kind
        out.bond_rule = self.bond_rule
        return out

    def _bond_rows(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The rows of ``bonds`` of the molecules at ``idx`` (in order) and their counts per molecule."""
        nb = self.bond_ptr[idx + 1] - self.bond_ptr[idx]
        rows = torch.repeat_interleave(self.bond_ptr[idx], nb) + (
            torch.arange(int(nb.sum())) - torch.repeat_interleave(torch.cumsum(nb, 0) - nb, nb))
        return rows, nb

    # ------------------------------------------------------------------ batches
    def molecule_bonds(self, i: int) -> np.ndarray:
        return self.bonds[int(self.bond_ptr[i]):int(self.bond_ptr[i + 1])].numpy()

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        """The molecules at ``indices`` as one mixed state (module docstring). No augmentation: the
        backbone is exactly E(3)-equivariant."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        nodes, counts = self.node_index(idx)
        b = len(counts)
        batch = torch.repeat_interleave(torch.arange(b), counts)
        rows, nb = self._bond_rows(idx)
        orders = pair_orders(counts, self.bonds[rows], torch.repeat_interleave(torch.arange(b), nb))
        x = State({"pos": self.pos[nodes], "atoms": self.types[nodes], "charges": self.charge_index[nodes],
                   "bonds": orders})
        return Batch(x, bonded_space(batch, b), self.condition(idx), {"elements": self.codec.elements})

    # ------------------------------------------------------------------ reference SMILES
    @property
    def member_graph_smiles(self) -> list[str | None]:
        """Per molecule, its graph's SMILES (largest fragment; None when RDKit rejects it)."""
        if self._graph_smiles is None:
            self._graph_smiles = [self._graph_smiles_of(i) for i in range(len(self))]
        return self._graph_smiles

    def _graph_smiles_of(self, i: int) -> str | None:
        a, b = int(self.ptr[i]), int(self.ptr[i + 1])
        symbols = [self.codec.elements[t] for t in self.types[a:b].tolist()]
        return graph_smiles(symbols, self.molecule_bonds(i), self.charges[a:b].numpy())

    @property
    def member_smiles(self) -> list[str | None]:   # EDM's protocol (bonds from distances)
        if self._edm_smiles is None:
            self._edm_smiles = [r.smiles for r in self.reports()]
        return self._edm_smiles

    @property
    def reference_graph_smiles(self) -> set[str]:
        return {s for s in self.member_graph_smiles if s is not None}

    shared_attributes = MoleculeDataset.shared_attributes + ("charge_values",)
    member_attributes = ("reference_smiles", "reference_graph_smiles")

    def member_attribute(self, name: str, indices: Tensor) -> Any:
        """``reference_smiles`` (EDM's protocol) or ``reference_graph_smiles`` of the molecules at ``indices``."""
        source = {"reference_smiles": lambda: self.member_smiles,
                  "reference_graph_smiles": lambda: self.member_graph_smiles}.get(name)
        if source is None:
            raise AttributeError(name)
        smiles = source()
        return {smiles[i] for i in torch.as_tensor(indices, dtype=torch.long).tolist() if smiles[i] is not None}


def bonded_space(batch: Tensor, num: int) -> ProductSpace:
    """The ProductSpace of a batch of molecules with bonds (node batch index ``batch``)."""
    nodes = GraphSpace(batch, num, centred=3)
    return ProductSpace({"pos": nodes, "atoms": GraphSpace(batch, num, centred=0),
                         "charges": GraphSpace(batch, num, centred=0), "bonds": nodes.pair_space()})


# ---------------------------------------------------------------------------- reading
class _Graphs:
    """Molecules with graphs as read: per molecule symbols, coordinates, bonds, charges, name."""

    def __init__(self) -> None:
        self.symbols: list[list[str]] = []
        self.pos: list[np.ndarray] = []
        self.bonds: list[np.ndarray] = []
        self.charges: list[np.ndarray] = []
        self.names: list[str] = []
        self.skipped: list[tuple[str, str]] = []

    def add(self, symbols, pos, bonds, charges, name) -> None:
        self.symbols.append(list(symbols))
        self.pos.append(np.asarray(pos, np.float64).reshape(-1, 3))
        self.bonds.append(np.asarray(bonds, np.int64).reshape(-1, 3))
        self.charges.append(np.asarray(charges, np.int64))
        self.names.append(name)

    def add_mol(self, mol: Chem.Mol, name: str) -> None:
        bonds, charges = graph_from_mol(mol)
        self.add([a.GetSymbol() for a in mol.GetAtoms()], mol.GetConformer().GetPositions(), bonds, charges, name)


def _from_smiles_rows(raw: RawMolecules) -> _Graphs:
    out = _Graphs()
    out.skipped = list(raw.skipped)
    for syms, pos, name in zip(raw.symbols, raw.positions, raw.names):
        parts = name.split()
        try:
            if len(parts) < 3:
                raise GraphError("no SMILES recorded")
            bonds, charges = graph_from_smiles(syms, pos, parts[2])
        except GraphError as exc:
            out.skipped.append((name, str(exc)))
            continue
        out.add(syms, pos, bonds, charges, name)
    return out


def _read_files(path: Path, options: dict[str, Any]) -> _Graphs:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    out = _Graphs()
    for f in files:
        name = f.name.lower()
        if name.endswith((".sdf", ".sdf.gz", ".mol")):
            for rec, mol in read_bonded_sdf(f, bool(options.get("add_hydrogens", True))):
                out.add_mol(mol, rec)
        elif name.endswith((".smi", ".smiles")):
            for k, line in enumerate(f.read_text(errors="replace").splitlines()):
                parts = line.split()
                if not parts or parts[0].startswith("#") or parts[0].lower() == "smiles":
                    continue
                mol = embed_smiles(parts[0], int(options.get("seed", 0)) + k)
                rec = f"{f.name} line {k + 1} ({parts[0]})"
                if isinstance(mol, str):
                    out.skipped.append((rec, mol))
                else:
                    out.add_mol(mol, rec)
        elif name.endswith(".xyz"):
            raise DataError(f"{f}: XYZ files hold no bonds; a bond-generating model needs SDF or SMILES files "
                            "(or qm9)")
        elif path.is_file():
            raise DataError(f"{f}: unsupported molecule file for a bond-generating model; expected .sdf, "
                            ".sdf.gz, .mol, .smi or .smiles")
    if not out.names and not out.skipped:
        raise DataError(f"{path}: no molecules (expected SDF or SMILES files)")
    return out


def _dataset(graphs: _Graphs, source: str, options: dict[str, Any]) -> BondedMoleculeDataset:
    table = Chem.GetPeriodicTable()
    vocab = options.get("elements")
    if vocab is None:
        vocab = sorted({s for syms in graphs.symbols for s in syms}, key=table.GetAtomicNumber)
    index = {s: i for i, s in enumerate(vocab)}
    max_atoms = options.get("max_atoms")
    keep, skipped = [], list(graphs.skipped)
    for k, (syms, name) in enumerate(zip(graphs.symbols, graphs.names)):
        unknown = sorted({s for s in syms if s not in index})
        if unknown:
            skipped.append((name, f"element {', '.join(unknown)} not in the vocabulary {list(vocab)}"))
        elif max_atoms is not None and len(syms) > int(max_atoms):
            skipped.append((name, f"more than max_atoms={max_atoms} atoms"))
        else:
            keep.append(k)
    report_skipped(source, RawMolecules(skipped=skipped), len(graphs.names) + len(graphs.skipped))
    if not keep:
        first = skipped[0] if skipped else (source, "no molecules")
        raise DataError(f"{source}: no usable molecules ({len(skipped)} skipped; first: {first[0]}: {first[1]})")
    types = np.concatenate([[index[s] for s in graphs.symbols[k]] for k in keep]).astype(np.int64)
    pos = np.concatenate([graphs.pos[k] for k in keep])
    charges = np.concatenate([graphs.charges[k] for k in keep])
    ptr = np.concatenate([[0], np.cumsum([len(graphs.symbols[k]) for k in keep])])
    bonds = np.concatenate([graphs.bonds[k] for k in keep]) if keep else np.zeros((0, 3), np.int64)
    bond_ptr = np.concatenate([[0], np.cumsum([len(graphs.bonds[k]) for k in keep])])
    codec = FeatureCodec(vocab, False, options.get("onehot_scale", 0.25), options.get("charge_scale", 0.1))
    ds = BondedMoleculeDataset(types, pos, charges, ptr, codec, [graphs.names[k] for k in keep], bonds, bond_ptr)
    ds.skipped = skipped
    ds.kept = keep
    return ds


def _cached(key_files: list[Path], options: dict[str, Any], source: str, build) -> BondedMoleculeDataset:
    """``build()`` converted once into the cache (arrays, names and both protocols' SMILES), then memory-mapped."""
    key = file_key(key_files, kind="bonded-molecules-v1", **{k: options[k] for k in sorted(options)})
    fresh: list[BondedMoleculeDataset] = []

    def convert():
        ds = build()
        fresh.append(ds)
        arrays = {"types": ds.types.numpy(), "pos": ds.pos.numpy(), "charges": ds.charges.numpy(),
                  "ptr": ds.ptr.numpy(), "bonds": ds.bonds.numpy(), "bond_ptr": ds.bond_ptr.numpy()}
        if ds.properties is not None:
            arrays["properties"] = ds.properties.numpy()
        return arrays, {"names": ds.names, "skipped": [list(x) for x in ds.skipped],
                        "elements": list(ds.codec.elements), "charge_values": ds.charge_values,
                        "graph_smiles": ds.member_graph_smiles, "edm_smiles": ds.member_smiles,
                        "property_names": ds.property_names, "condition_properties": ds.condition_properties}

    arrays, meta, _ = cached_arrays("molecules", key, convert)
    if fresh:
        return fresh[0]
    arrays = {k: np.array(v) for k, v in arrays.items()}      # small enough to hold; writable for torch
    codec = FeatureCodec(meta["elements"], False, options.get("onehot_scale", 0.25), options.get("charge_scale", 0.1))
    ds = BondedMoleculeDataset(np.asarray(arrays["types"]), np.asarray(arrays["pos"]), np.asarray(arrays["charges"]),
                               np.asarray(arrays["ptr"]), codec, meta["names"], np.asarray(arrays["bonds"]),
                               np.asarray(arrays["bond_ptr"]), meta["charge_values"], meta["graph_smiles"],
                               meta["edm_smiles"])
    ds.skipped = [tuple(x) for x in meta["skipped"]]
    if "properties" in arrays:
        ds.with_properties(np.asarray(arrays["properties"]), meta["property_names"], meta["condition_properties"])
    log.info("%s: %d molecules with bonds from the cache (%d records were skipped when converted)", source, len(ds),
             len(ds.skipped))
    return ds


def _load_bundled_graphs() -> tuple[_Graphs, np.ndarray, list[str] | None]:
    if not BUNDLED_FILE.is_file():
        raise DataError(f"{BUNDLED_FILE}: the bundled molecule data is missing from this installation")
    table = Chem.GetPeriodicTable()
    with np.load(BUNDLED_FILE, allow_pickle=False) as f:
        if "bonds" not in f.files:
            raise DataError(f"{BUNDLED_FILE} holds no bonds; rebuild it with build_bundled_data --bonds")
        z, pos, ptr, bonds, bptr, charges = (f[k] for k in ("z", "pos", "ptr", "bonds", "bond_ptr", "formal_charge"))
        idx, smiles = f["qm9_index"], f["smiles"]
        props = (f["properties"], [str(n) for n in f["property_names"]]) if "properties" in f.files else None
    out = _Graphs()
    for i in range(len(ptr) - 1):
        a, b = int(ptr[i]), int(ptr[i + 1])
        out.add([table.GetElementSymbol(int(k)) for k in z[a:b]], pos[a:b].astype(np.float64),
                bonds[int(bptr[i]):int(bptr[i + 1])].astype(np.int64), charges[a:b].astype(np.int64),
                f"QM9 {int(idx[i])} {smiles[i]}")
    return out, idx, props


def load_bonded(path: str | Path | None, options: dict[str, Any]) -> BondedMoleculeDataset:
    """Molecules with bonds: the bundled QM9 subset (``None``), ``qm9`` (qm9pack, EDM's split) or SDF /
    SMILES files and folders (see the module docstring)."""
    opts = dict(options)
    wanted = list(opts.get("properties") or [])
    if path is None:
        if opts.get("elements") is None:
            opts["elements"] = QM9_ELEMENTS
        graphs, _, props = _load_bundled_graphs()
        ds = _dataset(graphs, str(BUNDLED_FILE), opts)
        if props is not None:
            ds.with_properties(np.asarray(props[0])[ds.kept], props[1], wanted)
        elif wanted:
            raise DataError("the bundled molecules carry no properties")
        return ds
    if str(path).lower() in ("qm9", "qm9pack"):
        if opts.get("elements") is None:
            opts["elements"] = QM9_ELEMENTS

        def build() -> BondedMoleculeDataset:
            raw, _ = read_qm9pack()
            keep = qm9_split(len(raw), str(opts.get("split", "train")), int(opts.get("split_seed", 0)))
            part = RawMolecules(skipped=raw.skipped)
            for i in keep.tolist():
                part.add(raw.symbols[i], raw.positions[i], raw.charges[i], raw.names[i])
            graphs = _from_smiles_rows(part)
            ds = _dataset(graphs, "qm9", opts)
            if wanted:
                index = np.array([int(graphs.names[k].split()[1]) for k in ds.kept], np.int64)
                ds.with_properties(read_properties(index), list(PROPERTIES), wanted)
            return ds
        return _cached(qm9pack_files(), opts, "qm9", build)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (expected SDF / SMILES files, or 'qm9')")
    if wanted:
        raise DataError(f"{p}: this molecule data carries no properties, so it cannot condition on "
                        f"{', '.join(wanted)} (the bundled QM9 subset and --data qm9 carry them)")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return _cached(files, opts, str(p), lambda: _dataset(_read_files(p, opts), str(p), opts))
