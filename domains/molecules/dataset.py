"""Molecules as a flat, PyG-style dataset and the model-space tensor they become.

A batch of ``B`` molecules with ``N`` atoms in total is ``x[N, 3 + K (+ 1)]``: positions
(Angstrom, zero centre of mass per molecule), then the one-hot element over a vocabulary of
``K`` elements times ``onehot_scale`` (EDM: 1/4), then optionally the formal charge times
``charge_scale`` (EDM: 1/10); a :class:`~diffuse.core.data.graph.GraphSpace` carries the batch index.

User files are converted once (reading, RDKit conformers for SMILES, the vocabulary, centring)
into the on-disk cache (``core.data.cache``, keyed by the files' paths, mtimes and sizes and the data
options) and memory-mapped afterwards (:func:`cached_dataset`): a large set is neither converted
again nor held in memory.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rdkit import Chem
from torch import Tensor

from ...core.data.cache import cached_arrays, file_key
from ...core.data.condition import Condition, VectorKind
from ...core.data.domain import Batch, DomainDataset
from ...core.errors import DataError
from ...core.data.graph import GraphSpace

from .chem import BondTables, analyze_molecule, bond_rule
from .readers import RawMolecules, report_skipped

__all__ = ["MoleculeDataset", "FeatureCodec", "QM9_ELEMENTS", "BUNDLED_FILE", "load_bundled", "cached_dataset"]

log = logging.getLogger(__name__)

#: EDM's QM9 vocabulary (with hydrogens).
QM9_ELEMENTS = ["H", "C", "N", "O", "F"]
BUNDLED_FILE = Path(__file__).with_name("data") / "qm9_subset.npz"


class FeatureCodec:
    """Maps (positions, element indices, charges) to model space ``x`` and back."""

    def __init__(self, elements: Sequence[str], include_charges: bool = False, onehot_scale: float = 0.25,
                 charge_scale: float = 0.1) -> None:
        self.elements = list(elements)
        self.include_charges = bool(include_charges)
        self.onehot_scale = float(onehot_scale)
        self.charge_scale = float(charge_scale)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "FeatureCodec":
        return cls(info["elements"], info.get("include_charges", False), info.get("onehot_scale", 0.25),
                   info.get("charge_scale", 0.1))

    @property
    def num_features(self) -> int:
        """Channels after the 3 coordinates."""
        return len(self.elements) + int(self.include_charges)

    def encode(self, pos: Tensor, types: Tensor, charges: Tensor | None = None) -> Tensor:
        onehot = torch.nn.functional.one_hot(types, len(self.elements)).to(pos.dtype) * self.onehot_scale
        parts = [pos, onehot]
        if self.include_charges:
            c = charges if charges is not None else torch.zeros_like(types)
            parts.append(c.to(pos.dtype).unsqueeze(1) * self.charge_scale)
        return torch.cat(parts, 1)

    def decode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(positions, element index = argmax of the one-hot, rounded formal charges)``."""
        k = len(self.elements)
        pos = x[:, :3]
        types = x[:, 3:3 + k].argmax(1)
        if self.include_charges:
            charges = torch.round(x[:, 3 + k] / self.charge_scale).long()
        else:
            charges = torch.zeros_like(types)
        return pos, types, charges


