"""Molecule property conditioning (EDM section 5.2): the ``property`` condition, atom counts drawn
given a property, the EGNN's context input (null = no condition; equivariance under guidance),
a tiny conditional model that learns its condition, the invariant property predictor, and the
CLI's bad-input rows."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import diffuse.api as api
from diffuse.cli.main import main
from diffuse.core.data.condition import Condition, VectorKind, parse_condition
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.sampling.generate import generate
from diffuse.core.data.graph import GraphSpace
from diffuse.core.sampling.guidance import Guidance, classifier_free_guidance
from diffuse.core.data.registry import get_domain
from diffuse.core.sampling.ancestral import ddim
from diffuse.core.sampling.grids import time_grid
from diffuse.domains.molecules.dataset import BUNDLED_FILE, QM9_ELEMENTS, FeatureCodec, MoleculeDataset
from diffuse.domains.molecules.egnn import EGNN
from diffuse.domains.molecules.property import (PropertyPredictor, atom_count_table, atoms_only_baseline,
                                                draw_atom_counts, parse_property_names)

pytestmark = pytest.mark.usefixtures("one_thread")
DOM = get_domain("molecules")
F64 = torch.float64


def bundled(names="alpha"):
    return DOM.load_data(None, {**DOM.default_data(), **DOM.condition_data_options([f"property:{names}"])})


def rotation(seed):
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    return q


# ------------------------------------------------------------------ names, normalisation, data
def test_condition_names_parse_and_bad_names_are_rejected():
    assert DOM.condition_data_options(["property:alpha"]) == {"properties": ["alpha"]}
    assert DOM.condition_data_options(["property:alpha,GAP", "property:cv,alpha"]) == \
        {"properties": ["alpha", "gap", "Cv"]}
    assert parse_property_names(" mu , homo ") == ["mu", "homo"]
    for bad, match in (["property:beta"], "unknown molecule property 'beta'"), (["label"], "property:NAME"), \
                      (["property:"], "needs a property name"):
        with pytest.raises(ValueError, match=match):
            DOM.condition_data_options(bad)


def test_batches_carry_properties_normalised_by_the_training_data_and_they_round_trip():
    ds = bundled("alpha,gap")
    raw = np.load(BUNDLED_FILE)
    truth = raw["properties"][:, [1, 4]].astype(np.float64)           # columns alpha, gap
    assert [str(n) for n in raw["property_names"]] == ["mu", "alpha", "homo", "lumo", "gap", "Cv"]
    b = ds.batch(torch.arange(len(ds)))
    kind = b.cond.kinds["property"]
    v = b.cond["property"]
    assert v.shape == (len(ds), 4) and bool((v[:, 2:] == 1).all())
    # normalised with the data's own mean / std: the batch columns are standardised
    torch.testing.assert_close(v[:, :2].double().mean(0), torch.zeros(2, dtype=F64), atol=1e-5, rtol=0)
    torch.testing.assert_close(v[:, :2].double().std(0), torch.ones(2, dtype=F64), atol=1e-5, rtol=0)
    np.testing.assert_allclose(kind.mean, truth.mean(0), rtol=1e-6)
    # describe() undoes parse(): the user's value comes back
    back = Condition({"property": kind.parse({"alpha": [40.5, 90.0], "gap": 5000}, 2)}, {"property": kind}).describe()
    assert back["property"][0]["alpha"] == pytest.approx(40.5, rel=1e-6)
    assert back["property"][1] == pytest.approx({"alpha": 90.0, "gap": 5000.0}, rel=1e-6)
    described = b.cond.select(slice(0, 3)).describe()["property"]
    np.testing.assert_allclose([[d["alpha"], d["gap"]] for d in described], truth[:3], rtol=1e-5)
    # the recorded spec rebuilds the same kind; a split keeps the normalisation of its data
    info = ds.info()
    assert DOM.bind(info).condition_kinds()["property"].spec() == kind.spec()
    train, held = ds.split(0.25, seed=1)
    # the split refits the normalisation to the training part only (issue 33): both parts share it
    assert train.property_kind().spec() == held.property_kind().spec() == ds.property_kind().spec()
    np.testing.assert_allclose(train.property_kind().mean, truth[train.indices.numpy()].mean(0), rtol=1e-6)
    np.testing.assert_allclose(train.property_kind().std, truth[train.indices.numpy()].std(0, ddof=1), rtol=1e-5)
    assert not np.allclose(train.property_kind().mean, kind.mean)   # the held-out quarter no longer counts
    assert info["property_atoms"]["names"] == ["alpha", "gap"] and info["property_units"]["gap"] == "meV"
    assert len(info["property_atoms"]["num_atoms"]) == len(ds)


def test_only_some_properties_given_and_null_and_dropout():
    kind = bundled("alpha,gap").property_kind()
    c = parse_condition({"property": kind}, {"property": {"gap": 6000}}, 3)
    v = c["property"]
    assert bool((v[:, 2] == 0).all() and (v[:, 0] == 0).all() and (v[:, 3] == 1).all())   # alpha absent
    null = parse_condition({"property": kind}, None, 3)
    assert bool((null["property"] == 0).all()) and bool(kind.is_null(null["property"]).all())
    dropped = c.drop(torch.tensor([True, False, True]))
    assert kind.is_null(dropped["property"]).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="unknown property beta"):
        parse_condition({"property": kind}, {"property": {"beta": 1}}, 2)
    with pytest.raises(ValueError, match="must be a number"):
        kind.parse({"alpha": "big"}, 2)


def test_data_without_properties_cannot_condition(tmp_path):
    xyz = tmp_path / "m.xyz"
    xyz.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    with pytest.raises(ValueError, match="carries no properties"):
        DOM.load_data(str(xyz), {"properties": ["alpha"]})


# ------------------------------------------------------------------ p(N | property)
def test_atom_counts_are_drawn_given_the_property():
    counts = np.array([5] * 60 + [9] * 60)
    props = counts[:, None] * 10.0 + np.random.default_rng(0).normal(0, 1, (120, 1))   # alpha ~ 10 N
    table = atom_count_table(counts, props, ["alpha"])
    hist = [[5, 60], [9, 60]]
    kind = VectorKind(["alpha"], [70.0], [20.0])
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    small = Condition({"property": kind.parse({"alpha": 48.0}, 200)}, {"property": kind})
    large = Condition({"property": kind.parse({"alpha": 93.0}, 200)}, {"property": kind})
    # the 50 nearest molecules all have the matching size
    assert draw_atom_counts(table, hist, small, gens).tolist() == [5] * 200
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    assert draw_atom_counts(table, hist, large, gens).tolist() == [9] * 200
    # no property given: the plain histogram (both sizes, about half each)
    gens = [torch.Generator().manual_seed(i) for i in range(200)]
    free = draw_atom_counts(table, hist, Condition.null_of({"property": kind}, 200), gens)
    assert 70 < int((free == 5).sum()) < 130
    # sample i depends on generator i only (batch-size independence)
    g = lambda: [torch.Generator().manual_seed(i) for i in range(10)]
    assert draw_atom_counts(table, hist, Condition.null_of({"property": kind}, 10), g()).tolist() == free[:10].tolist()


def test_bundled_counts_follow_alpha_and_given_counts_win():
    ds = bundled("alpha")
    info = ds.info()
    kind = ds.property_kind()
    n = 64
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(n)]
    dom = DOM.bind(info)
    lo = dom.conditional_structure(n, Condition({"property": kind.parse(50.0, n)}, {"property": kind}), gens())
    hi = dom.conditional_structure(n, Condition({"property": kind.parse(95.0, n)}, {"property": kind}), gens())
    real = ds.counts.double()
    alpha = ds.properties[:, ds.property_names.index("alpha")]
    # the drawn counts are those of the 50 real molecules nearest in alpha, in about their shares
    for drawn, target in ((lo, 50.0), (hi, 95.0)):
        near = real[torch.argsort((alpha - target).abs(), stable=True)[:50]]
        assert set(drawn.tolist()) <= set(near.long().tolist())
        assert abs(float(drawn.double().mean() - near.mean())) < 1.0
    assert float(hi.double().mean()) > float(lo.double().mean()) + 4
    # two properties: neighbours in both (scaled by their stds)
    ds2 = bundled("alpha,gap")
    k2 = ds2.property_kind()
    both = Condition({"property": k2.parse({"alpha": 75.0, "gap": 4000.0}, n)}, {"property": k2})
    drawn = DOM.bind(ds2.info()).conditional_structure(n, both, gens())
    y = ds2.properties[:, [ds2.property_names.index("alpha"), ds2.property_names.index("gap")]]
    dist = ((y - torch.tensor([75.0, 4000.0], dtype=F64)) / torch.tensor(k2.std, dtype=F64)).pow(2).sum(1)
    assert set(drawn.tolist()) <= set(ds2.counts[torch.argsort(dist, stable=True)[:50]].tolist())


# ------------------------------------------------------------------ the EGNN's context
def _graph(counts, seed=0):
    counts = torch.tensor(counts)
    space = GraphSpace(torch.repeat_interleave(torch.arange(len(counts)), counts), len(counts), centred=3)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(int(counts.sum()), 3 + len(QM9_ELEMENTS), dtype=F64, generator=g)
    return space.project(x), space


def test_egnn_null_context_equals_no_condition_and_context_matters():
    torch.manual_seed(0)
    net = EGNN(len(QM9_ELEMENTS), hidden=16, layers=2, context_dim=2).double()
    kind = VectorKind(["alpha"], [75.0], [8.0])
    x, space = _graph([3, 5])
    t = torch.tensor([400.0, 600.0], dtype=F64)
    cond = Condition({"property": kind.parse([60.0, 90.0], 2)}, {"property": kind})
    torch.testing.assert_close(net(x, t, cond.null(), space), net(x, t, None, space))
    torch.testing.assert_close(net(x, t, cond.drop(torch.tensor([True, True])), space), net(x, t, None, space))
    assert (net(x, t, cond, space) - net(x, t, None, space)).abs().max().item() > 1e-4


def test_cfg_guided_property_sampling_is_rotation_equivariant():
    torch.manual_seed(0)
    cfg = api.make_config("molecules").diffusion
    diff = Diffusion(cfg)
    net = EGNN(len(QM9_ELEMENTS), hidden=16, layers=2, context_dim=2).double()
    den = diff.denoiser(net)
    kind = VectorKind(["alpha"], [75.0], [8.0])
    x1, space = _graph([4, 6, 5], seed=3)
    cond = Condition({"property": kind.parse([55.0, 80.0, 95.0], 3)}, {"property": kind})
    q = rotation(8)
    grid = time_grid(den.schedule, 8)
    guided = classifier_free_guidance(den, space, cond, 2.0, den.schedule)
    run = lambda x: ddim(guided, x, grid, schedule=den.schedule, space=space)
    rot_in = torch.cat([x1[:, :3] @ q.T, x1[:, 3:]], 1)
    out, rot = run(x1), run(rot_in)
    torch.testing.assert_close(rot[:, :3], out[:, :3] @ q.T, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(rot[:, 3:], out[:, 3:], rtol=1e-7, atol=1e-7)
    assert float(space.graph_mean(out[:, :3]).abs().max()) < 1e-10


# ------------------------------------------------------------------ a condition that is learned
def _two_sizes(m=64, seed=0):
    """4-carbon tetrahedra: radius 0.5 A at alpha = 10, radius 1.5 A at alpha = 50."""
    rng = np.random.default_rng(seed)
    tet = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], np.float64) / np.sqrt(3)
    big = np.arange(m) % 2 == 1
    pos = np.concatenate([tet * (1.5 if b else 0.5) + rng.normal(0, 0.03, tet.shape) for b in big])
    types = np.ones(4 * m, np.int64)
    ds = MoleculeDataset(types, pos, np.zeros_like(types), np.arange(0, 4 * m + 1, 4), FeatureCodec(QM9_ELEMENTS))
    return ds.with_properties(np.where(big, 50.0, 10.0)[:, None], ["alpha"], ["alpha"])


def _conditional_model_moves_samples(seed: int) -> None:
    """A tiny conditional model trained with ``seed`` (300 Adam steps) moves samples to the requested
    property. Issue 33 made this hold for any seed: 150 steps learned the condition for one seed in
    four; the null condition's two halves were compared by medians of 8 radii from a two-size
    mixture (which jump between its modes: with a perfect model the old check held about one time
    in three), now by the means of 32; and the samples are drawn with the ancestral sampler (the
    molecule domain's own), as DDIM's 20 deterministic steps from t = 1, where alpha is 3e-3 on this
    schedule, magnified the tiny model's errors into exploded molecules."""
    torch.manual_seed(seed)
    ds = _two_sizes()
    dom = DOM.bind(ds.info())
    cfg = api.make_config("molecules", config={"model": {"preset": "tiny"}}).diffusion   # cond_drop 0.1
    diff = Diffusion(cfg)
    den = diff.denoiser(dom.build_backbone({"preset": "tiny"}))
    assert den.backbone.context_dim == 2
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for step in range(300):
        b = ds.batch(torch.randperm(len(ds), generator=g)[:32])
        loss = diff.training_losses(den, b, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    den.eval()
    kind = dom.condition_kinds()["property"]
    n = 64
    cond = parse_condition({"property": kind}, {"property": {"alpha": [10.0] * 32 + [50.0] * 32}}, n)

    def radii(scale):
        out = generate(den, dom, n, sampler="ddpm", steps=100, seed=1, cond=cond, structure=[4] * n,
                       guidance=[Guidance.parse(scale)])
        r = out.x[:, :3].norm(dim=1).reshape(n, 4).mean(1)
        return r[:32], r[32:]

    uncond = [float(r.mean()) for r in radii(0.0)]   # the null condition: the same mixture for both halves
    assert abs(uncond[0] - uncond[1]) < 0.3, uncond
    small, large = (float(r.median()) for r in radii(1.0))
    assert large - small > 0.5 and small < min(uncond) and large > max(uncond), (small, large, uncond)
    small, large = (float(r.median()) for r in radii(2.0))   # guided: closer to the requested 0.5 and 1.5 A
    assert abs(small - 0.5) < 0.2 and abs(large - 1.5) < 0.35, (small, large)


def test_tiny_conditional_model_moves_samples_to_the_requested_property():
    _conditional_model_moves_samples(0)


@pytest.mark.skipif(os.environ.get("DIFFUSE_SLOW_TESTS") != "1",
                    reason="eight trainings of a tiny model (about 5 minutes on 2 loaded cores); run with "
                           "DIFFUSE_SLOW_TESTS=1")
@pytest.mark.parametrize("seed", range(1, 8))
def test_the_conditional_model_learns_for_any_seed(seed):
    _conditional_model_moves_samples(seed)


# ------------------------------------------------------------------ the property predictor
def test_property_predictor_is_e3_invariant_and_baseline_is_the_mean_per_count():
    torch.manual_seed(0)
    net = PropertyPredictor(len(QM9_ELEMENTS), 2, hidden=16, layers=2, mean=[70.0, 6000.0], std=[8.0, 1000.0]).double()
    x, space = _graph([4, 7, 5], seed=2)
    q = rotation(3)
    moved = torch.cat([x[:, :3] @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=F64), x[:, 3:]], 1)
    torch.testing.assert_close(net(moved, space), net(x, space))
    perm = torch.tensor([3, 2, 1, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15])   # atoms of molecule 0 permuted
    torch.testing.assert_close(net(x[perm], space), net(x, space))
    y = atoms_only_baseline(np.array([5, 5, 9, 9]), np.array([[1.0], [3.0], [10.0], [12.0]]), np.array([5, 9, 8, 4]))
    np.testing.assert_allclose(y[:, 0], [2.0, 11.0, 11.0, 2.0])


# ------------------------------------------------------------------ end to end: api and CLI
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("props")
    common = dict(progress=False, config={"model": {"preset": "tiny"}}, steps=3, batch_size=8, warmup_steps=1,
                  checkpoint_every=0, eval_samples=0, seed=0)
    api.train("molecules", out=root / "alpha", conditions=["property:alpha"], **common)
    api.train("molecules", out=root / "plain", **common)
    return root


def test_api_samples_at_a_property_with_counts_drawn_jointly_or_given(runs):
    model = api.load(runs / "alpha", device="cpu")
    assert model.data_info["conditions"]["property"]["names"] == ["alpha"]
    kw = dict(sampler="ddim", steps=3, seed=0)
    lo = model.sample(8, cond={"property": {"alpha": 45}}, guidance_scale=2, **kw)
    hi = model.sample(8, cond={"property": {"alpha": 100}}, guidance_scale=2, batch_size=3, **kw)
    assert float(hi.space.counts.double().mean()) > float(lo.space.counts.double().mean()) + 3
    assert hi.cond.describe()["property"][0]["alpha"] == pytest.approx(100.0, rel=1e-6)
    again = model.sample(8, cond={"property": {"alpha": 100}}, guidance_scale=2, batch_size=8, **kw)
    assert again.space.counts.tolist() == hi.space.counts.tolist()
    given = model.sample(3, cond={"property": {"alpha": 100}}, structure=[6, 7, 8], **kw)
    assert given.space.counts.tolist() == [6, 7, 8]


def _fails(args, match):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output and match in res.output, res.output
    assert len([line for line in res.output.strip().splitlines() if line.startswith("error:")]) == 1


def test_cli_property_sampling_and_bad_input(runs, tmp_path):
    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["sample", "-c", str(runs / "alpha"), "--num", "3", "--steps", "2",
                                    "--property", "alpha=70,90,110", "--guidance-scale", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "molecules.sdf").is_file()
    bad_out = tmp_path / "never"
    sample = ["sample", "-c", str(runs / "alpha"), "--num", "2", "--steps", "2", "--out", str(bad_out)]
    _fails([*sample, "--property", "beta=1"], "unknown property beta")
    _fails([*sample, "--property", "alpha"], "--property takes NAME=VALUE")
    _fails([*sample, "--property", "alpha=big"], "property alpha must be a number")
    _fails([*sample, "--property", "alpha=1", "--property", "alpha=2"], "given twice")
    _fails(["sample", "-c", str(runs / "plain"), "--num", "2", "--out", str(bad_out), "--property", "alpha=80"],
           "trained without conditions")
    assert not bad_out.exists()
    train_out = tmp_path / "t"
    train = ["train", "--domain", "molecules", "--steps", "1", "--no-progress", "--out", str(train_out)]
    _fails([*train, "--condition", "property:beta"], "unknown molecule property 'beta'")
    _fails([*train, "--condition", "label"], "property:NAME")
    xyz = tmp_path / "m.xyz"
    xyz.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n")
    _fails([*train, "--data", str(xyz), "--condition", "property:alpha"], "carries no properties")
    assert not train_out.exists()


def test_qm9pack_data_carries_the_same_properties(tmp_path, monkeypatch):
    """``--data qm9`` reads the properties from qm9pack's CSV columns into the bundled data's
    units: a stand-in qm9pack built from 30 bundled molecules gives back their bundled values."""
    import csv

    from diffuse.domains.molecules.build_bundled_data import PROPERTIES
    from rdkit import Chem

    raw = np.load(BUNDLED_FILE)
    table = Chem.GetPeriodicTable()
    pkg = tmp_path / "site" / "qm9pack"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    cols = ["Index", "SMILES", "Elements", "XYZ_Ang"] + [c for c, _, _ in PROPERTIES.values()]
    picks = np.arange(30)
    for part, chunk in enumerate(np.array_split(picks, 3), start=1):
        with open(pkg / "data" / f"qm9_part{part}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for i in chunk.tolist():
                a, b = int(raw["ptr"][i]), int(raw["ptr"][i + 1])
                syms = [table.GetElementSymbol(int(z)) for z in raw["z"][a:b]]
                props = [float(raw["properties"][i, k]) / factor for k, (_, _, factor) in enumerate(PROPERTIES.values())]
                w.writerow([int(raw["qm9_index"][i]), str(raw["smiles"][i]), str(syms),
                            str(raw["pos"][a:b].tolist()), *props])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ds = DOM.load_data("qm9", {"split": "all", **DOM.condition_data_options(["property:alpha,gap"])})
    assert len(ds) == 30 and ds.condition_properties == ["alpha", "gap"]
    order = [int(n.split()[1]) for n in ds.names]
    want = {int(q): k for k, q in enumerate(raw["qm9_index"][:30].tolist())}
    np.testing.assert_allclose(ds.properties.numpy(), raw["properties"][[want[q] for q in order]], rtol=1e-5)
