"""Readers of 3-D molecules: QM9 (qm9pack or the raw files of a torch-geometric QM9 folder), SDF,
XYZ, SMILES (RDKit ETKDG).

Every reader returns a :class:`RawMolecules`: per molecule its element symbols, coordinates
(Angstrom), formal charges and a name, plus the records it skipped and why. Bad input raises
:class:`~diffuse.core.data.domain.DataError` with one line naming the file (and record).

No data file can run code: nothing here unpickles (torch-geometric's ``processed/*.pt`` files
are pickles and are never opened), nothing is downloaded, and nothing is written into the
user's folder.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from ...core.data.datafiles import log_skipped, scan_folder
from ...core.errors import DataError

__all__ = ["RawMolecules", "read_path", "read_qm9pack", "read_qm9_raw", "read_sdf", "read_xyz", "read_smiles",
           "qm9_split", "QM9_SPLIT_SIZES", "SUFFIXES"]

log = logging.getLogger(__name__)

#: EDM's QM9 split sizes (train, valid, test) for the 130,831 characterized molecules.
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


def _flat(mol: Chem.Mol) -> str | None:
    """Why a record has no usable 3-D coordinates, or ``None``. The coordinates decide, not the
    header's 2D/3D flag: all ``z = 0`` (within 1e-6) is 2-D (for one or two atoms, which can lie
    on a line in 3-D, only when the header also says 2D)."""
    if mol.GetNumConformers() == 0:
        return "no coordinates"
    conf = mol.GetConformer()
    pos = conf.GetPositions()
    if len(pos) and np.abs(pos[:, 2]).max() <= 1e-6 and (len(pos) >= 3 or not conf.Is3D()):
        return "2-D coordinates"
    return None


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
    with rdBase.BlockLogs():   # restores the caller's RDKit log settings afterwards
        for rec, mol in records:
            total += 1
            if isinstance(mol, str):
                out.skipped.append((rec, mol))
            else:
                out.add(*_from_rdkit(mol), name=rec)
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
                elif _flat(mol):
                    yield rec, _flat(mol)
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


def _xyz_count(line: str) -> int | None:
    parts = line.split()
    if len(parts) == 1 and parts[0].isdigit() and int(parts[0]) > 0:
        return int(parts[0])
    return None


def _xyz_atom(line: str) -> bool:
    parts = line.split()
    if len(parts) < 4 or not parts[0][:1].isalpha():
        return False
    try:
        [float(v) for v in parts[1:4]]
    except ValueError:
        return False
    return True


def _xyz_records(path: Path) -> Iterator[tuple[str, str, bool]]:
    """``(record name, frame text or reason, is a frame)`` for every frame of an XYZ file and
    for every stretch of lines that is not one. A frame is an atom-count line, a comment line
    and that many ``symbol x y z`` lines; after a bad stretch reading resynchronises on the next
    line that starts a valid frame. A count followed by more atom lines than it says is bad
    (the molecule would be truncated and its remaining atoms mistaken for the next frame)."""
    lines = path.read_text(errors="replace").splitlines()

    def atoms_from(i: int) -> int:        # consecutive atom lines from line i
        j = i
        while j < len(lines) and _xyz_atom(lines[j]):
            j += 1
        return j - i

    def frame_at(i: int) -> int | None:   # atom count when a valid frame starts at line i
        n = _xyz_count(lines[i])
        if n is None or i + 1 >= len(lines) or atoms_from(i + 2) < n:
            return None
        return n

    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        n = frame_at(i)
        if n is not None:
            rec = f"{path.name} frame at line {i + 1}"
            end = i + 2 + n
            extra = atoms_from(end)
            if extra:
                yield rec, f"atom count {n} but {n + extra} atom lines follow", False
                i = end + extra
            else:
                yield rec, "\n".join(lines[i:end]), True
                i = end
            continue
        j = i + 1
        while j < len(lines) and frame_at(j) is None:
            j += 1
        while j > i + 1 and not lines[j - 1].strip():
            j -= 1
        count = _xyz_count(lines[i])
        if count is not None:
            reason = f"atom count {count} but {atoms_from(i + 2)} atom lines follow"
        else:
            reason = "not an XYZ frame (atom count, comment, 'symbol x y z' lines)"
        yield (f"{path.name} line {i + 1}" if j == i + 1 else f"{path.name} lines {i + 1}-{j}"), reason, False
        i = j


def _non_finite(frame: str) -> bool:
    """Whether an XYZ frame's atom lines hold a coordinate that is nan or inf."""
    for line in frame.splitlines()[2:]:
        for v in line.split()[1:4]:
            try:
                if not math.isfinite(float(v)):
                    return True
            except ValueError:
                pass
    return False


