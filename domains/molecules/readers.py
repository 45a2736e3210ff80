"""Readers of 3-D molecules: QM9 (qm9pack or torch-geometric), SDF, XYZ, SMILES (RDKit ETKDG).

Every reader returns a :class:`RawMolecules`: per molecule its element symbols, coordinates
(Angstrom), formal charges and a name, plus the records it skipped and why. Bad input raises
:class:`~diffuse.core.domain.DataError` with one line naming the file (and record).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

from diffuse.core.domain import DataError

__all__ = ["RawMolecules", "read_path", "read_qm9pack", "read_pyg_qm9", "read_sdf", "read_xyz", "read_smiles",
           "qm9_split", "QM9_SPLIT_SIZES", "SUFFIXES"]

log = logging.getLogger(__name__)

#: EDM's QM9 split sizes (train, valid, test) for the 130,831 molecules.
QM9_SPLIT_SIZES = (100_000, 17_748, 13_083)
SUFFIXES = {".sdf": "sdf", ".sdf.gz": "sdf", ".mol": "sdf", ".xyz": "xyz", ".smi": "smiles", ".smiles": "smiles"}


@dataclass
class RawMolecules:
    """Molecules as read, before they are mapped to a vocabulary."""

    symbols: list[list[str]] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    charges: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (record, reason)

    def add(self, symbols: list[str], pos: np.ndarray, charges: np.ndarray | None, name: str) -> None:
        self.symbols.append(list(symbols))
        self.positions.append(np.asarray(pos, dtype=np.float64).reshape(-1, 3))
        self.charges.append(np.zeros(len(symbols), np.int64) if charges is None else np.asarray(charges, np.int64))
        self.names.append(name)

    def extend(self, other: "RawMolecules") -> None:
        self.symbols += other.symbols
        self.positions += other.positions
        self.charges += other.charges
        self.names += other.names
        self.skipped += other.skipped

    def __len__(self) -> int:
        return len(self.symbols)


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    for suf in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suf):
            return SUFFIXES[suf]
    return None


def report_skipped(source: str, mols: RawMolecules, total: int) -> None:
    """Log how many records were skipped and why (one warning line)."""
    if not mols.skipped:
        return
    reasons = Counter(reason for _, reason in mols.skipped)
    first_rec, first_reason = mols.skipped[0]
    summary = "; ".join(f"{n} x {r}" for r, n in reasons.most_common())
    log.warning("%s: skipped %d of %d records (%s); first: %s", source, len(mols.skipped), total, summary, first_rec)


def _check_3d(mol: Chem.Mol) -> bool:
    if mol.GetNumConformers() == 0:
        return False
    conf = mol.GetConformer()
    if conf.Is3D():
        return True
    pos = conf.GetPositions()
    return bool(np.abs(pos[:, 2]).max() > 1e-6) if len(pos) else False


def _from_rdkit(mol: Chem.Mol) -> tuple[list[str], np.ndarray, np.ndarray]:
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    charges = np.array([a.GetFormalCharge() for a in mol.GetAtoms()], np.int64)
    return symbols, mol.GetConformer().GetPositions(), charges


Record = tuple[str, "Chem.Mol | str"]  # a record's name and its molecule, or why it was skipped


def _collect(path: Path, records: Iterator[Record], empty: str) -> RawMolecules:
    """Gather a file's records with RDKit's own logging silenced while they are parsed; an empty
    file is an error, skipped records are counted and reported with their reasons."""
    out = RawMolecules()
    total = 0
    RDLogger.DisableLog("rdApp.*")
    try:
        for rec, mol in records:
            total += 1
            if isinstance(mol, str):
                out.skipped.append((rec, mol))
            else:
                out.add(*_from_rdkit(mol), name=rec)
    finally:
        RDLogger.EnableLog("rdApp.*")
    if total == 0:
        raise DataError(f"{path}: {empty}")
    report_skipped(str(path), out, total)
    return out


def _sdf_records(path: Path, add_hydrogens: bool) -> Iterator[Record]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for k, mol in enumerate(Chem.ForwardSDMolSupplier(fh, removeHs=False, sanitize=True)):
                rec = f"{path.name} record {k + 1}"
                if mol is None:
                    yield rec, "RDKit could not parse the record"
                    continue
                if mol.HasProp("_Name") and mol.GetProp("_Name").strip():
                    rec += f" ({mol.GetProp('_Name').strip()})"
                if mol.GetNumAtoms() == 0:
                    yield rec, "no atoms"
                elif not _check_3d(mol):
                    yield rec, "no 3-D coordinates"
                elif add_hydrogens and any(a.GetNumImplicitHs() for a in mol.GetAtoms()):
                    yield rec, Chem.AddHs(mol, addCoords=True)
                else:
                    yield rec, mol
    except OSError as exc:
        raise DataError(f"{path}: cannot read the SDF file ({exc})") from None


def read_sdf(path: Path, add_hydrogens: bool = True) -> RawMolecules:
    """Records of an SDF (or ``.sdf.gz``) file with 3-D coordinates. Implicit hydrogens are
    made explicit with coordinates (``Chem.AddHs(addCoords=True)``) when ``add_hydrogens``."""
    return _collect(path, _sdf_records(path, add_hydrogens),
                    "empty SDF file (expected at least one molecule record)")


def _xyz_blocks(path: Path) -> Iterator[tuple[int, str]]:
    lines = path.read_text(errors="replace").splitlines()
    i, k = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        k += 1
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            yield k, ""    # unparsable header: report and stop
            return
        yield k, "\n".join(lines[i:i + n + 2])
        i += n + 2


def read_xyz(path: Path) -> RawMolecules:
    """One or more concatenated XYZ frames (atom count, comment, ``symbol x y z`` lines)."""
    def records() -> Iterator[Record]:
        for k, block in _xyz_blocks(path):
            mol = Chem.MolFromXYZBlock(block) if block else None
            if mol is None or mol.GetNumAtoms() == 0:
                yield f"{path.name} frame {k}", "not a valid XYZ frame (atom count, comment, 'symbol x y z' lines)"
            else:
                yield f"{path.name} frame {k}", mol
    return _collect(path, records(),
                    "empty XYZ file (expected an atom count line, a comment line and coordinates)")


def embed_smiles(smiles: str, seed: int) -> Chem.Mol | str:
    """A 3-D conformer with explicit hydrogens: RDKit ETKDGv3 (Riniker & Landrum 2015), then
    an MMFF94 relaxation where MMFF has parameters. Returns the molecule or a failure reason."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return "unparsable SMILES"
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            return "RDKit could not embed it in 3-D"
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    return mol


