"""The GeoLDM-style molecule autoencoder: E(3) and permutation equivariance in float64, zero centre
of mass of the latent positions, the KL against torch.distributions on the centred subspace,
shapes and the molecule layout of decoded data, a tiny training that lowers the reconstruction
loss, and a latent model that trains and samples end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import diffuse.api as api
from diffuse.core.data.domain import Batch
from diffuse.core.data.graph import GraphSpace
from diffuse.core.models.latent import LatentDomain
from diffuse.domains.molecules import FeatureCodec, MoleculeDomain
from diffuse.domains.molecules.autoencoder import MoleculeAutoencoder

pytestmark = pytest.mark.usefixtures("one_thread")  # small graphs: see conftest.py

TINY = {"latent_features": 2, "hidden": 16, "encoder_layers": 2, "decoder_layers": 2}
INFO = {"elements": ["H", "C", "N", "O", "F"], "include_charges": True, "onehot_scale": 0.25, "charge_scale": 0.1,
        "feature_dim": 9, "num_atoms_hist": [[3, 1], [5, 2]], "max_atoms": 5}


def _model(seed=0, info=INFO, **kw):
    """A tiny float64 autoencoder whose zero-initialised heads and near-zero coordinate updates are
    randomised, so that no output of the symmetry tests is trivially zero."""
    torch.manual_seed(seed)
    ae = MoleculeAutoencoder({**TINY, **kw}, info).double().eval().requires_grad_(False)
    for net in (ae.encoder, ae.decoder):
        torch.nn.init.normal_(net.head.weight, std=0.3)
        torch.nn.init.normal_(net.head.bias, std=0.3)
        for block in net.blocks:
            torch.nn.init.normal_(block[1].out.weight, std=0.3)
    with torch.no_grad():   # log-variances of moderate size, so that posterior draws stay finite
        k = ae.latent_features
        ae.encoder.head.weight[k:] *= 0.03
        ae.encoder.head.bias[k:] = -1.0
    return ae


def _batch(counts, seed=0, info=INFO):
    g = torch.Generator().manual_seed(seed)
    n = int(sum(counts))
    sp = GraphSpace(torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)), len(counts))
    codec = FeatureCodec.from_info(info)
    pos = torch.randn(n, 3, dtype=torch.float64, generator=g) * 1.5
    types = torch.randint(0, len(codec.elements), (n,), generator=g)
    charges = torch.randint(-1, 2, (n,), generator=g)
    return Batch(sp.project(codec.encode(pos, types, charges)), sp, None, {})


def _orthogonal(seed, reflect):
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    if (torch.det(q) < 0) != reflect:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    return q


def _moved(batch, q, shift):
    x = batch.x.clone()
    x[:, :3] = x[:, :3] @ q.T + shift
    return Batch(x, batch.space, None, {})


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_translation_equivariance_float64(reflect):
    ae = _model()
    batch = _batch([5, 9, 3])
    q, shift = _orthogonal(1, reflect), torch.tensor([3.0, -1.0, 7.5], dtype=torch.float64)
    moved = _moved(batch, q, shift)
    mu_x, log_s, mu_h, logvar_h = ae.posterior(batch)
    mu_x2, log_s2, mu_h2, logvar_h2 = ae.posterior(moved)
    assert float((mu_x - batch.x[:, :3]).abs().max()) > 1e-2          # the encoder moves the atoms
    assert torch.allclose(mu_x2, mu_x @ q.T, atol=1e-10)              # latent positions rotate, no shift
    for a, b in ((log_s, log_s2), (mu_h, mu_h2), (logvar_h, logvar_h2)):
        assert float(a.abs().max()) > 1e-3
        assert torch.allclose(a, b, atol=1e-10)                        # invariant features unchanged
    # the decoder: decoded positions rotate, element logits / charges unchanged
    z = ae.encode(batch, sample=False)
    zr = z.clone()
    zr[:, :3] = z[:, :3] @ q.T
    pos, out = ae._decode_raw(z, batch.space)
    pos2, out2 = ae._decode_raw(zr, batch.space)
    assert float((pos - z[:, :3]).abs().max()) > 1e-2
    assert torch.allclose(pos2, pos @ q.T, atol=1e-10)
    assert float(out.abs().max()) > 1e-3 and torch.allclose(out2, out, atol=1e-10)
    # and end to end: reconstruction of the moved molecules = the moved (centred) reconstruction
    rec, rec2 = ae.decode(z, batch), ae.decode(ae.encode(moved, sample=False), moved)
    assert torch.allclose(rec2[:, :3], rec[:, :3] @ q.T, atol=1e-10)
    assert torch.equal(rec2[:, 3:], rec[:, 3:])


def test_equivariance_float32_at_default_size():
    """The default-size network in float32 on real molecules, at the brief's 1e-3 tolerance."""
    torch.manual_seed(0)
    dom = MoleculeDomain()
    data = dom.load_data(None, {})
    ae = dom.bind(data.info()).build_autoencoder({}).eval()
    batch = data.batch(torch.arange(4))
    q = _orthogonal(3, False).float()
    moved = _moved(batch, q, torch.tensor([1.0, 2.0, -3.0]))
    with torch.no_grad():
        z, z2 = ae.encode(batch, sample=False), ae.encode(moved, sample=False)
        assert torch.allclose(z2[:, :3], z[:, :3] @ q.T, atol=1e-3)
        assert torch.allclose(z2[:, 3:], z[:, 3:], atol=1e-3)
        pos, out = ae._decode_raw(z, batch.space)
        pos2, out2 = ae._decode_raw(z2, batch.space)
        assert torch.allclose(pos2, pos @ q.T, atol=1e-3) and torch.allclose(out2, out, atol=1e-3)


