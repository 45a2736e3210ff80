"""EGNN symmetries in float64: E(3) equivariance, permutation equivariance, no cross-talk between
molecules of a batch, and a zero centre of mass through core's samplers."""

from __future__ import annotations

import pytest
import torch

from diffuse.core.process.denoiser import Denoiser
from diffuse.core.data.graph import GraphSpace
from diffuse.core.process.parameterization import EpsParam
from diffuse.core.sampling.ancestral import ddpm
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.core.process.schedule import PolynomialSchedule
from diffuse.domains.molecules import EGNN, MoleculeDomain
from diffuse.domains.molecules.egnn import model_kwargs

F = 6  # 5 elements + charge


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    net = EGNN(F, hidden=16, layers=2, **kw).double()
    # perturb the near-zero coordinate heads so that position outputs are not trivially ~0
    for block in net.blocks:
        torch.nn.init.normal_(block[1].out.weight, std=0.3)
    return net.eval()


def _batch(counts, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    sp = GraphSpace(batch, len(counts))
    x = torch.randn(int(sum(counts)), 3 + F, dtype=torch.float64, generator=g)
    x = sp.project(x * torch.tensor([2.0] * 3 + [1.0] * F, dtype=torch.float64))
    t = torch.rand(len(counts), dtype=torch.float64, generator=g) * 1000
    return x, t, sp


def _random_orthogonal(seed, reflect):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=g))
    if (torch.det(q) < 0) != reflect:
        q = q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    return q


@pytest.mark.parametrize("reflect", [False, True])
def test_e3_equivariance_float64(reflect):
    net = _model()
    x, t, sp = _batch([5, 9, 2])
    q = _random_orthogonal(1, reflect)
    shift = torch.tensor([3.0, -1.0, 7.5], dtype=torch.float64)
    out = net(x, t, space=sp)
    xr = x.clone()
    xr[:, :3] = x[:, :3] @ q.T + shift
    out_r = net(xr, t, space=sp)
    assert out[:, :3].abs().max() > 1e-3          # the test is not vacuous
    assert torch.allclose(out_r[:, :3], out[:, :3] @ q.T, atol=1e-10)
    assert torch.allclose(out_r[:, 3:], out[:, 3:], atol=1e-10)
    assert torch.allclose(sp.graph_mean(out[:, :3]), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)


def test_permutation_equivariance_float64():
    net = _model(seed=2)
    x, t, sp = _batch([4, 7, 3], seed=3)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    sp_p = GraphSpace(sp.batch[perm], sp.num_graphs)
    out = net(x, t, space=sp)
    out_p = net(x[perm], t, space=sp_p)
    assert torch.allclose(out_p, out[perm], atol=1e-10)


def test_molecules_in_a_batch_do_not_interact():
    net = _model(seed=4)
    x, t, sp = _batch([6, 3, 8], seed=5)
    out = net(x, t, space=sp)
    mask = sp.batch == 2
    alone = net(x[mask], t[2:], space=GraphSpace(torch.zeros(8, dtype=torch.long), 1))
    assert torch.allclose(out[mask], alone, atol=1e-10)


def test_centre_of_mass_stays_zero_through_ddpm_sampling():
    net = EGNN(5, hidden=16, layers=2)
    den = Denoiser(net, PolynomialSchedule(), EpsParam())
    dom = MoleculeDomain().bind({"elements": list("HCNOF"), "num_atoms_hist": [[4, 1], [9, 2]]})
    tpl = dom.template(3, torch.Generator().manual_seed(0))
    sp = tpl.space
    g = torch.Generator().manual_seed(1)
    x = prior_sample(den.schedule, sp, tpl.x, generator=g)
    worst = []
    with torch.no_grad():
        out = ddpm(den.bind(sp), x, time_grid(den.schedule, 25), schedule=den.schedule, space=sp, generator=g,
                   callback=lambda info: worst.append(float(sp.graph_mean(info["x"][:, :3]).abs().max())))
    assert len(worst) == 25 and max(worst) < 1e-5
    assert torch.isfinite(out).all()


