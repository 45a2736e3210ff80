"""Guidance against exact truths: the labelled Gaussian mixture (class k = component k, whose
denoiser and classifier are closed forms), rotations of graph batches, and a tiny conditional
model that must learn its condition through dropout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffuse.core import Batch, DenseSpace, GraphSpace, LinearBetaSchedule
from diffuse.core.data.condition import Condition, LabelKind
from diffuse.core.config import DiffusionConfig
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.process.gaussian import GaussianMixture
from diffuse.core.sampling.guidance import (Guidance, classifier_free_guidance, classifier_guidance,
                                            noisy_classifier_loss)
from diffuse.core.process.parameterization import Prediction
from diffuse.core.sampling.ancestral import ddim
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
SCHED = LinearBetaSchedule()
SPACE = DenseSpace()
GM = GaussianMixture.random(k=3, d=2, seed=0)
KIND = LabelKind(GM.K)


def labels(k, n):
    return Condition({"label": KIND.parse(k, n)}, {"label": KIND})


def _run(denoise, n, seed=0, steps=100):
    g = torch.Generator().manual_seed(seed)
    x = prior_sample(SCHED, SPACE, torch.zeros(n, GM.D, dtype=F64), generator=g)
    return ddim(denoise, x, time_grid(SCHED, steps), schedule=SCHED, space=SPACE)


@pytest.mark.parametrize("k", [0, 2])
def test_cfg_scale_one_is_the_exact_conditional(k):
    """s = 1: the guided denoiser equals component k's closed-form denoiser to float64 rounding
    at every t, and DDIM-100 samples have component k's mean and covariance."""
    model = GM.conditional_model(SCHED)
    cond = labels(k, 4000)
    guided = classifier_free_guidance(model, SPACE, cond, 1.0, SCHED)
    comp = GM.component(k).denoiser(SCHED)
    x = 3 * torch.randn(4000, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    for t in (0.001, 0.05, 0.3, 0.7, 1.0):
        tv = torch.full((4000,), t, dtype=F64)
        got, want = guided(x, tv), comp(x, tv)
        torch.testing.assert_close(got.x0, want.x0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.eps, want.eps, rtol=1e-12, atol=1e-12)
    out = _run(guided, 4000)
    # measured: DDIM-100 itself (exact component denoiser, 20k samples) is off by ~0.01 in the mean
    # and ~4 % (relative Frobenius) in the covariance; 4000 samples add ~sqrt(2/n) = 2 % noise
    mu, cov = GM.means[k], GM.covs[k]
    se = torch.sqrt(torch.diagonal(cov) / 4000)
    assert bool(((out.mean(0) - mu).abs() < 5 * se + 0.01).all()), (out.mean(0), mu)
    assert float((torch.cov(out.T) - cov).norm() / cov.norm()) < 0.08


def test_cfg_scale_zero_is_the_unconditional_sampler_bit_for_bit():
    cond = labels(1, 256)
    guided = classifier_free_guidance(GM.conditional_model(SCHED), SPACE, cond, 0.0, SCHED)
    assert torch.equal(_run(guided, 256, steps=30), _run(GM.denoiser(SCHED), 256, steps=30))


def test_cfg_is_the_affine_combination_in_both_views_and_consistent():
    model = GM.conditional_model(SCHED)
    cond = labels([0, 1, 2, 0, 1], 5)
    x = 2 * torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    t = torch.full((5,), 0.4, dtype=F64)
    c, u = model(x, t, cond=cond), model(x, t, cond=cond.null())
    g = classifier_free_guidance(model, SPACE, cond, 3.5, SCHED)(x, t)
    torch.testing.assert_close(g.eps, u.eps + 3.5 * (c.eps - u.eps))
    torch.testing.assert_close(g.x0, u.x0 + 3.5 * (c.x0 - u.x0))
    a, s = SCHED.alpha_sigma(t)
    torch.testing.assert_close(SPACE.coef(a, x) * g.x0 + SPACE.coef(s, x) * g.eps, x)


def test_cfg_rescale_matches_the_conditional_std_and_interval_switches_it_off():
    model = GM.conditional_model(SCHED)
    cond = labels([0, 2, 1], 3)
    x = 2 * torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    t = torch.full((3,), 0.5, dtype=F64)
    a, s = SCHED.alpha_sigma(t)
    c = model(x, t, cond=cond)
    plain = classifier_free_guidance(model, SPACE, cond, 4.0, SCHED)(x, t)
    full = classifier_free_guidance(model, SPACE, cond, 4.0, SCHED, rescale=1.0)(x, t)
    std = lambda v: v.std(1, unbiased=False)
    torch.testing.assert_close(std(full.x0), std(c.x0))                      # phi = 1: std matched
    half = classifier_free_guidance(model, SPACE, cond, 4.0, SCHED, rescale=0.5)(x, t)
    torch.testing.assert_close(half.x0, 0.5 * full.x0 + 0.5 * plain.x0)
    torch.testing.assert_close(SPACE.coef(a, x) * full.x0 + SPACE.coef(s, x) * full.eps, x)
    level = float(s[0] / a[0])
    inside = classifier_free_guidance(model, SPACE, cond, 4.0, SCHED, interval=(level / 2, level * 2))(x, t)
    outside = classifier_free_guidance(model, SPACE, cond, 4.0, SCHED, interval=(level * 2, level * 4))(x, t)
    torch.testing.assert_close(inside.x0, plain.x0, rtol=0, atol=0)
    torch.testing.assert_close(outside.x0, c.x0, rtol=0, atol=0)


def test_classifier_guidance_with_the_exact_classifier_is_the_exact_conditional():
    """eps - sigma grad log p(k | x_t) with the closed-form p(k | x_t) = the closed-form
    conditional eps of component k (to 1e-8), at several noise levels."""
    k = 1
    base = GM.denoiser(SCHED)

    def log_prob(x, t):
        a, s = SCHED.alpha_sigma(t)
        return GM.class_log_prob(x, a, s)[:, k]

    guided = classifier_guidance(base, log_prob, 1.0, SCHED, SPACE)
    comp = GM.component(k).denoiser(SCHED)
    x = 2 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    for t in (0.02, 0.2, 0.5, 0.9):
        tv = torch.full((64,), t, dtype=F64)
        with torch.no_grad():                      # as inside a sampler
            got = guided(x, tv)
        want = comp(x, tv)
        torch.testing.assert_close(got.eps, want.eps, rtol=0, atol=1e-8)
        torch.testing.assert_close(got.x0, want.x0, rtol=0, atol=1e-8 / float(SCHED.alpha_sigma(tv)[0][0]))


def test_noisy_classifier_loss_is_cross_entropy_at_training_noise():
    """The exact classifier has a lower noisy cross-entropy than a wrong one, and the loss is
    reproducible from the generator."""
    diff = Diffusion(DiffusionConfig())
    x0, y = GM.sample(512, torch.Generator().manual_seed(5), return_labels=True)

    def exact(x_t, t, space=None):
        a, s = SCHED.alpha_sigma(t)
        return GM.class_log_prob(x_t, a, s)

    def shuffled(x_t, t, space=None):
        return exact(x_t, t).roll(1, dims=1)

    run = lambda f: noisy_classifier_loss(f, x0, y, SPACE, SCHED, diff.sample_t, torch.Generator().manual_seed(6))
    assert torch.equal(run(exact), run(exact))
    assert float(run(exact).mean()) < float(run(shuffled).mean()) - 0.1
    assert float(run(exact).mean()) < math.log(3)


def test_guidance_parse_rejects_bad_values():
    assert Guidance.parse("3", "0.7", "0.3,5") == Guidance(3.0, 0.7, (0.3, 5.0))
    for kwargs, msg in [({"scale": "abc"}, "must be a number"), ({"scale": -1}, ">= 0"),
                        ({"rescale": 2}, r"\[0, 1\]"), ({"interval": "1"}, "LO,HI"), ({"interval": "5,1"}, "LO <= HI")]:
        with pytest.raises(ValueError, match=msg):
            Guidance.parse(**kwargs)


# ------------------------------------------------------------------ graphs: equivariance
class IsotropicClasses(nn.Module):
    """Exact denoiser of zero-CoM point clouds, class k ~ N(0, s_k^2 I) on the CoM-free subspace
    (a rotation-invariant mixture of two scales): responsibilities depend on |x|^2 only, so the
    denoiser is E(3)-equivariant. Conditioned on ``cond["label"]`` (2 = null: the mixture)."""

    scales = (0.5, 2.0)

    def forward(self, x, t, cond=None, space=None):
        a, s = SCHED.alpha_sigma(t.to(F64))
        dof = space.dof(x)
        sq = space.graph_sum((x * x).sum(1))
        logp = []
        for sk in self.scales:
            var = a ** 2 * sk ** 2 + s ** 2
            logp.append(-0.5 * sq / var - 0.5 * dof * torch.log(var))
        logp = torch.stack(logp, 1)
        lab = cond["label"]
        onehot = torch.nn.functional.one_hot(lab.clamp(max=1), 2).bool() & (lab < 2)[:, None]
        logp = torch.where((lab < 2)[:, None] & ~onehot, torch.full_like(logp, -math.inf), logp)
        r = torch.softmax(logp, 1)
        shrink = sum(r[:, k] * a * sk ** 2 / (a ** 2 * sk ** 2 + s ** 2) for k, sk in enumerate(self.scales))
        x0 = space.coef(shrink, x) * x
        eps = (x - space.coef(a, x) * x0) / space.coef(s, x)
        return Prediction(space.project(x0), space.project(eps))


def test_guided_sampling_on_graphs_is_rotation_equivariant():
    torch.manual_seed(0)
    counts = torch.tensor([3, 5, 4])
    space = GraphSpace(torch.repeat_interleave(torch.arange(3), counts), 3, centred=3)
    kind = LabelKind(2)
    cond = Condition({"label": torch.tensor([0, 1, 0])}, {"label": kind})
    model = IsotropicClasses()
    x1 = space.noise(torch.zeros(int(counts.sum()), 3, dtype=F64), torch.Generator().manual_seed(7))
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(8)))
    grid = time_grid(SCHED, 25)
    for guidance in (dict(scale=3.0), dict(scale=3.0, rescale=0.7), dict(scale=2.0, interval=(0.2, 5.0))):
        den = classifier_free_guidance(model, space, cond, schedule=SCHED, **guidance)
        run = lambda x: ddim(den, x, grid, schedule=SCHED, space=space)
        out, rot = run(x1), run(x1 @ q.T)
        torch.testing.assert_close(rot, out @ q.T, rtol=1e-9, atol=1e-9)
        assert float(space.graph_mean(out).abs().max()) < 1e-10          # stays centred
    # guided class 1 (large scale) samples are larger than class 0 ones
    den = classifier_free_guidance(model, space, cond, 2.0, SCHED)
    out = ddim(den, x1, grid, schedule=SCHED, space=space)
    rms = torch.sqrt(space.reduce(out ** 2))
    assert float(rms[1]) > float(rms[0]) and float(rms[1]) > float(rms[2])