def test_permutation_equivariance_and_no_cross_talk():
    ae = _model(seed=2)
    batch = _batch([4, 7, 3], seed=3)
    perm = torch.randperm(batch.x.shape[0], generator=torch.Generator().manual_seed(0))
    sp_p = GraphSpace(batch.space.batch[perm], batch.space.num_graphs)
    z = ae.encode(batch, sample=False)
    z_p = ae.encode(Batch(batch.x[perm], sp_p, None, {}), sample=False)
    assert torch.allclose(z_p, z[perm], atol=1e-10)
    assert torch.allclose(ae._decode_raw(z_p, sp_p)[1], ae._decode_raw(z, batch.space)[1][perm], atol=1e-10)
    # a molecule encodes the same alone as in a batch
    mask = batch.space.batch == 1
    alone = GraphSpace(torch.zeros(7, dtype=torch.long), 1)
    assert torch.allclose(ae.encode(Batch(batch.x[mask], alone, None, {}), sample=False), z[mask], atol=1e-10)


def test_latent_positions_have_zero_centre_of_mass():
    ae = _model(seed=4)
    batch = _batch([6, 2, 8], seed=5)
    batch.x[:, :3] += 10.0                                   # an off-centre input
    for z in (ae.encode(batch, sample=False), ae.encode(batch, torch.Generator().manual_seed(0))):
        assert torch.allclose(batch.space.graph_mean(z[:, :3]), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)
    rec = ae.decode(z, batch)
    assert torch.allclose(batch.space.graph_mean(rec[:, :3]), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)


def test_posterior_sample_has_the_posterior_mean_and_width():
    ae = _model(seed=6)
    one = _batch([5], seed=7)
    mu_x, log_s, mu_h, logvar_h = ae.posterior(one)
    copies = 3000          # one batch of many copies of the molecule: each copy is one posterior draw
    batch = Batch(one.x.repeat(copies, 1), GraphSpace(torch.arange(copies).repeat_interleave(5), copies), None, {})
    with torch.no_grad():
        draws = ae.encode(batch, torch.Generator().manual_seed(0)).reshape(copies, 5, -1)
    mean = torch.cat([mu_x, mu_h], 1)
    # (3000 draws: tolerances of about 4.5 standard errors of the mean and of the standard deviation)
    assert bool(((draws.mean(0) - mean).abs() <= 0.08 * draws.std(0)).all())
    sd_h = draws[:, :, 3:].std(0)
    assert torch.allclose(sd_h, (0.5 * logvar_h).exp(), rtol=0.06)
    # on the centred subspace each coordinate of n atoms has variance s^2 (n - 1) / n
    sd_x = draws[:, :, :3].std(0)
    assert torch.allclose(sd_x, (log_s.exp() * (4 / 5) ** 0.5).expand_as(sd_x), rtol=0.06)


def test_kl_matches_torch_distributions_on_the_centred_subspace():
    ae = _model(seed=8)
    batch = _batch([4, 6], seed=9)
    mu_x, log_s, mu_h, logvar_h = ae.posterior(batch)
    got = ae.kl(batch.space, mu_x, log_s, mu_h, logvar_h)
    for g, n in enumerate(batch.space.counts.tolist()):
        m = batch.space.batch == g
        # an orthonormal basis of {v in R^n : sum v = 0} (x) R^3 and the posterior in its coordinates
        basis = torch.linalg.qr(torch.eye(n, dtype=torch.float64) - 1.0 / n)[0][:, : n - 1]
        coords = (basis.T @ mu_x[m]).reshape(-1)
        d = coords.numel()
        s2 = float((2 * log_s[g]).exp())
        kl_x = kl_divergence(MultivariateNormal(coords, s2 * torch.eye(d, dtype=torch.float64)),
                             MultivariateNormal(torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)))
        h = mu_h[m].reshape(-1)
        var_h = logvar_h[m].exp().reshape(-1)
        kl_h = kl_divergence(MultivariateNormal(h, torch.diag(var_h)),
                             MultivariateNormal(torch.zeros_like(h), torch.eye(h.numel(), dtype=torch.float64)))
        assert torch.allclose(got[g], kl_x + kl_h, rtol=1e-9)


