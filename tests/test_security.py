"""No input file can run code, and reading data fetches nothing and writes nothing into the
user's folder: torch-geometric QM9 folders are read from their raw files, never from their
``processed/*.pt`` pickles; no ``torch.load`` in the package unpickles arbitrary objects."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

import diffuse
from diffuse.core.errors import DataError
from diffuse.domains.molecules import MoleculeDomain


@pytest.fixture(scope="module")
def dom():
    return MoleculeDomain()


def _embedded(smiles: str, seed: int = 0) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return mol


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def _crafted_qm9(root, marker):
    import pickle
    (root / "processed").mkdir(parents=True)
    payload = pickle.dumps(_Payload(marker))
    for name in ("data_v3.pt", "pre_transform.pt", "pre_filter.pt"):
        (root / "processed" / name).write_bytes(payload)
    return payload


def _write_qm9_raw(root, smiles=("C", "N", "O", "CO")):
    raw = root / "raw"
    raw.mkdir(parents=True)
    w = Chem.SDWriter(str(raw / "gdb9.sdf"))
    mols = []
    for k, smi in enumerate(smiles):
        m = _embedded(smi, seed=k)
        m.SetProp("_Name", f"gdb_{k + 1}")
        w.write(m)
        mols.append(m)
    w.close()
    rows = [f"gdb_{k + 1},{','.join(['0.0'] * 19)}" for k in range(len(smiles))]
    (raw / "gdb9.sdf.csv").write_text("mol_id,A,B,C,mu,alpha,homo,lumo,gap,r2,zpve,u0,u298,h298,g298,cv,"
                                      "u0_atom,u298_atom,h298_atom,g298_atom\n" + "\n".join(rows) + "\n")
    # QM9's layout, as torch-geometric reads it: 9 header lines, the table, a closing line
    header = [" Indices of the molecules which failed the geometry consistency check"] + [" note"] * 6 + \
        ["   Index   GDB17-ID   Ediff", " " + "-" * 60]
    (raw / "uncharacterized.txt").write_text("\n".join(header + ["       3      21725   0.1", " " + "-" * 60]) + "\n")
    return mols


def test_qm9_folder_with_crafted_pickles_runs_no_code_and_fetches_nothing(tmp_path, dom):
    import pickle
    import diffuse.api as api

    root = tmp_path / "qm9"
    marker = tmp_path / "PWNED"
    payload = _crafted_qm9(root, marker)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with pytest.raises(DataError) as exc:
        dom.load_data(root, {})
    msg = str(exc.value)
    assert "\n" not in msg and str(root) in msg
    assert "raw/gdb9.sdf" in msg and "raw/gdb9.sdf.csv" in msg and "raw/uncharacterized.txt" in msg
    assert "nothing is downloaded" in msg
    run = tmp_path / "run"
    with pytest.raises(DataError, match="raw/gdb9.sdf"):
        api.train("molecules", data=root, out=run, progress=False, steps=1)
    assert not marker.exists()
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before   # no raw/, nothing written
    assert not run.exists()
    pickle.loads(payload)                      # the payload is live: loading it would have run it
    assert marker.exists()


def test_qm9_raw_files_are_read_and_processed_pickles_ignored(tmp_path, dom):
    root = tmp_path / "qm9"
    marker = tmp_path / "PWNED"
    _crafted_qm9(root, marker)
    mols = _write_qm9_raw(root)
    ds = dom.load_data(root, {"split": "all"})
    assert not marker.exists()
    assert len(ds) == 3 and ds.info()["elements"] == ["H", "C", "N", "O"]
    assert ds.names == ["QM9 1 (gdb_1)", "QM9 2 (gdb_2)", "QM9 4 (gdb_4)"]  # gdb_3 uncharacterized
    assert ds.counts.tolist() == [m.GetNumAtoms() for k, m in enumerate(mols) if k != 2]
    want = mols[3].GetConformer().GetPositions()
    got, types, _ = ds.molecule(2)
    assert np.allclose(got, want - want.mean(0), atol=1e-4)
    assert [ds.codec.elements[t] for t in types] == [a.GetSymbol() for a in mols[3].GetAtoms()]
    # files from different downloads do not pass silently
    csv_file = root / "raw" / "gdb9.sdf.csv"
    csv_file.write_text(csv_file.read_text() + "gdb_5," + ",".join(["0.0"] * 19) + "\n")
    with pytest.raises(DataError, match="gdb9.sdf: 4 records but gdb9.sdf.csv has 5 rows"):
        dom.load_data(root, {"split": "all"})


def test_every_torch_load_in_the_package_is_weights_only():
    root = Path(diffuse.__file__).resolve().parent
    calls = []
    for f in root.rglob("*.py"):
        if ".venv" in f.parts or "tests" in f.relative_to(root).parts:
            continue
        text = f.read_text()
        assert "weights_only=False" not in text, f
        for m in re.finditer(r"torch\.load\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            calls.append((f.name, text[m.end():i]))
    assert calls                                   # the checkpoint loader is found
    for name, args in calls:
        assert "weights_only=True" in args, f"{name}: torch.load({args}"
