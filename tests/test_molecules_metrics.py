"""EDM's metrics on known molecules and the SDF / XYZ writer round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from rdkit import Chem

from diffuse.core.data.domain import Batch
from diffuse.domains.molecules import BondTables, MoleculeDomain, analyze_molecule, validity_table
from diffuse.domains.molecules.dataset import load_bundled


@pytest.fixture(scope="module")
def bundled():
    return load_bundled({})


def test_bond_orders_follow_edm_thresholds():
    """Two carbons: single below 1.54+0.10 A, double below 1.34+0.05, triple below 1.20+0.03."""
    tables = BondTables(["H", "C", "N", "O", "F"])
    c2 = np.array([1, 1])
    for d, order in [(1.66, 0), (1.63, 1), (1.40, 1), (1.38, 2), (1.24, 2), (1.22, 3), (1.10, 3)]:
        pos = np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0]])
        assert tables.bond_orders(pos, c2)[0, 1] == order, d
    # H-F (0.92 + 0.10) has no double-bond length: only single or none
    hf = np.array([0, 4])
    assert tables.bond_orders(np.array([[0, 0, 0], [0.8, 0, 0.0]]), hf)[0, 1] == 1
    assert tables.bond_orders(np.array([[0, 0, 0], [1.03, 0, 0.0]]), hf)[0, 1] == 0


def test_qm9_data_scores_near_the_published_data_figures(bundled):
    """QM9 itself: about 99.0 % atom and 95.2 % molecule stability, 97.7 % validity (EDM)."""
    table = validity_table(bundled.reports(600))
    assert table["atom_stability"] > 0.985
    assert 0.92 < table["mol_stability"] <= 0.98
    assert table["validity"] > 0.95
    assert table["connected"] > 0.99
    assert table["uniqueness"] > 0.99


def test_stable_qm9_molecules_recover_qm9s_own_smiles(bundled):
    """Bonds inferred from B3LYP geometries rebuild the molecule QM9 lists (stereo aside)."""
    checked = 0
    for i, rep in enumerate(bundled.reports(150)):
        if not rep.stable:
            continue
        qm9 = Chem.MolToSmiles(Chem.MolFromSmiles(bundled.names[i].split()[2]), isomericSmiles=False)
        ours = Chem.MolToSmiles(Chem.MolFromSmiles(rep.smiles), isomericSmiles=False)
        assert ours == qm9, bundled.names[i]
        checked += 1
    assert checked > 120


def test_distorted_geometries_are_not_stable(bundled):
    tables = BondTables(bundled.codec.elements)
    i = next(k for k, r in enumerate(bundled.reports(50)) if r.stable and r.num_atoms > 8)
    pos, types, _ = bundled.molecule(i)
    assert analyze_molecule(pos, types, tables).stable
    stretched = analyze_molecule(pos * 1.4, types, tables)
    squeezed = analyze_molecule(pos * 0.75, types, tables)
    # no bonds left: no atom is stable, the molecule falls apart (EDM's validity still accepts the
    # largest fragment, a lone atom that RDKit fills with implicit hydrogens)
    assert not stretched.stable and not stretched.connected and stretched.stable_atoms == 0
    assert Chem.MolFromSmiles(stretched.smiles).GetNumAtoms() == 1
    assert not squeezed.stable
    assert squeezed.stable_atoms < squeezed.num_atoms


def test_uniqueness_and_novelty_closed_form(bundled):
    reps = [r for r in bundled.reports(40) if r.valid][:10]
    doubled = reps + reps
    t = validity_table(doubled, reference_smiles={reps[0].smiles, reps[1].smiles})
    assert t["validity"] == 1.0 and t["uniqueness"] == pytest.approx(0.5)
    assert t["novelty"] == pytest.approx(8 / 10)
    assert t["valid_unique"] == pytest.approx(0.5)


def test_domain_metrics_on_training_molecules(bundled):
    dom = MoleculeDomain()
    sub = bundled.subset(torch.arange(30))
    samples = sub.batch(torch.arange(30))
    info = bundled.info()
    json.dumps(info)
    dom = dom.bind(info)
    desc = dom.describe_samples(samples)
    assert set(desc) >= {"atom_stability", "mol_stability", "validity", "uniqueness", "connected"}
    assert "novelty" not in desc
    m = dom.metrics(samples, bundled)   # whole data as the reference: novelty against itself
    assert m["novelty"] == 0.0 and m["mol_stability"] == desc["mol_stability"]


def test_metric_table_leads_with_what_a_chemist_trusts(bundled):
    t = validity_table(bundled.reports(20), reference_smiles=set())
    assert list(t)[:7] == ["valid_connected", "mol_stability", "atom_stability", "validity", "uniqueness",
                           "valid_unique", "novelty"]
    reps = bundled.reports(20)
    assert t["valid_connected"] == sum(r.valid and r.connected for r in reps) / 20


def test_valid_connected_rejects_fragment_clouds():
    """Three far-apart F atoms: EDM's validity accepts the largest fragment (one F), valid & connected does not."""
    tables = BondTables(["H", "C", "N", "O", "F"])
    pos = np.array([[0.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0]])
    rep = analyze_molecule(pos, np.array([4, 4, 4]), tables)
    t = validity_table([rep])
    assert t["validity"] == 1.0 and t["valid_connected"] == 0.0 and t["mol_stability"] == 0.0