def test_shapes_layout_and_latent_info():
    ae = _model(seed=10)
    batch = _batch([3, 5], seed=11)
    z = ae.encode(batch)
    assert z.shape == (8, 3 + TINY["latent_features"])
    rec = ae.decode(z, batch)
    assert rec.shape == batch.x.shape
    # the molecule layout: one-hot * onehot_scale, then a whole charge * charge_scale
    onehot = rec[:, 3:8]
    assert torch.equal((onehot == 0.25).sum(1), torch.ones(8, dtype=torch.long)) and float(onehot.sum()) == 2.0
    assert torch.allclose(rec[:, 8] / 0.1, (rec[:, 8] / 0.1).round(), atol=1e-9)
    loss, logs = ae.loss(batch, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and {"position_mse", "element_ce", "charge_mse", "kl"} <= set(logs)
    assert float(loss) == pytest.approx(logs["position_mse"] + logs["element_ce"] + logs["charge_mse"]
                                        + 0.01 * logs["kl"], rel=1e-9)
    assert ae.latent_info(INFO) == {"feature_dim": 3 + TINY["latent_features"]}
    assert ae.latent_template(batch).shape == z.shape
    assert isinstance(ae.latent_space(batch), GraphSpace)
    with pytest.raises(ValueError, match="channels"):
        ae.decode(z[:, :4], batch)
    with pytest.raises(ValueError, match="channels"):
        ae.encode(Batch(batch.x[:, :6], batch.space, None, {}))


@pytest.mark.parametrize("bad, match", [({"latent_size": 2}, "unknown"), ({"hidden": 0}, "hidden"),
                                        ({"latent_features": 1.5}, "latent_features"),
                                        ({"kl_weight": -1}, "kl_weight"), ({"encoder_layers": True}, "encoder_layers")])
def test_bad_options_are_one_line_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        MoleculeDomain().bind(INFO).build_autoencoder(bad)


def test_tiny_training_lowers_the_reconstruction_loss():
    dom = MoleculeDomain()
    data = dom.load_data(None, {})
    torch.manual_seed(0)
    ae = dom.bind(data.info()).build_autoencoder(TINY)
    batch = data.batch(torch.arange(24))
    opt = torch.optim.Adam(ae.parameters(), lr=1e-3)

    def recon():
        _, logs = ae.loss(batch, torch.Generator().manual_seed(123))
        return logs["position_mse"] + logs["element_ce"], logs

    before, logs0 = recon()
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss, _ = ae.loss(batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, logs = recon()
    # positions start almost reconstructed (both coordinate updates start near the identity); the
    # elements must be learned: the cross-entropy starts at log 5
    assert after < 0.8 * before, (logs0, logs)
    assert logs["element_ce"] < 0.75 * logs0["element_ce"], (logs0, logs)


def test_latent_domain_templates_and_decodes_molecules():
    """The molecule domain under core's LatentDomain: latent templates of the data's structure, a
    backbone for the latent width, and samples decoded into molecules the writer and metrics read."""
    dom = MoleculeDomain()
    info = dict(INFO, include_charges=False, feature_dim=8)
    torch.manual_seed(0)
    latent = LatentDomain(dom, dom.bind(info).build_autoencoder(TINY)).bind(info)
    tmpl = latent.template(3, structure=[3, 5, 4])
    assert tmpl.x.shape == (12, 3 + TINY["latent_features"])
    net = latent.build_backbone({"preset": "tiny"})
    out = net(tmpl.space.noise(tmpl.x), torch.zeros(3), space=tmpl.space)
    assert out.shape == tmpl.x.shape
    data = latent.to_data(Batch(out.detach(), tmpl.space, None, tmpl.extras))
    assert data.x.shape == (12, 8)
    table = latent.describe_samples(data)
    assert table["num_molecules"] == 3
    assert latent.default_sampling() == dom.default_sampling() == ("ddpm", 500)   # the data's domain decides


def test_latent_model_trains_and_samples_end_to_end(tmp_path):
    ae_run = tmp_path / "ae"
    res = api.train_autoencoder("molecules", out=ae_run, progress=False, config={"model": TINY}, steps=4,
                                batch_size=8, log_every=2)
    assert res["scale"] > 0
    report = json.loads((ae_run / "evaluation.json").read_text())
    assert 0.0 <= report["element_recovery"] <= 1.0 and report["position_rmsd"] >= 0.0
    run = tmp_path / "latent"
    api.train("molecules", out=run, progress=False, latent=ae_run, config={"model": {"preset": "tiny"}},
              steps=2, batch_size=8, checkpoint_every=0, eval_samples=0, final_eval=False)
    model = api.load(run, device="cpu")
    samples = model.sample(3, sampler="ddim", steps=4, seed=0, structure=torch.tensor([4, 6, 5]))
    assert samples.x.shape == (15, 8)                          # decoded data: positions + H C N O F one-hot
    assert torch.allclose(samples.space.graph_mean(samples.x[:, :3]), torch.zeros(3, 3), atol=1e-4)
    out = tmp_path / "samples"
    model.write(samples, out)
    assert (out / "molecules.sdf").is_file()
