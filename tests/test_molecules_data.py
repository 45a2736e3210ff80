"""Molecule data: the bundled QM9 subset, batching, readers (SDF / XYZ / SMILES / QM9) and bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from diffuse.core.errors import DataError
from diffuse.domains.molecules import MoleculeDomain
from diffuse.domains.molecules.dataset import FeatureCodec
from diffuse.domains.molecules.readers import QM9_SPLIT_SIZES, qm9_split, read_qm9pack


@pytest.fixture(scope="module")
def dom():
    return MoleculeDomain()


def _embedded(smiles: str, seed: int = 0) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return mol


def test_bundled_default_batch_and_info(dom):
    ds = dom.load_data(None, dom.default_data())
    info = ds.info()
    assert json.loads(json.dumps(info)) == info
    assert info["elements"] == ["H", "C", "N", "O", "F"] and info["feature_dim"] == 8
    assert sum(c for _, c in info["num_atoms_hist"]) == len(ds) == 2000
    b = ds.batch(torch.tensor([0, 5, 1999]), torch.Generator().manual_seed(0))
    n = [int(ds.counts[i]) for i in (0, 5, 1999)]
    assert b.x.shape == (sum(n), 8) and len(b) == 3
    assert torch.allclose(b.space.graph_mean(b.x[:, :3]), torch.zeros(3, 3), atol=1e-5)
    onehot = b.x[:, 3:]
    assert torch.equal(onehot.sum(1), torch.full((sum(n),), 0.25))       # EDM's one-hot / 4
    pos, types, _ = FeatureCodec.from_info(info).decode(b.x)
    assert torch.equal(types, torch.cat([ds.types[ds.ptr[i]:ds.ptr[i + 1]] for i in (0, 5, 1999)]))


def test_charges_feature_and_template(dom):
    ds = dom.load_data(None, {"include_charges": True})
    info = ds.info()
    assert info["feature_dim"] == 9
    bound = dom.bind(info)
    tpl = bound.template(5, torch.Generator().manual_seed(3))
    tpl2 = bound.template(5, torch.Generator().manual_seed(3))
    assert torch.equal(tpl.space.counts, tpl2.space.counts)
    sizes = {n for n, _ in info["num_atoms_hist"]}
    assert set(tpl.space.counts.tolist()) <= sizes and tpl.x.shape[1] == 9
    fixed = bound.template(3, structure=[4, 6, 9])
    assert fixed.space.counts.tolist() == [4, 6, 9]
    with pytest.raises(ValueError):
        bound.template(2, structure=[4, 6, 9])


def test_sdf_with_mixed_records_reports_skips(tmp_path, dom, caplog):
    path = tmp_path / "mols.sdf"
    w = Chem.SDWriter(str(path))
    for smi in ("CCO", "c1ccccc1", "CC(=O)N"):
        w.write(_embedded(smi))
    w.close()
    text = path.read_text()
    path.write_text(text + "garbage\n  no atoms here\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\n$$$$\n")
    with caplog.at_level(logging.WARNING):
        ds = dom.load_data(path, {})
    assert len(ds) == 3 and ds.info()["elements"] == ["H", "C", "N", "O"]
    assert any("skipped 1 of 4 records" in r.getMessage() for r in caplog.records)
    assert "record 4" in ds.skipped[0][0]
    counts = sorted(ds.counts.tolist())
    assert counts == sorted([9, 12, 9])


def test_sdf_implicit_hydrogens_are_added_in_3d(tmp_path, dom):
    mol = _embedded("CC(=O)O", seed=1)
    heavy = Chem.RemoveHs(mol)
    path = tmp_path / "heavy.sdf"
    w = Chem.SDWriter(str(path))
    w.write(heavy)
    w.close()
    ds = dom.load_data(path, {})
    assert int(ds.counts[0]) == mol.GetNumAtoms() == 8
    ds_no_h = dom.load_data(path, {"add_hydrogens": False})
    assert int(ds_no_h.counts[0]) == 4


def test_bad_input_gets_one_clear_line(tmp_path, dom):
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.sdf: empty SDF"):
        dom.load_data(empty, {})
    flat = tmp_path / "flat.sdf"
    m = Chem.MolFromSmiles("CCO")
    AllChem.Compute2DCoords(m)
    w = Chem.SDWriter(str(flat))
    w.write(m)
    w.close()
    with pytest.raises(DataError, match="2-D coordinates") as exc:
        dom.load_data(flat, {})
    assert "\n" not in str(exc.value) and "flat.sdf" in str(exc.value)
    chloro = tmp_path / "cl.sdf"
    w = Chem.SDWriter(str(chloro))
    w.write(_embedded("CCCl"))
    w.close()
    with pytest.raises(DataError, match=r"element Cl not in the vocabulary"):
        dom.load_data(chloro, {"elements": ["H", "C", "N", "O", "F"]})
    with pytest.raises(DataError, match="no such file"):
        dom.load_data(tmp_path / "missing.sdf", {})
    with pytest.raises(DataError, match="unsupported"):
        (tmp_path / "a.csv").write_text("x")
        dom.load_data(tmp_path / "a.csv", {})
    with pytest.raises(DataError, match="unknown molecule data option"):
        dom.load_data(None, {"resolution": 3})


def test_smiles_list_is_embedded_seeded(tmp_path, dom, caplog):
    path = tmp_path / "list.smi"
    path.write_text("# a comment\nCCO ethanol\nC1CC1(\nN#CC\n")
    with caplog.at_level(logging.WARNING):
        a = dom.load_data(path, {"seed": 7})
    b = dom.load_data(path, {"seed": 7})
    assert len(a) == 2 and torch.equal(a.pos, b.pos)
    assert "unparsable SMILES" in a.skipped[0][1] and "line 3" in a.skipped[0][0]
    assert any("skipped 1 of 3" in r.getMessage() for r in caplog.records)
    # ETKDG + MMFF geometry: the C-O bond of ethanol near 1.42 A
    p, t, _ = a.molecule(0)
    els = [a.codec.elements[k] for k in t]
    c, o = els.index("C"), els.index("O")
    d = min(np.linalg.norm(p[i] - p[o]) for i in range(len(els)) if els[i] == "C")
    assert 1.38 < d < 1.46 and c >= 0


def test_xyz_multi_frame(tmp_path, dom):
    mol = _embedded("O")
    block = Chem.MolToXYZBlock(mol)
    path = tmp_path / "w.xyz"
    path.write_text(block + block + "3\nbroken\nO 0 0\n")
    ds = dom.load_data(path, {})
    assert len(ds) == 2 and ds.info()["elements"] == ["H", "O"]
    assert np.allclose(ds.molecule(0)[0], ds.molecule(1)[0])


def test_qm9_split_sizes_are_edms():
    parts = {s: qm9_split(130_831, s) for s in ("train", "valid", "test")}
    assert tuple(len(parts[s]) for s in ("train", "valid", "test")) == QM9_SPLIT_SIZES
    union = np.concatenate(list(parts.values()))
    assert len(np.unique(union)) == 130_831
    assert np.array_equal(qm9_split(130_831, "test"), parts["test"])  # seeded


def test_qm9pack_reader_or_clear_message():
    try:
        mols, index = read_qm9pack(limit=20)
    except DataError as exc:
        assert "pip install --no-deps qm9pack" in str(exc)
        return
    assert len(mols) == 20 and index[0] == 1 and mols.symbols[0] == ["C", "H", "H", "H", "H"]
    assert mols.positions[0].shape == (5, 3)


# ------------------------------------------------------------------ XYZ resynchronisation
def _water_xyz() -> str:
    return Chem.MolToXYZBlock(_embedded("O"))


def test_xyz_junk_between_frames_is_skipped_and_counted(tmp_path, dom, caplog):
    block = _water_xyz()
    path = tmp_path / "w.xyz"
    path.write_text(block + "this is not a frame\n" + block + block)
    with caplog.at_level(logging.WARNING):
        ds = dom.load_data(path, {})
    assert len(ds) == 3
    assert [r for _, r in ds.skipped] == ["not an XYZ frame (atom count, comment, 'symbol x y z' lines)"]
    assert "w.xyz line 6" == ds.skipped[0][0]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1 and "skipped 1 of 4 records" in lines[0] and "\n" not in lines[0]


def test_xyz_wrong_atom_counts_skip_only_their_frame(tmp_path, dom):
    block = _water_xyz()                       # "3\n<comment>\nO ..\nH ..\nH ..\n"
    under = block.replace("3\n", "2\n", 1)     # count says 2, three atom lines follow
    over = block.replace("3\n", "4\n", 1)      # count says 4, three atom lines follow
    path = tmp_path / "w.xyz"
    path.write_text(block + under + block + over + block)
    ds = dom.load_data(path, {})
    assert len(ds) == 3 and ds.counts.tolist() == [3, 3, 3]
    assert [r for _, r in ds.skipped] == ["atom count 2 but 3 atom lines follow",
                                          "atom count 4 but 3 atom lines follow"]
    assert [rec for rec, _ in ds.skipped] == ["w.xyz frame at line 6", "w.xyz lines 16-20"]
    for i in range(3):
        assert np.allclose(ds.molecule(i)[0], ds.molecule(0)[0])


def test_sdf_flat_coordinates_under_a_3d_flag_are_2d(tmp_path, dom, caplog):
    flat = Chem.MolFromSmiles("CCO")
    AllChem.Compute2DCoords(flat)
    block = Chem.MolToMolBlock(flat)
    lines = block.split("\n")
    assert "2D" in lines[1]
    lines[1] = lines[1].replace("2D", "3D")
    path = tmp_path / "m.sdf"
    path.write_text("\n".join(lines) + "$$$$\n" + Chem.MolToMolBlock(_embedded("CC")) + "$$$$\n")
    with caplog.at_level(logging.WARNING):
        ds = dom.load_data(path, {})
    assert Chem.MolFromMolBlock("\n".join(lines)).GetConformer().Is3D()   # the flag claims 3-D
    assert len(ds) == 1 and ds.skipped == [("m.sdf record 1", "2-D coordinates")]


# ------------------------------------------------------------------ folders
def test_folder_summarises_skipped_files_in_one_line(tmp_path, dom, caplog):
    folder = tmp_path / "mols"
    (folder / "sub").mkdir(parents=True)
    w = Chem.SDWriter(str(folder / "a.sdf"))
    w.write(_embedded("CCO"))
    w.close()
    (folder / "sub" / "b.xyz").write_text(_water_xyz())
    (folder / "p.pdb").write_text("ATOM\n")
    (folder / "sub" / "q.mol2").write_text("@<TRIPOS>\n")
    (folder / "empty.xyz").write_text("")
    (folder / ".hidden.sdf").write_text("junk")
    (folder / "broken.smi").write_text("# only a comment\n")
    with caplog.at_level(logging.WARNING):
        ds = dom.load_data(folder, {})
    assert len(ds) == 2
    msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith(str(folder) + ":")]
    assert msgs == [f"{folder}: skipped 4 files: 2 unsupported extension (.mol2, .pdb), 1 empty (empty.xyz), "
                    "1 unreadable (broken.smi)"]


def test_rdkit_log_settings_of_the_caller_are_kept(tmp_path):
    """smiles_of and the readers silence RDKit while they work and then restore the caller's
    settings (they used to switch every RDKit log level on afterwards)."""
    from rdkit import RDLogger, rdBase

    from diffuse.domains.molecules.chem import smiles_of
    from diffuse.domains.molecules.readers import read_smiles

    before = rdBase.LogStatus()
    path = tmp_path / "a.smi"
    path.write_text("CCO\nC1CC1(\n")
    try:
        RDLogger.DisableLog("rdApp.*")
        off = rdBase.LogStatus()
        assert "enabled" not in off
        assert smiles_of(Chem.MolFromSmiles("CCO")) == "CCO"
        assert smiles_of(Chem.RWMol(Chem.MolFromSmiles("C(C)(C)(C)(C)C", sanitize=False))) is None
        read_smiles(path)
        assert rdBase.LogStatus() == off
        RDLogger.EnableLog("rdApp.warning")
        mixed = rdBase.LogStatus()
        assert mixed != off
        smiles_of(Chem.MolFromSmiles("CCO"))
        read_smiles(path)
        assert rdBase.LogStatus() == mixed
    finally:
        for line in before.splitlines():
            name, state = line.split(":")
            (RDLogger.EnableLog if state == "enabled" else RDLogger.DisableLog)(name)
    assert rdBase.LogStatus() == before
