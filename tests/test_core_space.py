"""The DenseSpace contract: expand / reduce / noise, and per-sample generators."""

from __future__ import annotations

import pytest
import torch

from diffuse.core.data.space import DenseSpace, per_sample_generators

SHAPES = [(5, 8), (4, 2, 16), (3, 3, 6, 5)]      # vectors, audio [B, C, L], images [B, C, H, W]


@pytest.mark.parametrize("shape", SHAPES)
def test_expand_broadcasts_one_coefficient_per_sample(shape):
    space = DenseSpace()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    c = torch.arange(1.0, shape[0] + 1)
    y = space.expand(c, x) * x
    assert y.shape == x.shape
    for i in range(shape[0]):
        torch.testing.assert_close(y[i], c[i] * x[i], rtol=0, atol=0)
    # coef casts float64 coefficients to the data dtype; a scalar stays a 0-d tensor
    k = space.coef(c.double(), x)
    assert k.dtype == x.dtype and k.shape == (shape[0],) + (1,) * (len(shape) - 1)
    assert space.coef(0.5, x).ndim == 0 and space.coef(0.5, x).dtype == x.dtype


@pytest.mark.parametrize("shape", SHAPES)
def test_reduce_sum_inner_and_counts(shape):
    space = DenseSpace()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    n = x[0].numel()
    flat = x.reshape(shape[0], -1)
    torch.testing.assert_close(space.reduce(x), flat.mean(1))
    torch.testing.assert_close(space.sum(x), flat.sum(1))
    torch.testing.assert_close(space.inner(x, y), (flat * y.reshape(shape[0], -1)).sum(1))
    assert space.num_elements(x).tolist() == [float(n)] * shape[0]
    assert space.dof(x).tolist() == [float(n)] * shape[0]
    assert space.batch_size(x) == shape[0]
    assert space.project(x) is x


def test_noise_with_generator_list_is_batch_size_independent():
    space = DenseSpace()
    like6 = torch.zeros(6, 3, 4)
    big = space.noise(like6, per_sample_generators(7, 6))
    small = space.noise(like6[:2], per_sample_generators(7, 2))
    torch.testing.assert_close(big[:2], small, rtol=0, atol=0)
    # a slice of the batch starting at sample 4 draws what samples 4, 5 drew in the whole batch
    tail = space.noise(like6[:2], per_sample_generators(7, 2, start=4))
    torch.testing.assert_close(big[4:], tail, rtol=0, atol=0)
    # different samples (and different seeds) draw different noise
    assert not torch.equal(big[0], big[1])
    assert not torch.equal(big, space.noise(like6, per_sample_generators(8, 6)))


def test_noise_is_standard_normal_and_reproducible():
    space = DenseSpace()
    like = torch.zeros(400, 50, dtype=torch.float64)
    z = space.noise(like, torch.Generator().manual_seed(3))
    assert z.dtype == torch.float64 and z.shape == like.shape
    # 20,000 draws: mean within 5 standard errors of 0, variance within 5 standard errors of 1
    assert abs(float(z.mean())) < 5 / 20000 ** 0.5
    assert abs(float(z.var()) - 1) < 5 * (2 / 20000) ** 0.5
    torch.testing.assert_close(z, space.noise(like, torch.Generator().manual_seed(3)), rtol=0, atol=0)
    zl = space.noise(like[:300], per_sample_generators(0, 300))
    assert abs(float(zl.var()) - 1) < 5 * (2 / 15000) ** 0.5


def test_noise_rejects_wrong_number_of_generators():
    with pytest.raises(ValueError, match="generators"):
        DenseSpace().noise(torch.zeros(3, 2), per_sample_generators(0, 2))