def split_batch(samples: Batch, info: dict[str, Any]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per molecule ``(positions [n, 3], element indices [n], charges [n])`` as numpy arrays."""
    space: GraphSpace = samples.space
    pos, types, charges = FeatureCodec.from_info(info).decode(samples.x.detach().float().cpu())
    batch = space.batch.cpu()
    order = torch.argsort(batch, stable=True)
    counts = space.counts.cpu().tolist()
    pos, types, charges = pos[order].numpy(), types[order].numpy(), charges[order].numpy()
    out, start = [], 0
    for n in counts:
        out.append((pos[start:start + n].astype(np.float64), types[start:start + n], charges[start:start + n]))
        start += n
    return out


class MoleculeDataset(DomainDataset):
    """Molecules stored flat: ``types[N_total]``, ``pos[N_total, 3]``, ``ptr[M + 1]``."""

    def __init__(self, types: np.ndarray, pos: np.ndarray, charges: np.ndarray, ptr: np.ndarray,
                 codec: FeatureCodec, names: Sequence[str] | None = None) -> None:
        self.codec = codec
        self.types = torch.as_tensor(np.asarray(types), dtype=torch.long)
        self.charges = torch.as_tensor(np.asarray(charges), dtype=torch.long)
        self.ptr = torch.as_tensor(np.asarray(ptr), dtype=torch.long)
        self.counts = self.ptr[1:] - self.ptr[:-1]
        batch = torch.repeat_interleave(torch.arange(len(self.counts)), self.counts)
        pos = torch.as_tensor(np.asarray(pos), dtype=torch.float64)
        # zero centre of mass per molecule, computed in float64 then stored as float32
        self.pos = GraphSpace(batch, len(self.counts)).project(pos).to(torch.float32)
        self.names = list(names) if names is not None else [f"molecule {i}" for i in range(len(self.counts))]
        self.skipped: list[tuple[str, str]] = []
        # --- property conditions (props helper) ---
        #: per-molecule properties ``float64 [M, P]`` (columns ``property_names``), or None
        self.properties: Tensor | None = None
        self.property_names: list[str] = []
        #: the properties batches carry as the ``property`` condition (``[]``: unconditional)
        self.condition_properties: list[str] = []
        #: EDM's bond rule for this vocabulary (``chem.BOND_RULES``), recorded in ``info()``
        self.bond_rule = bond_rule(codec.elements)

    def with_properties(self, values: np.ndarray, names: Sequence[str],
                        condition: Sequence[str] = ()) -> "MoleculeDataset":
        """Attach per-molecule properties ``[M, P]`` (and condition batches on ``condition``)."""
        values = np.asarray(values, np.float64).reshape(len(self), -1)
        if values.shape[1] != len(names):
            raise DataError(f"{values.shape[1]} property columns for {len(names)} names")
        missing = [n for n in condition if n not in names]
        if missing:
            raise DataError(f"this molecule data carries no property {', '.join(missing)}"
                            + (f" (it has: {', '.join(names)})" if names else " (it has no properties)"))
        cols = [list(names).index(n) for n in condition]
        if cols and not np.isfinite(values[:, cols]).all():
            raise DataError(f"property {', '.join(condition)} is missing for some molecules")
        self.properties = torch.as_tensor(values)
        self.property_names = list(names)
        self.condition_properties = list(condition)
        self._property_kind = self._fit_property_kind()
        return self

    def take(self, indices: Tensor) -> "MoleculeDataset":
        """The molecules at ``indices`` as a dataset of their own: its ``info`` (count histogram,
        references) describes them only, while the property normalisation stays the parent's
        (``with_properties`` on the result refits it). ``subset`` / ``split`` keep viewing the
        parent, as for every domain."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        nodes, counts = self.node_index(idx)
        ptr = np.concatenate([[0], np.cumsum(counts.numpy())])
        out = MoleculeDataset(self.types[nodes].numpy(), self.pos[nodes].double().numpy(),
                              self.charges[nodes].numpy(), ptr, self.codec, [self.names[i] for i in idx.tolist()])
        if self.properties is not None:
            out.with_properties(self.properties[idx].numpy(), self.property_names, self.condition_properties)
            out._property_kind = self._property_kind
        out.bond_rule = self.bond_rule
        return out

    def property_kind(self) -> VectorKind | None:
        """The ``property`` condition kind (None: unconditional), normalised by the mean / std of
        the data as loaded, or of its training part once :meth:`split` (splits view this dataset,
        so they normalise alike and match the ``data_info`` recorded for the model)."""
        return getattr(self, "_property_kind", None)

    def split(self, fraction: float, seed: int = 0) -> tuple[DomainDataset, DomainDataset]:
        """The seeded ``(training part, held-out part)`` split of every domain; the property
        normalisation (mean / std of the ``property`` condition) is then fitted to the training part
        only, so the held-out molecules a property evaluation uses played no part in it (both parts
        and this dataset normalise alike, and ``info()`` records it)."""
        rest, held = super().split(fraction, seed)
        if self.condition_properties and len(rest) > 0:
            self._property_kind = self._fit_property_kind(rest.indices)
        return rest, held

    def _fit_property_kind(self, rows: Tensor | None = None) -> VectorKind | None:
        if not self.condition_properties:
            return None
        cols = [self.property_names.index(n) for n in self.condition_properties]
        y = self.properties[:, cols] if rows is None else self.properties[rows][:, cols]
        std = y.std(0) if len(y) > 1 else torch.ones(len(cols), dtype=y.dtype)
        return VectorKind(self.condition_properties, y.mean(0).tolist(),
                          [float(s) if s > 0 else 1.0 for s in std.tolist()])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_raw(cls, raw: RawMolecules, source: str, options: dict[str, Any],
                 properties: tuple[np.ndarray, Sequence[str]] | None = None) -> "MoleculeDataset":
        """Map raw molecules onto a vocabulary (``options['elements']`` or the data's elements,
        ordered by atomic number); molecules with other elements are skipped and reported.
        ``properties``: ``(values [len(raw), P], names)`` aligned with ``raw``; the rows of kept
        molecules are attached, and ``options['properties']`` names those batches carry."""
        table = Chem.GetPeriodicTable()
        vocab = options.get("elements")
        if vocab is None:
            seen = {s for syms in raw.symbols for s in syms}
            vocab = sorted(seen, key=table.GetAtomicNumber)
        vocab = list(vocab)
        index = {s: i for i, s in enumerate(vocab)}
        max_atoms = options.get("max_atoms")
        types, pos, charges, ptr, names, kept = [], [], [], [0], [], []
        skipped = list(raw.skipped)
        for k, (syms, p, c, name) in enumerate(zip(raw.symbols, raw.positions, raw.charges, raw.names)):
            unknown = sorted({s for s in syms if s not in index})
            if unknown:
                skipped.append((name, f"element {', '.join(unknown)} not in the vocabulary {vocab}"))
                continue
            if max_atoms is not None and len(syms) > int(max_atoms):
                skipped.append((name, f"more than max_atoms={max_atoms} atoms"))
                continue
            if not np.isfinite(p).all():
                skipped.append((name, "non-finite coordinates"))
                continue
            types.append(np.array([index[s] for s in syms], np.int64))
            pos.append(p)
            charges.append(c)
            ptr.append(ptr[-1] + len(syms))
            names.append(name)
            kept.append(k)
        extra = RawMolecules(skipped=skipped[len(raw.skipped):])
        report_skipped(source, extra, len(raw))
        if not types:
            first = skipped[0] if skipped else (source, "no molecules")
            raise DataError(f"{source}: no usable molecules ({len(skipped)} skipped; first: {first[0]}: {first[1]})")
        codec = FeatureCodec(vocab, options.get("include_charges", False), options.get("onehot_scale", 0.25),
                             options.get("charge_scale", 0.1))
        ds = cls(np.concatenate(types), np.concatenate(pos), np.concatenate(charges), np.array(ptr), codec, names)
        ds.skipped = skipped
        wanted = list(options.get("properties") or [])
        if properties is not None:
            ds.with_properties(np.asarray(properties[0])[kept], properties[1], wanted)
        elif wanted:
            raise DataError(f"{source}: this molecule data carries no properties, so it cannot condition on "
                            f"{', '.join(wanted)} (the bundled QM9 subset and --data qm9 carry them)")
        return ds

    # ------------------------------------------------------------------ DomainDataset
    def __len__(self) -> int:
        return len(self.counts)

    def info(self) -> dict[str, Any]:
        hist = Counter(self.counts.tolist())
        return {
            "elements": list(self.codec.elements),
            "include_charges": self.codec.include_charges,
            "onehot_scale": self.codec.onehot_scale,
            "charge_scale": self.codec.charge_scale,
            "feature_dim": 3 + self.codec.num_features,
            "num_atoms_hist": [[int(n), int(c)] for n, c in sorted(hist.items())],
            "max_atoms": int(self.counts.max()) if len(self) else 0,
            "num_molecules": len(self),
            "bond_rule": self.bond_rule,
            **self._property_info(),
        }

    def _property_info(self) -> dict[str, Any]:
        kind = self.property_kind()
        if kind is None:
            return {}
        from .property import CONDITION_NAME, PROPERTY_UNITS, atom_count_table

        cols = [self.property_names.index(n) for n in kind.names]
        return {"conditions": {CONDITION_NAME: kind.spec()},
                "property_units": {n: PROPERTY_UNITS.get(n, "") for n in kind.names},
                "property_atoms": atom_count_table(self.counts.numpy(), self.properties[:, cols].numpy(), kind.names)}

    def node_index(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Flat atom indices of the molecules at ``indices`` and their per-molecule counts."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        counts = self.counts[idx]
        starts = self.ptr[idx]
        offsets = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        within = torch.arange(total) - torch.repeat_interleave(offsets, counts)
        return torch.repeat_interleave(starts, counts) + within, counts

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        """The molecules at ``indices`` as a flat batch. No augmentation: the EGNN is exactly
        E(3)-equivariant, so random rotations would not change what it learns."""
        nodes, counts = self.node_index(indices)
        batch = torch.repeat_interleave(torch.arange(len(counts)), counts)
        space = GraphSpace(batch, len(counts), centred=3)
        x = self.codec.encode(self.pos[nodes], self.types[nodes], self.charges[nodes])
        return Batch(x, space, self.condition(indices), {"elements": self.codec.elements})

    def condition(self, indices: Tensor) -> Condition | None:
        """The ``property`` condition of the molecules at ``indices`` (None: unconditional data)."""
        kind = self.property_kind()
        if kind is None:
            return None
        idx = torch.as_tensor(indices, dtype=torch.long)
        cols = [self.property_names.index(n) for n in kind.names]
        values = {n: self.properties[idx, c].tolist() for n, c in zip(kind.names, cols)}
        from .property import CONDITION_NAME
        return Condition({CONDITION_NAME: kind.parse(values, len(idx))}, {CONDITION_NAME: kind})


    # ------------------------------------------------------------------ chemistry helpers
    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = int(self.ptr[i]), int(self.ptr[i + 1])
        return self.pos[a:b].double().numpy(), self.types[a:b].numpy(), self.charges[a:b].numpy()

    def reports(self, limit: int | None = None) -> list:
        """EDM analysis of the stored molecules (bonds from distances, stability, validity)."""
        tables = BondTables(self.codec.elements, rule=self.bond_rule)
        n = len(self) if limit is None else min(limit, len(self))
        out = []
        for i in range(n):
            p, t, c = self.molecule(i)
            out.append(analyze_molecule(p, t, tables, c if self.codec.include_charges else None))
        return out

    @cached_property
    def member_smiles(self) -> list[str | None]:
        """Per molecule, the SMILES built the same way as for samples (None when not valid)."""
        return [r.smiles for r in self.reports()]

    @property
    def reference_smiles(self) -> set[str]:
        """SMILES of the valid molecules of this data set (novelty is measured against these)."""
        return {s for s in self.member_smiles if s is not None}

    #: whole-data-set facts a subset (``SubsetDataset``) forwards
    shared_attributes = ("codec", "property_names", "condition_properties", "property_kind")
    #: per-member facts a subset answers for its own members only
    member_attributes = ("reference_smiles",)

    def member_attribute(self, name: str, indices: Tensor) -> Any:
        """``reference_smiles`` of the molecules at ``indices`` only."""
        if name != "reference_smiles":
            raise AttributeError(name)
        smiles = self.member_smiles
        return {smiles[i] for i in torch.as_tensor(indices, dtype=torch.long).tolist() if smiles[i] is not None}


def _shared(a: np.ndarray) -> Tensor:
    """A tensor over a read-only memory-mapped array (nothing copied; never written to)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # "the given NumPy array is not writable"
        return torch.from_numpy(np.asarray(a))


#: user files of at least this many bytes in all, or holding SMILES (whose conformers take 5-20 ms a
#: molecule to embed), are converted once into the cache; smaller ones, quick to read, every time
CACHE_MIN_BYTES = 64 << 10
_SMILES_SUFFIXES = (".smi", ".smiles")


def cached_dataset(path: str | Path, options: dict[str, Any], build) -> MoleculeDataset:
    """``build()`` (the dataset of the files at ``path``), converted once into the cache and
    memory-mapped from it afterwards; the same arrays, names and skipped records either way.
    Paths that are not files or folders (``qm9``) and sets under :data:`CACHE_MIN_BYTES` without
    SMILES are built every time."""
    p = Path(path).expanduser()
    if not p.exists():
        return build()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    smiles = any(f.name.lower().endswith(_SMILES_SUFFIXES) for f in files)
    if not smiles and sum(f.stat().st_size for f in files) < CACHE_MIN_BYTES:
        return build()
    key = file_key(files, **{k: options[k] for k in sorted(options)})
    fresh: list[MoleculeDataset] = []

    def convert():
        ds = build()
        fresh.append(ds)
        arrays = {"types": ds.types.numpy(), "pos": ds.pos.numpy(), "charges": ds.charges.numpy(),
                  "ptr": ds.ptr.numpy()}
        if ds.properties is not None:
            arrays["properties"] = ds.properties.numpy()
        c = ds.codec
        return arrays, {"names": ds.names, "skipped": [list(x) for x in ds.skipped],
                        "codec": [list(c.elements), c.include_charges, c.onehot_scale, c.charge_scale],
                        "property_names": ds.property_names, "condition_properties": ds.condition_properties}

    arrays, meta, _ = cached_arrays("molecules", key, convert)
    if fresh:
        return fresh[0]
    ds = MoleculeDataset.__new__(MoleculeDataset)
    ds.codec = FeatureCodec(*meta["codec"])
    ds.types, ds.charges, ds.ptr, ds.pos = (_shared(arrays[k]) for k in ("types", "charges", "ptr", "pos"))
    ds.counts = ds.ptr[1:] - ds.ptr[:-1]
    ds.names = list(meta["names"])
    ds.skipped = [tuple(x) for x in meta["skipped"]]
    ds.properties, ds.property_names, ds.condition_properties = None, [], []
    if "properties" in arrays:
        ds.with_properties(np.asarray(arrays["properties"]), meta["property_names"], meta["condition_properties"])
    (log.warning if ds.skipped else log.info)(
        "%s: %d molecules from the cache (converted once; %d records were skipped then)", p, len(ds), len(ds.skipped))
    return ds


def load_bundled(options: dict[str, Any]) -> MoleculeDataset:
    """The bundled default: a seeded subset of QM9 (see ``data/README.md``)."""
    if not BUNDLED_FILE.is_file():
        raise DataError(f"{BUNDLED_FILE}: the bundled molecule data is missing from this installation")
    with np.load(BUNDLED_FILE, allow_pickle=False) as f:
        z, pos, ptr = f["z"], f["pos"], f["ptr"]
        idx = f["qm9_index"]
        smiles = f["smiles"] if "smiles" in f.files else None
        props = (f["properties"], [str(n) for n in f["property_names"]]) if "properties" in f.files else None
    table = Chem.GetPeriodicTable()
    raw = RawMolecules()
    for i in range(len(ptr) - 1):
        a, b = int(ptr[i]), int(ptr[i + 1])
        raw.add([table.GetElementSymbol(int(k)) for k in z[a:b]], pos[a:b].astype(np.float64), None,
                name=f"QM9 {int(idx[i])}" + (f" {smiles[i]}" if smiles is not None else ""))
    opts = dict(options)
    opts.setdefault("elements", QM9_ELEMENTS)
    if opts["elements"] is None:
        opts["elements"] = QM9_ELEMENTS
    return MoleculeDataset.from_raw(raw, str(BUNDLED_FILE), opts, props)
