"""Molecules with bonds: graphs from QM9 SMILES and SDF files, the mixed batch, the edge-feature
network's symmetries, both metric protocols, the SDF round trip, completion of a fragment with its
bonds, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

import diffuse.api as diffuse
from diffuse.core.config import DiffusionConfig
from diffuse.core.errors import ConfigError, DataError
from diffuse.core.process.build import build_process
from diffuse.domains.molecules import MoleculeDomain
from diffuse.domains.molecules.bonded_metrics import analyze_graph, bonded_metrics, split_bonded
from diffuse.domains.molecules.bondnet import BondNet
from diffuse.domains.molecules.dataset import BUNDLED_FILE
from diffuse.domains.molecules.graphs import graph_from_smiles, graph_smiles

pytestmark = pytest.mark.usefixtures("one_thread")

COMPONENTS = {"pos": {"kind": "gaussian", "schedule": {"kind": "flow"}, "parameterization": "x0", "weight": 3.0},
              "atoms": {"kind": "categorical", "prior": "mask", "weight": 0.4},
              "charges": {"kind": "categorical", "prior": "mask"},
              "bonds": {"kind": "categorical", "prior": "mask", "weight": 2.0}}


@pytest.fixture(scope="module")
def bonded():
    dom = MoleculeDomain()
    ds = dom.load_data(None, {**dom.default_data(), "bonds": True})
    return ds, dom.bind(ds.info())


def _symbols(z):
    table = Chem.GetPeriodicTable()
    return [table.GetElementSymbol(int(k)) for k in z]


# ---------------------------------------------------------------------------- graphs
def test_qm9_graphs_are_their_smiles_on_their_geometry():
    with np.load(BUNDLED_FILE) as f:
        z, pos, ptr, smiles = f["z"], f["pos"], f["ptr"], f["smiles"]
    for i in (0, 1, 2, 3, 10, 11, 93):      # 10, 11, 93: strained cages whose distances add a bond
        a, b = int(ptr[i]), int(ptr[i + 1])
        bonds, charges = graph_from_smiles(_symbols(z[a:b]), pos[a:b].astype(np.float64), str(smiles[i]))
        ref = Chem.MolToSmiles(Chem.MolFromSmiles(str(smiles[i])), isomericSmiles=False)
        assert graph_smiles(_symbols(z[a:b]), bonds, charges) == ref
        d = np.linalg.norm(pos[a:b][bonds[:, 0]] - pos[a:b][bonds[:, 1]], axis=1)
        assert d.max() < 1.8          # every bond is a short one: the atoms were matched by geometry


def test_bundled_data_scores_perfectly_under_the_bonds_protocol(bonded):
    ds, dom = bonded
    metrics, _, _ = bonded_metrics(ds.batch(torch.arange(150)), ds.info())
    for key in ("atom_stability", "mol_stability", "validity", "valid_connected"):
        assert metrics[key] == 1.0, key
    assert 0.85 < metrics["edm/mol_stability"] < 1.0         # EDM's distance rule: QM9 scores ~0.95


def test_batch_pairs_hold_the_stored_bonds(bonded):
    ds, _ = bonded
    idx = torch.tensor([5, 0, 17])
    batch = ds.batch(idx)
    assert batch.x["bonds"].numel() == int(sum(n * (n - 1) // 2 for n in ds.counts[idx].tolist()))
    for mol, i in zip(split_bonded(batch, ds.info()), idx.tolist()):
        stored = np.zeros_like(mol["orders"])
        for a, b, o in ds.molecule_bonds(i).tolist():
            stored[a, b] = stored[b, a] = o
        assert np.array_equal(mol["orders"], stored)


def test_graph_stability_under_formal_charges():
    ch4 = np.zeros((5, 5), int)
    ch4[0, 1:] = ch4[1:, 0] = 1
    assert analyze_graph(["C", "H", "H", "H", "H"], ch4, [0] * 5).stable
    nh4 = analyze_graph(["N", "H", "H", "H", "H"], ch4, [1, 0, 0, 0, 0])
    assert nh4.stable and nh4.valid
    assert not analyze_graph(["N", "H", "H", "H", "H"], ch4, [0] * 5).stable     # neutral N with 4 bonds
    two = np.zeros((6, 6), int)
    two[0, 1] = two[1, 0] = 1
    rep = analyze_graph(["F", "H", "F", "H", "H", "H"], two, [0] * 6)
    assert not rep.connected and rep.stable_atoms == 2


# ---------------------------------------------------------------------------- files
def _write_sdf(path, smiles_list):
    w = Chem.SDWriter(str(path))
    for smi in smiles_list:
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=0)
        w.write(mol)
    w.close()


def test_sdf_files_give_their_bonds_and_charges(tmp_path):
    path = tmp_path / "mols.sdf"
    _write_sdf(path, ["[NH3+]CC(=O)[O-]", "C=CC#N"])
    dom = MoleculeDomain()
    ds = dom.load_data(path, {**dom.default_data(), "bonds": True})
    assert len(ds) == 2 and ds.charge_values == [-1, 0, 1]
    assert sorted(ds.member_graph_smiles) == sorted([Chem.MolToSmiles(Chem.MolFromSmiles(s))
                                                     for s in ("[NH3+]CC(=O)[O-]", "C=CC#N")])


def test_a_record_whose_bonds_rdkit_rejects_is_one_line(tmp_path):
    bad = Chem.RWMol(Chem.MolFromSmiles("C", sanitize=False))
    for _ in range(5):
        idx = bad.AddAtom(Chem.Atom("F"))
        bad.AddBond(0, idx, Chem.BondType.SINGLE)
    AllChem.Compute2DCoords(bad)
    conf = bad.GetConformer()
    for k in range(bad.GetNumAtoms()):
        p = conf.GetAtomPosition(k)
        conf.SetAtomPosition(k, (p.x, p.y, 0.1 * k))
    path = tmp_path / "bad.sdf"
    w = Chem.SDWriter(str(path))
    w.write(bad)
    w.close()
    dom = MoleculeDomain()
    with pytest.raises(DataError, match=r"bad.sdf record 1.*RDKit rejects its bonds") as err:
        dom.load_data(path, {**dom.default_data(), "bonds": True})
    assert "\n" not in str(err.value)
    xyz = tmp_path / "m.xyz"
    xyz.write_text("1\n\nC 0 0 0\n")
    with pytest.raises(DataError, match="XYZ files hold no bonds"):
        dom.load_data(xyz, {**dom.default_data(), "bonds": True})


def test_sdf_output_round_trips_the_generated_graph(bonded, tmp_path):
    ds, dom = bonded
    batch = ds.batch(torch.arange(6))
    x = dict(batch.x)
    x["bonds"] = x["bonds"].clone()
    x["bonds"][:3] = torch.tensor([3, 0, 2])                 # some chemically wrong graphs too
    batch.x.update(x)
    dom.write(batch, tmp_path)
    mols = list(Chem.SDMolSupplier(str(tmp_path / "molecules.sdf"), sanitize=False, removeHs=False))
    elements = ds.info()["elements"]
    for mol, ref in zip(mols, split_bonded(batch, ds.info())):
        assert [a.GetSymbol() for a in mol.GetAtoms()] == [elements[t] for t in ref["types"].tolist()]
        assert [a.GetFormalCharge() for a in mol.GetAtoms()] == ref["charges"].tolist()
        got = np.zeros_like(ref["orders"])
        for b in mol.GetBonds():
            got[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] = got[b.GetEndAtomIdx(), b.GetBeginAtomIdx()] = \
                int(b.GetBondTypeAsDouble())
        assert np.array_equal(got, ref["orders"])
        assert np.allclose(mol.GetConformer().GetPositions(), ref["pos"], atol=1e-4)
    valid = [m for m in mols if m.GetIntProp("valid")]
    for m in valid:                                            # a valid record sanitizes to its SMILES
        Chem.SanitizeMol(m)
        assert Chem.MolToSmiles(Chem.RemoveHs(m)) == m.GetProp("smiles")


# ---------------------------------------------------------------------------- the network's symmetries
def test_bondnet_is_invariant_in_types_and_bonds_and_equivariant_in_coordinates(bonded):
    ds, _ = bonded
    torch.manual_seed(0)
    batch = ds.batch(torch.arange(3))
    net = BondNet(5, 3, hidden=32, edge_hidden=16, layers=3).double()
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    q = q * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)          # a reflection too
    shift = torch.randn(1, 3, dtype=torch.float64)
    x = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.x.items()}
    x["pos"] = x["pos"] + 0.3 * torch.randn_like(x["pos"])
    sc = {"pos": x["pos"] + 0.1, "atoms": torch.softmax(torch.randn(len(x["atoms"]), 5, dtype=torch.float64), 1),
          "charges": torch.softmax(torch.randn(len(x["atoms"]), 3, dtype=torch.float64), 1),
          "bonds": torch.softmax(torch.randn(len(x["bonds"]), 4, dtype=torch.float64), 1)}
    t = torch.full((3,), 0.4, dtype=torch.float64)
    out = net(x, t, space=batch.space, self_cond=sc)
    moved = {**x, "pos": x["pos"] @ q.T + shift}
    out2 = net(moved, t, space=batch.space, self_cond={**sc, "pos": sc["pos"] @ q.T - shift})
    for key in ("atoms", "charges", "bonds"):
        assert torch.allclose(out[key], out2[key], atol=1e-10), key
    assert torch.allclose(out["pos"] @ q.T, out2["pos"], atol=1e-10)     # zero centre of mass: no shift
    assert torch.allclose(batch.space["pos"].graph_mean(out["pos"]), torch.zeros(3, 3, dtype=torch.float64),
                          atol=1e-10)


# ---------------------------------------------------------------------------- model level
def _model(bonded, **model):
    ds, _ = bonded
    return diffuse.build("molecules", ds.info(), model={"backbone": "bondnet", "preset": "tiny", **model},
                         diffusion={"components": COMPONENTS, "time_scale": 1.0}, device="cpu")


def test_sampling_an_untrained_model_gives_whole_molecules_and_both_protocols(bonded, tmp_path):
    model = _model(bonded)
    samples = model.sample(3, sampler="ddpm", steps=4, seed=1, structure=[5, 7, 4])
    assert samples.x["bonds"].numel() == 10 + 21 + 6
    reference = bonded[0].take(torch.arange(40))
    metrics = model.domain.metrics(samples, reference)
    assert len(reference) == 40 and reference.charge_values == bonded[0].charge_values
    assert {"mol_stability", "validity", "novelty", "edm/mol_stability", "edm/validity"} <= set(metrics)
    again = model.sample(3, sampler="ddpm", steps=4, seed=1, structure=[5, 7, 4], batch_size=2)
    assert all(torch.equal(samples.x[k], again.x[k]) for k in ("atoms", "charges", "bonds"))


def test_completion_keeps_the_fixed_atoms_and_their_bonds_exactly(bonded, tmp_path):
    path = tmp_path / "frag.sdf"
    _write_sdf(path, ["CC(=O)O"])                            # 8 atoms with hydrogens
    model = _model(bonded)
    inp = model.completion_input(path, {"num_atoms": 11})
    out = model.complete(inp, 2, steps=5, seed=0)
    assert model.known_error(out, inp) == 0.0
    known = inp[0].x
    for k in range(2):
        mol = split_bonded(out, model.data_info)[k]
        ref = split_bonded(inp[0], model.data_info)[0]
        assert np.array_equal(mol["orders"][:8, :8], ref["orders"][:8, :8])
        assert np.allclose(mol["pos"][:8], known["pos"][:8].numpy(), atol=1e-6)


def test_one_line_errors_for_mismatched_models_and_data(bonded):
    ds, dom = bonded
    with pytest.raises(ConfigError, match="bondnet"):
        dom.build_backbone({"backbone": "egnn"})
    with pytest.raises(ConfigError, match="diffusion.components is not set"):
        build_process(DiffusionConfig(), ds.info())
    plain = MoleculeDomain().bind(MoleculeDomain().load_data(None, MoleculeDomain().default_data()).info())
    with pytest.raises(ConfigError, match="bonds: true"):
        plain.build_backbone({"backbone": "bondnet"})
    with pytest.raises(diffuse_errors().NotSupportedError, match="several components"):
        _model(bonded).likelihood(2)


def diffuse_errors():
    from diffuse.core import errors
    return errors


def test_property_conditioning_and_guidance_reach_the_bond_network():
    """A bond model conditioned on QM9's polarizability: the property is the network's context, and
    classifier-free guidance over the product runs (scale 0 is the null condition's prediction)."""
    dom = MoleculeDomain()
    ds = dom.load_data(None, {**dom.default_data(), "bonds": True, "properties": ["alpha"]})
    info = ds.info()
    assert "property" in info["conditions"]
    model = diffuse.build("molecules", info, model={"backbone": "bondnet", "preset": "tiny"},
                          diffusion={"components": COMPONENTS, "time_scale": 1.0}, device="cpu")
    assert model.denoiser.backbone.context_dim == 2
    batch = ds.batch(torch.arange(4))
    assert batch.cond is not None
    out = model.sample(2, steps=3, seed=0, structure=[6, 6], cond={"property": {"alpha": 75.0}}, guidance_scale=2.0)
    assert out.x["atoms"].numel() == 12
    proc = model.diffusion
    loss = proc.training_losses(model.denoiser, batch, torch.Generator().manual_seed(0))
    assert loss.shape == (4,) and bool(torch.isfinite(loss).all())


def test_the_command_line_trains_samples_and_evaluates_a_bond_model(tmp_path):
    """``diffuse train`` with a bonds recipe (bundled data), ``diffuse sample --categorical`` and
    ``diffuse evaluate``, which prints the two protocols as two tables."""
    import json

    from click.testing import CliRunner

    from diffuse.cli.main import main

    cfg = tmp_path / "bonds.json"
    cfg.write_text(json.dumps({"domain": "molecules", "data_options": {"bonds": True},
                               "model": {"backbone": "bondnet", "preset": "tiny"},
                               "diffusion": {"components": COMPONENTS, "time_scale": 1.0},
                               "train": {"final_eval": False}}))
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(main, ["train", "--config", str(cfg), "--steps", "2", "--batch-size", "4", "--no-progress",
                               "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["sample", "-c", str(run), "--num", "2", "--steps", "3", "--categorical", "dfm_euler",
                               "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "molecules.sdf").is_file() and "(edm protocol)" in res.output
    res = runner.invoke(main, ["evaluate", "-c", str(run), "--num", "2", "--steps", "2", "--out",
                               str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "(edm protocol):" in res.output and "edm/mol_stability" in json.loads((tmp_path / "e.json").read_text())["metrics"]
    res = runner.invoke(main, ["sample", "-c", str(run), "--num", "1", "--sampler", "edm_heun", "--steps", "2"])
    assert res.exit_code == 2 and "evaluations per step" in res.output
    # few-step objectives train one continuous tensor: distilling a mixed-state model is one error line, nothing written
    res = runner.invoke(main, ["distill", "-c", str(run), "--out", str(tmp_path / "few"), "--train-steps", "1"])
    assert res.exit_code == 2 and "mixed continuous-categorical" in res.output, res.output
    assert not (tmp_path / "few").exists()