def read_smiles(path: Path, seed: int = 0) -> RawMolecules:
    """A SMILES list (``SMILES [name]`` per line; ``#`` comments), embedded to 3-D, seeded per line."""
    def records() -> Iterator[Record]:
        for k, line in enumerate(path.read_text(errors="replace").splitlines()):
            parts = line.split()
            if not parts or parts[0].startswith("#") or parts[0].lower() == "smiles":
                continue
            yield f"{path.name} line {k + 1} ({parts[0]})", embed_smiles(parts[0], seed + k)
    return _collect(path, records(), "empty SMILES file (expected one SMILES per line)")


# ---------------------------------------------------------------------- QM9
def qm9pack_files() -> list[Path]:
    """The CSV files of the installed ``qm9pack`` package, located without importing it."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("QM9 needs the qm9pack package: pip install --no-deps qm9pack "
                        "(or give a torch-geometric QM9 folder)")
    root = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = [root / f"qm9_part{i}.csv" for i in (1, 2, 3)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"qm9pack at {root} lacks {', '.join(missing)}; reinstall with pip install --no-deps qm9pack")
    return files


def _parse_floats(text: str) -> np.ndarray:
    return np.array(text.replace("[", " ").replace("]", " ").replace(",", " ").split(), dtype=np.float64)


def read_qm9pack(limit: int | None = None) -> tuple[RawMolecules, np.ndarray]:
    """All of QM9 (Ramakrishnan et al. 2014) from qm9pack's CSVs; returns the molecules and
    their QM9 indices (``gdb_idx``). Coordinates are B3LYP geometries in Angstrom."""
    csv.field_size_limit(1 << 27)
    out = RawMolecules()
    index = []
    for f in qm9pack_files():
        with open(f, newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                symbols = row["Elements"].strip("[] ").replace("'", "").replace('"', "").replace(" ", "").split(",")
                pos = _parse_floats(row["XYZ_Ang"]).reshape(-1, 3)
                if len(symbols) != len(pos):
                    out.skipped.append((f"{f.name} index {row['Index']}", "element and coordinate counts differ"))
                    continue
                out.add(symbols, pos, None, name=f"QM9 {row['Index']} {row['SMILES']}")
                index.append(int(row["Index"]))
                if limit is not None and len(out) >= limit:
                    return out, np.array(index)
    report_skipped("qm9pack", out, len(out) + len(out.skipped))
    return out, np.array(index)


def read_pyg_qm9(root: Path) -> RawMolecules:
    """QM9 as stored by torch-geometric's ``datasets.QM9(root)`` (already downloaded / processed)."""
    from torch_geometric.datasets import QM9

    raw = root / "raw"
    processed = root / "processed"
    has_raw = all((raw / n).is_file() for n in ("gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt"))
    if not (processed.is_dir() and any(processed.glob("*.pt"))) and not has_raw:
        raise DataError(f"{root}: not a torch-geometric QM9 folder (expected processed/*.pt or raw/gdb9.sdf); "
                        "no download is attempted")
    ds = QM9(str(root))
    z = ds._data.z.numpy()
    pos = ds._data.pos.numpy()
    ptr = ds.slices["z"].numpy()
    table = Chem.GetPeriodicTable()
    out = RawMolecules()
    for i in range(len(ptr) - 1):
        a, b = int(ptr[i]), int(ptr[i + 1])
        out.add([table.GetElementSymbol(int(k)) for k in z[a:b]], pos[a:b], None, name=f"QM9 {i}")
    return out


