"""GraphSpace: zero centre of mass, broadcasting through the batch index, reduction, degrees of
freedom, per-sample generators and fully connected edges (closed forms and invariants)."""

from __future__ import annotations

import itertools

import pytest
import torch

from diffuse.core.data.graph import GraphSpace, full_edges
from diffuse.core.sampling.ancestral import ddim
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.core.process.schedule import PolynomialSchedule
from diffuse.core.data.space import per_sample_generators


def _space(counts, centred=3, shuffle=False, seed=0):
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    if shuffle:
        batch = batch[torch.randperm(len(batch), generator=torch.Generator().manual_seed(seed))]
    return GraphSpace(batch, len(counts), centred=centred)


def _com(space, x, c=3):
    return space.graph_mean(x[:, :c])


@pytest.mark.parametrize("shuffle", [False, True])
def test_noise_and_project_zero_centre_of_mass(shuffle):
    sp = _space([3, 7, 1, 12], shuffle=shuffle)
    z = sp.noise(torch.zeros(23, 8, dtype=torch.float64), torch.Generator().manual_seed(1))
    assert torch.allclose(_com(sp, z), torch.zeros(4, 3, dtype=torch.float64), atol=1e-12)
    # a one-atom graph has no positional freedom at all
    single = sp.batch == 2
    assert torch.allclose(z[single, :3], torch.zeros(1, 3, dtype=torch.float64))
    # features untouched by project; project is idempotent and orthogonal
    x = torch.randn(23, 8, dtype=torch.float64)
    p = sp.project(x)
    assert torch.equal(p[:, 3:], x[:, 3:])
    assert torch.allclose(sp.project(p), p, atol=1e-12)
    assert abs(float((p * (x - p)).sum())) < 1e-9


def test_expected_squared_norm_equals_dof():
    """For the standard Gaussian of a linear subspace, E|z|^2 equals its dimension."""
    counts = [2, 5, 9]
    sp = _space(counts, centred=3)
    g = torch.Generator().manual_seed(0)
    draws = 4000
    tot = torch.zeros(3, dtype=torch.float64)
    for _ in range(draws // 100):
        big = _space(counts * 100, centred=3)
        z = big.noise(torch.zeros(int(big.counts.sum()), 6, dtype=torch.float64), g)
        tot += big.sum(z ** 2).reshape(100, 3).sum(0)
    mean = tot / draws
    dof = sp.dof(torch.zeros(16, 6, dtype=torch.float64))
    expect = torch.tensor([(n - 1) * 3 + n * 3 for n in counts], dtype=torch.float64)
    assert torch.equal(dof, expect)
    # chi-square with k dof: std of the mean = sqrt(2k / draws)
    assert torch.all((mean - expect).abs() < 5 * torch.sqrt(2 * expect / draws))


def test_expand_reduce_sum_match_loops():
    sp = _space([4, 1, 6], shuffle=True, seed=3)
    x = torch.randn(11, 5, dtype=torch.float64)
    red = sp.reduce(x)
    for g in range(3):
        assert torch.allclose(red[g], x[sp.batch == g].mean(), atol=1e-12)
    per = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    ex = sp.expand(per, x)
    assert ex.shape == (11, 1)
    assert torch.equal(ex[:, 0], per[sp.batch])
    assert torch.allclose(sp.reduce(ex * torch.ones_like(x)), per)
    assert torch.allclose(sp.sum(x), torch.stack([x[sp.batch == g].sum() for g in range(3)]))
    assert sp.batch_size(x) == 3
    assert torch.equal(sp.num_elements(x), torch.tensor([20.0, 5.0, 30.0], dtype=torch.float64))


def test_per_sample_generators_make_samples_batch_independent():
    counts = [5, 8, 3]
    sp = _space(counts, shuffle=True, seed=4)
    like = torch.zeros(16, 7)
    z = sp.noise(like, per_sample_generators(11, 3))
    # graph 1 alone, with the generator seeded the same way, gets the same noise
    alone = _space([8])
    z1 = alone.noise(torch.zeros(8, 7), per_sample_generators(11, 1, start=1))
    assert torch.equal(z[sp.batch == 1], z1)
    # changing graph 0's generator leaves graphs 1 and 2 untouched
    gens = per_sample_generators(11, 3)
    gens[0] = torch.Generator().manual_seed(999)
    z2 = sp.noise(like, gens)
    assert torch.equal(z2[sp.batch != 0], z[sp.batch != 0])
    assert not torch.equal(z2[sp.batch == 0], z[sp.batch == 0])
    with pytest.raises(ValueError):
        sp.noise(like, per_sample_generators(0, 2))


@pytest.mark.parametrize("shuffle", [False, True])
def test_full_edges_are_exactly_the_pairs_within_each_graph(shuffle):
    counts = [1, 4, 2, 6]
    sp = _space(counts, shuffle=shuffle, seed=5)
    row, col = full_edges(sp.batch, 4)
    got = set(zip(row.tolist(), col.tolist()))
    nodes = range(sp.batch.numel())
    want = {(i, j) for i, j in itertools.product(nodes, nodes) if i != j and sp.batch[i] == sp.batch[j]}
    assert got == want and len(row) == sum(n * (n - 1) for n in counts)
    r0, c0 = full_edges(torch.zeros(0, dtype=torch.long), 0)
    assert r0.numel() == 0 and c0.numel() == 0


def test_concat_and_to():
    a, b = _space([2, 3]), _space([4])
    x, sp = GraphSpace.concat([torch.randn(5, 4), torch.randn(4, 4)], [a, b])
    assert sp.num_graphs == 3 and torch.equal(sp.counts, torch.tensor([2, 3, 4]))
    assert x.shape == (9, 4)
    moved = sp.to("cpu")
    assert torch.equal(moved.batch, sp.batch) and moved.num_graphs == 3


def test_core_ddim_keeps_zero_centre_of_mass_and_recovers_a_point_mass():
    """Data = one fixed centred configuration: the exact denoiser is x0 itself, and DDIM from any
    start must land on it (up to the projection), staying in the zero-CoM subspace all the way."""
    sp = _space([4, 6])
    sched = PolynomialSchedule()
    g = torch.Generator().manual_seed(0)
    target = sp.project(torch.randn(10, 5, dtype=torch.float64, generator=g))

    def denoise(x, t):
        a, s = sched.alpha_sigma(t)
        eps = (x - sp.coef(a, x) * target) / sp.coef(s, x)
        from diffuse.core.process.parameterization import Prediction
        return Prediction(target, sp.project(eps))

    coms = []
    x = prior_sample(sched, sp, target, generator=g)
    out = ddim(denoise, x, time_grid(sched, 20), schedule=sched, space=sp,
               callback=lambda info: coms.append(float(_com(sp, info["x"]).abs().max())))
    assert max(coms) < 1e-10
    # the polynomial schedule keeps sigma_0 = sqrt(1e-5) at t = 0, so the end point is within a few sigma_0
    assert float((out - target).abs().max()) < 0.02