def read_xyz(path: Path) -> RawMolecules:
    """One or more concatenated XYZ frames (atom count, comment, ``symbol x y z`` lines).
    Anything between frames that is not a frame is skipped (counted, with its reason), and
    reading carries on at the next valid frame."""
    def records() -> Iterator[Record]:
        for rec, text, is_frame in _xyz_records(path):
            if is_frame and _non_finite(text):
                yield rec, "coordinates that are not finite numbers (nan or inf)"
                continue
            mol = Chem.MolFromXYZBlock(text) if is_frame else None
            if not is_frame:
                yield rec, text
            elif mol is None or mol.GetNumAtoms() == 0:
                yield rec, "RDKit could not read the frame (unknown element symbol?)"
            else:
                yield rec, mol
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
    try:   # some inputs (e.g. metal chelates of NCI's first_5K.smi) raise RDKit's "Invariant Violation"
        if AllChem.EmbedMolecule(mol, params) != 0:
            params.useRandomCoords = True
            if AllChem.EmbedMolecule(mol, params) != 0:
                return "RDKit could not embed it in 3-D"
    except RuntimeError as exc:
        return f"RDKit could not embed it in 3-D ({str(exc).splitlines()[0] if str(exc) else 'RuntimeError'})"
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
    """The CSV files of the installed ``qm9pack`` package, located without importing it (its
    ``__init__`` needs ``pkg_resources``, which setuptools >= 81 no longer ships)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("QM9 needs the qm9pack package: pip install \"diffuse[qm9]\" (or pip install --no-deps "
                        "qm9pack), or give a torch-geometric QM9 folder")
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
    their QM9 indices (``gdb_idx``, 1-based), in QM9 index order. Coordinates are B3LYP
    geometries in Angstrom.

    qm9pack 1.0.3 holds exactly QM9's 130,831 characterized molecules: its ``Index`` column runs
    over 1..133,885 with 3,054 numbers absent, the molecules of QM9's ``uncharacterized.txt``
    (checked on the installed tables), so these rows are the set EDM splits, in EDM's order."""
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
    index_arr = np.array(index)
    if len(index_arr) > 1 and not bool((np.diff(index_arr) > 0).all()):   # keep QM9 index order
        order = np.argsort(index_arr, kind="stable")
        ordered = RawMolecules(skipped=out.skipped)
        for i in order.tolist():
            ordered.add(out.symbols[i], out.positions[i], out.charges[i], out.names[i])
        out, index_arr = ordered, index_arr[order]
    return out, index_arr


QM9_RAW_FILES = ("gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt")


def is_qm9_folder(root: Path) -> bool:
    """A torch-geometric QM9 folder: it has ``processed/`` or ``raw/`` with one of QM9's raw files."""
    return (root / "processed").is_dir() or any((root / "raw" / n).is_file() for n in QM9_RAW_FILES)


def _uncharacterized(path: Path) -> set[int]:
    """1-based QM9 indices listed in ``uncharacterized.txt`` (the 3,054 molecules that failed
    QM9's geometry consistency check): the first number of each table row, the table being the
    file's lines after its 9 header lines and before its closing line (as torch-geometric reads it)."""
    out = set()
    for line in path.read_text(errors="replace").split("\n")[9:-2]:
        parts = line.split()
        if not parts:
            continue
        if not parts[0].isdigit():
            raise DataError(f"{path}: expected QM9's table of uncharacterized molecules (9 header lines, then "
                            f"one index per line), got {line.strip()[:40]!r}")
        out.add(int(parts[0]))
    return out