def qm9_split(n: int, split: str, seed: int = 0) -> np.ndarray:
    """EDM's seeded split: 100,000 train / 17,748 valid / 13,083 test for all 130,831 molecules
    (test = 10 %, train = 100k, i.e. the same share of a smaller set, valid = the rest)."""
    if split == "all":
        return np.arange(n)
    if split not in ("train", "valid", "test"):
        raise DataError(f"unknown split {split!r}; expected train, valid, test or all")
    n_test = int(round(0.1 * n))
    n_train = min(QM9_SPLIT_SIZES[0], int(round(n * QM9_SPLIT_SIZES[0] / sum(QM9_SPLIT_SIZES))))
    perm = np.random.default_rng(seed).permutation(n)
    parts = {"train": perm[:n_train], "valid": perm[n_train:n - n_test], "test": perm[n - n_test:]}
    return np.sort(parts[split])


# ---------------------------------------------------------------------- dispatch
def read_file(path: Path, options: dict) -> RawMolecules:
    kind = _suffix(path)
    if kind == "sdf":
        return read_sdf(path, add_hydrogens=bool(options.get("add_hydrogens", True)))
    if kind == "xyz":
        return read_xyz(path)
    if kind == "smiles":
        return read_smiles(path, seed=int(options.get("seed", 0)))
    raise DataError(f"{path}: unsupported molecule file; expected one of {', '.join(sorted(SUFFIXES))}")


def read_path(path: str | Path, options: dict) -> RawMolecules:
    """Read a molecule file, a folder of them, ``qm9`` (qm9pack) or a torch-geometric QM9 folder."""
    if str(path).lower() in ("qm9", "qm9pack"):
        mols, _ = read_qm9pack()
        return _apply_split(mols, options)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (expected SDF / XYZ / SMILES files, or 'qm9')")
    if p.is_dir():
        if (p / "processed").is_dir() or (p / "raw" / "gdb9.sdf").is_file():
            return _apply_split(read_pyg_qm9(p), options)
        files = sorted(f for f in p.rglob("*") if f.is_file() and _suffix(f))
        if not files:
            raise DataError(f"{p}: folder holds no molecule files (expected {', '.join(sorted(SUFFIXES))})")
        out = RawMolecules()
        for f in files:
            try:
                out.extend(read_file(f, options))
            except DataError as exc:
                out.skipped.append((str(f), str(exc)))
        return out
    return read_file(p, options)


def _apply_split(mols: RawMolecules, options: dict) -> RawMolecules:
    keep = qm9_split(len(mols), str(options.get("split", "train")), int(options.get("split_seed", 0)))
    out = RawMolecules(skipped=mols.skipped)
    for i in keep.tolist():
        out.add(mols.symbols[i], mols.positions[i], mols.charges[i], mols.names[i])
    return out