def test_subset_exposes_only_its_own_members(bundled):
    sub = bundled.subset(torch.arange(30))
    own = {r.smiles for r in bundled.reports(30) if r.valid}
    assert sub.reference_smiles == own and len(own) < len(bundled.reference_smiles)
    assert sub.codec is bundled.codec                       # whole-data-set facts are shared
    with pytest.raises(AttributeError):
        sub.names                                           # per-member data is not forwarded
    nested = sub.subset(torch.arange(10, 20))
    assert nested.reference_smiles == {r.smiles for r in bundled.reports(20)[10:] if r.valid}


def test_novelty_is_against_the_training_part_only(bundled):
    """The held-out part of a split is the evaluation reference; novelty counts against the rest."""
    from diffuse.domains.molecules.domain import training_smiles

    dom = MoleculeDomain().bind(bundled.info())
    rest, held = bundled.split(0.1, seed=0)
    tables = BondTables(bundled.codec.elements)
    train = {analyze_molecule(*bundled.molecule(i)[:2], tables).smiles for i in rest.indices.tolist()} - {None}
    assert training_smiles(held) == train
    samples = bundled.batch(held.indices[:40])     # held-out molecules as "samples"
    unique = {analyze_molecule(*bundled.molecule(i)[:2], tables).smiles for i in held.indices[:40].tolist()} - {None}
    m = dom.metrics(samples, held)
    assert m["novelty"] == pytest.approx(len(unique - train) / len(unique)) and m["novelty"] > 0.9
    m_train = dom.metrics(bundled.batch(rest.indices[:40]), held)
    assert m_train["novelty"] == 0.0                 # training molecules are never novel


def test_sdf_and_xyz_round_trip(tmp_path, bundled):
    info = bundled.info()
    dom = MoleculeDomain().bind(info)
    samples = bundled.batch(torch.tensor([3, 17, 250, 999]))
    # distort one molecule so that an unstable sample is written too
    x = samples.x.clone()
    x[samples.space.batch == 1, :3] *= 1.3
    samples = Batch(x, samples.space)
    paths = dom.write(samples, tmp_path)
    sdf = tmp_path / "molecules.sdf"
    assert sdf in paths and len(paths) == 5
    mols = [m for m in Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False)]
    assert len(mols) == 4
    from diffuse.domains.molecules.domain import analyze_samples
    molecules, reports = analyze_samples(samples, info)
    for mol, (pos, types, _), rep in zip(mols, molecules, reports):
        assert [a.GetSymbol() for a in mol.GetAtoms()] == [info["elements"][t] for t in types]
        assert np.allclose(mol.GetConformer().GetPositions(), pos, atol=1e-3)
        assert mol.GetNumBonds() == int((np.triu(rep.bonds) > 0).sum())
        assert mol.GetIntProp("mol_stable") == int(rep.stable)
        assert mol.GetProp("smiles") == (rep.smiles or "")
        if rep.valid and rep.connected:  # a valid one-fragment record sanitizes after reading back, to the same SMILES
            m2 = Chem.Mol(mol)
            Chem.SanitizeMol(m2)
            assert Chem.MolToSmiles(Chem.RemoveHs(m2), isomericSmiles=False) == Chem.MolToSmiles(Chem.MolFromSmiles(rep.smiles))
    assert mols[1].GetIntProp("mol_stable") == 0
    xyz = Chem.MolFromXYZFile(str(paths[1]))
    assert xyz.GetNumAtoms() == len(molecules[0][1])
    assert np.allclose(xyz.GetConformer().GetPositions(), molecules[0][0], atol=1e-5)


# ------------------------------------------------------------------ EDM's GEOM-Drugs rule
#: EDM's ``get_bond_order(a, b, d, check_exists=True)`` restated: tables read in the given order only
def _edm_order(a: str, b: str, d_pm: float) -> int:
    from diffuse.domains.molecules.chem import BOND_LENGTHS_DOUBLE as B2, BOND_LENGTHS_SINGLE as B1, \
        BOND_LENGTHS_TRIPLE as B3, MARGINS
    if a not in B1 or b not in B1[a]:
        return 0
    if d_pm < B1[a][b] + MARGINS[0]:
        if a in B2 and b in B2[a] and d_pm < B2[a][b] + MARGINS[1]:
            if a in B3 and b in B3[a] and d_pm < B3[a][b] + MARGINS[2]:
                return 3
            return 2
        return 1
    return 0


#: EDM's GEOM-Drugs atom decoder (ordered by atomic number); pairs are sorted by this order
GEOM_DECODER = ["H", "B", "C", "N", "O", "F", "Al", "Si", "P", "S", "Cl", "As", "Br", "I", "Hg", "Bi"]