def test_memory_lean_silu_linear_matches_autograd():
    """The recomputing ``linear(silu(x))`` has the exact value and gradients (gradcheck, float64)."""
    from diffuse.domains.molecules.egnn import _SiLULinear
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.linear(torch.nn.functional.silu(x), w, b)
    assert torch.allclose(_SiLULinear.apply(x, w, b), ref)
    assert torch.autograd.gradcheck(_SiLULinear.apply, (x, w, b))
    assert torch.autograd.gradcheck(lambda a, v: _SiLULinear.apply(a, v, None), (x, w))


def test_presets_and_config_errors():
    edm = model_kwargs({"preset": "edm"})
    assert edm["hidden"] == 256 and edm["layers"] == 9
    assert model_kwargs({"preset": "edm", "layers": 3})["layers"] == 3
    with pytest.raises(ValueError, match="preset"):
        model_kwargs({"preset": "huge"})
    with pytest.raises(ValueError, match="widht"):
        model_kwargs({"widht": 3})


# ------------------------------------------------------------------ determinism
def _egnn_grads(threads: int, batch) -> dict[str, torch.Tensor]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = EGNN(batch.x.shape[1] - 3, hidden=32, layers=2)
    x = batch.x.clone().requires_grad_()
    t = torch.rand(len(batch), generator=torch.Generator().manual_seed(1)) * 1000
    out = net(x, t, space=batch.space)
    (out ** 2).sum().backward()
    return {"out": out.detach(), "x.grad": x.grad, **{n: p.grad.clone() for n, p in net.named_parameters()}}


def test_egnn_gradient_does_not_depend_on_thread_scheduling():
    """Gathers are ``index_select`` (backward: ``index_add_``, which accumulates in index order)
    instead of ``h[row]`` (backward: ``index_put_(accumulate=True)``, whose threads race), so
    repeated 2-thread runs agree bit for bit on every gradient, and the output is the same for 1
    and 2 threads to float rounding. (Matrix products reduce in an order the BLAS chooses by thread
    count, even in its strict reproducible mode; on AVX-512 machines the forward pass too, by about
    1e-6: gradients and outputs are compared bit for bit 2 vs 2, the output 1 vs 2 to 1e-5.)"""
    dom = MoleculeDomain()
    ds = dom.load_data(None, dom.default_data())
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:64]
    batch = ds.batch(perm)
    threads = torch.get_num_threads()
    try:
        one = _egnn_grads(1, batch)
        runs = [_egnn_grads(2, batch) for _ in range(3)]
    finally:
        torch.set_num_threads(threads)
    assert one["x.grad"].abs().max() > 0
    for two in runs:
        torch.testing.assert_close(one["out"], two["out"], rtol=1e-5, atol=1e-5)
        assert torch.equal(runs[0]["out"], two["out"])
        bad = [k for k in runs[0] if not torch.equal(runs[0][k], two[k])]
        assert not bad, f"differ between two 2-thread runs: {bad}"


def test_two_threaded_training_runs_are_bit_identical(tmp_path):
    """Two 20-step runs with 2 threads give the same weights (before: ~6e-8 apart, from the
    racing ``index_put_`` in the backward of ``h[row]``)."""
    import diffuse.api as api
    from safetensors.torch import load_file

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        weights = []
        for k in range(2):
            run = tmp_path / f"run{k}"
            api.train("molecules", out=run, progress=False, config={"model": {"preset": "tiny"}}, steps=20,
                      batch_size=32, lr=2e-3, warmup_steps=2, log_every=10, checkpoint_every=0, eval_samples=0,
                      seed=0)
            weights.append({f.name: load_file(f) for f in sorted(run.rglob("*.safetensors"))})
    finally:
        torch.set_num_threads(threads)
    assert "model.safetensors" in weights[0] and weights[0].keys() == weights[1].keys()
    for name, tensors in weights[0].items():
        for key, value in tensors.items():
            assert torch.equal(value, weights[1][name][key]), f"{name}:{key}"