# ------------------------------------------------------------------ a condition is really learned
class CondMLP(nn.Module):
    def __init__(self, num_classes=2, width=64):
        super().__init__()
        self.emb = nn.Embedding(num_classes + 1, 16)
        self.net = nn.Sequential(nn.Linear(2 + 16 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(8) / 8))

    def forward(self, x, noise_level, cond=None, space=None):
        arg = noise_level[:, None] * self.freqs[None]
        return self.net(torch.cat([x, torch.sin(arg), torch.cos(arg), self.emb(cond["label"])], 1))


def test_a_condition_trained_with_dropout_is_learned_and_the_null_path_is_unconditional():
    torch.manual_seed(0)
    kind = LabelKind(2)
    g = torch.Generator().manual_seed(0)
    diff = Diffusion(DiffusionConfig(cond_drop=0.2))
    den = diff.denoiser(CondMLP())
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    for step in range(400):
        y = torch.randint(0, 2, (256,), generator=g)
        x0 = torch.stack([4.0 * y - 2.0, torch.zeros(256)], 1) + 0.3 * torch.randn(256, 2, generator=g)
        batch = Batch(x0, SPACE, Condition({"label": y}, {"label": kind}))
        loss = diff.training_losses(den, batch, g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    den.eval()

    @torch.no_grad()
    def sample(label, scale=None):
        n = 400
        cond = Condition({"label": kind.parse(label, n) if label is not None else kind.null(n)}, {"label": kind})
        x = prior_sample(diff.schedule, SPACE, torch.zeros(n, 2), generator=torch.Generator().manual_seed(1))
        fn = (den.bind(SPACE, cond) if scale is None
              else classifier_free_guidance(den, SPACE, cond, scale, diff.schedule))
        return ddim(fn, x, time_grid(diff.schedule, 50), schedule=diff.schedule, space=SPACE)

    right0 = float((sample(0)[:, 0] < 0).float().mean())
    right1 = float((sample(1)[:, 0] > 0).float().mean())
    guided1 = float((sample(1, scale=3.0)[:, 0] > 0).float().mean())
    uncond = float((sample(None)[:, 0] > 0).float().mean())
    assert right0 > 0.8 and right1 > 0.8, (right0, right1)
    assert guided1 >= right1 - 0.02
    assert 0.2 < uncond < 0.8, uncond