def test_geom_rule_reads_the_tables_as_edms_geom_lookup():
    tables = BondTables(GEOM_DECODER, rule="geom")
    assert tables.rule == "geom"
    rng = np.random.default_rng(0)
    for i, a in enumerate(GEOM_DECODER):
        for j, b in enumerate(GEOM_DECODER):
            first, second = (a, b) if i <= j else (b, a)
            for d in rng.uniform(90, 260, 6).tolist() + [119.0, 159.0, 161.0, 190.0]:
                pos = np.array([[0.0, 0, 0], [d / 100.0, 0, 0]])
                assert tables.bond_orders(pos, np.array([i, j]))[0, 1] == _edm_order(first, second, d), (a, b, d)
    # C=S is listed under C only and still found double (pair read as (C, S)); P=S under P only
    s_c = BondTables(["C", "S"], rule="geom")
    assert s_c.bond_orders(np.array([[0.0, 0, 0], [1.62, 0, 0]]), np.array([1, 0]))[0, 1] == 2
    p_s = BondTables(["S", "P"], rule="geom")
    assert p_s.bond_orders(np.array([[0.0, 0, 0], [1.88, 0, 0]]), np.array([0, 1]))[0, 1] == 2


def test_bond_rule_is_chosen_by_the_elements(bundled):
    from diffuse.domains.molecules.chem import bond_rule
    assert bond_rule(["H", "C", "N", "O", "F"]) == "qm9" and bond_rule(["H", "C", "O"]) == "qm9"
    assert bond_rule(["H", "C", "N", "O", "S", "Cl"]) == "geom" and bond_rule(["H", "C"], "geom") == "geom"
    with pytest.raises(ValueError, match="bond rule"):
        bond_rule(["H"], "drugs")
    assert bundled.info()["bond_rule"] == "qm9"


def _egfr_molecules(limit: int = 40):
    from rdkit import RDConfig
    import os
    path = os.path.join(RDConfig.RDContribDir, "PBF", "testData", "egfr.sdf")
    if not os.path.isfile(path):
        pytest.skip("RDKit's egfr.sdf is not installed")
    out = []
    for mol in Chem.SDMolSupplier(path, removeHs=False):
        if mol is not None and len(out) < limit:
            out.append(mol)
    return out


def test_geom_validity_accepts_real_drug_like_molecules():
    """Real 3-D drug-like molecules (the first 40 of RDKit's EGFR set, with Cl / Br / S) are all
    valid under the GEOM rule (single bonds into RDKit, as EDM's GEOM-Drugs evaluation), while
    the QM9 rule's inferred double bonds break many aromatic rings."""
    mols = _egfr_molecules()
    elements = sorted({a.GetSymbol() for m in mols for a in m.GetAtoms()},
                      key=Chem.GetPeriodicTable().GetAtomicNumber)
    assert set(elements) - {"H", "C", "N", "O", "F"}         # drug-like elements present
    geom = BondTables(elements)
    assert geom.rule == "geom"
    index = {e: k for k, e in enumerate(elements)}
    reports = [analyze_molecule(m.GetConformer().GetPositions(), np.array([index[a.GetSymbol()] for a in m.GetAtoms()]),
                                geom) for m in mols]
    t = validity_table(reports)
    assert t["validity"] == 1.0 and t["valid_connected"] == 1.0
    qm9 = BondTables(elements, rule="qm9")
    t_qm9 = validity_table([analyze_molecule(m.GetConformer().GetPositions(),
                                             np.array([index[a.GetSymbol()] for a in m.GetAtoms()]), qm9) for m in mols])
    assert t_qm9["validity"] < 0.8 and t_qm9["atom_stability"] == t["atom_stability"]


def test_geom_validity_rejects_an_over_bonded_atom():
    """A carbon with five hydrogens at bond length: invalid whatever the rule (RDKit: valence 5)."""
    d = 1.09
    pos = np.array([[0.0, 0, 0], [d, 0, 0], [-d, 0, 0], [0, d, 0], [0, -d, 0], [0, 0, d]])
    for rule in ("qm9", "geom"):
        rep = analyze_molecule(pos, np.array([1, 0, 0, 0, 0, 0]), BondTables(["H", "C", "S"], rule=rule))
        assert not rep.valid and rep.connected and not rep.stable
    # Cl-Cl at 1.99 A: a single bond, valid and stable under the GEOM rule
    rep = analyze_molecule(np.array([[0.0, 0, 0], [1.99, 0, 0]]), np.array([0, 0]), BondTables(["Cl"]))
    assert rep.valid and rep.stable and rep.smiles == "ClCl"


def test_bond_rule_option_is_recorded_and_checked():
    from diffuse.core.errors import DataError

    dom = MoleculeDomain()
    ds = dom.load_data(None, {"bond_rule": "geom"})
    assert ds.info()["bond_rule"] == "geom" and ds.subset(torch.arange(3)).info()["bond_rule"] == "geom"
    with pytest.raises(DataError, match="unknown bond_rule 'drugs'"):
        dom.load_data(None, {"bond_rule": "drugs"})