def read_qm9_raw(root: Path) -> RawMolecules:
    """QM9 from the raw files a torch-geometric QM9 folder keeps (``raw/gdb9.sdf``,
    ``raw/gdb9.sdf.csv``, ``raw/uncharacterized.txt``), read as torch-geometric reads them
    (RDKit ``SDMolSupplier``, ``removeHs=False, sanitize=False``; uncharacterized molecules
    dropped) but with our own code: ``processed/*.pt`` files are pickles, which can run code, so
    they are never loaded, and nothing is downloaded or written into the folder."""
    raw = root / "raw"
    missing = [n for n in QM9_RAW_FILES if not (raw / n).is_file()]
    if missing:
        have = " (its processed/*.pt files are never loaded: they are pickles, which can run code)" \
            if (root / "processed").is_dir() else ""
        raise DataError(f"{root}: a torch-geometric QM9 folder needs the raw files raw/gdb9.sdf, raw/gdb9.sdf.csv "
                        f"and raw/uncharacterized.txt; missing {', '.join('raw/' + n for n in missing)}{have}; "
                        "nothing is downloaded")
    sdf, table = raw / "gdb9.sdf", raw / "gdb9.sdf.csv"
    try:
        rows = sum(1 for line in table.read_text(errors="replace").splitlines()[1:] if line.strip())
        drop = _uncharacterized(raw / "uncharacterized.txt")
    except OSError as exc:
        raise DataError(f"{raw}: cannot read QM9's raw files ({exc})") from None

    def records() -> Iterator[Record]:
        for k, mol in enumerate(Chem.SDMolSupplier(str(sdf), removeHs=False, sanitize=False)):
            if k + 1 in drop:
                continue
            rec = f"{sdf.name} record {k + 1}"
            if mol is None or mol.GetNumAtoms() == 0:
                yield rec, "RDKit could not parse the record"
                continue
            name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
            yield f"QM9 {k + 1}" + (f" ({name})" if name else ""), mol

    out = _collect(sdf, records(), "empty SDF file (expected QM9's molecule records)")
    total = len(out) + len(out.skipped) + len(drop)
    if total != rows:
        raise DataError(f"{sdf}: {total} records but {table.name} has {rows} rows; "
                        "expected the matching files of one QM9 download")
    log.info("%s: %d QM9 molecules (%d uncharacterized dropped)", root, len(out), len(drop))
    return out


def qm9_split(n: int, split: str, seed: int = 0) -> np.ndarray:
    """Positions (sorted) of one part of EDM's QM9 split of ``n`` molecules held in QM9 index order.

    For QM9's 130,831 characterized molecules and ``seed = 0`` this is EDM's split exactly (its
    ``qm9/data/prepare/qm9.py``, after Cormorant): ``np.random.seed(0); perm =
    np.random.permutation(130831)``, train = ``perm[:100000]``, valid = ``perm[100000:117748]``,
    test = ``perm[117748:]``. A local ``RandomState(seed)`` draws the same stream as the seeded
    global generator without touching global state. Other ``n`` (a partial copy of QM9) keep
    EDM's rule where it applies: test = ``int(0.1 n)``, train = 100,000 or, for smaller sets, the
    same share of ``n - test`` as EDM's (100,000 of 117,748), valid = the rest; ``split = "all"``
    is every position."""
    if split == "all":
        return np.arange(n)
    if split not in ("train", "valid", "test"):
        raise DataError(f"unknown split {split!r}; expected train, valid, test or all")
    n_test = int(0.1 * n)
    full_train = QM9_SPLIT_SIZES[0]
    n_train = full_train if n - n_test >= sum(QM9_SPLIT_SIZES[:2]) else \
        int(round((n - n_test) * full_train / sum(QM9_SPLIT_SIZES[:2])))
    perm = np.random.RandomState(seed).permutation(n)
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
    """Read a molecule file, a folder of them, ``qm9`` (qm9pack) or a torch-geometric QM9 folder
    (its raw files). A folder's files with other extensions, empty files and files that cannot
    be used are skipped and summarised in one warning line."""
    if str(path).lower() in ("qm9", "qm9pack"):
        mols, _ = read_qm9pack()
        return _apply_split(mols, options)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder (expected SDF / XYZ / SMILES files, or 'qm9')")
    if p.is_dir():
        if is_qm9_folder(p):
            return _apply_split(read_qm9_raw(p), options)
        files, skipped = scan_folder(p, SUFFIXES)
        if not files:
            log_skipped(p, skipped)
            raise DataError(f"{p}: folder holds no molecule files (expected {', '.join(sorted(SUFFIXES))})")
        out = RawMolecules()
        for f in files:
            try:
                out.extend(read_file(f, options))
            except DataError as exc:
                skipped.append((f, "unreadable"))
                out.skipped.append((str(f), str(exc)))
        log_skipped(p, skipped)
        return out
    return read_file(p, options)


def _apply_split(mols: RawMolecules, options: dict) -> RawMolecules:
    keep = qm9_split(len(mols), str(options.get("split", "train")), int(options.get("split_seed", 0)))
    out = RawMolecules(skipped=mols.skipped)
    for i in keep.tolist():
        out.add(mols.symbols[i], mols.positions[i], mols.charges[i], mols.names[i])
    return out
