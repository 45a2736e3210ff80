"""Categorical state in the core: D3PM transitions and discrete flow matching, checked against
enumeration on small joint distributions whose exact denoiser ``p(x_0 | x_t)`` is computable.

* the D3PM posterior equals Bayes' rule computed from the transition matrices;
* the samplers' exact output law (propagated by enumeration, no sampling noise) matches the data:
  exactly for one variable with the D3PM rule, and converging as the steps grow for three;
* the sampler code itself, run on many samples, reaches the sampling noise floor of the total
  variation distance (measured on draws from the truth itself).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from diffuse.core.data.space import DenseSpace, per_sample_generators
from diffuse.core.errors import ConfigError, UnknownNameError
from diffuse.core.process.categorical import KAPPA_SCHEDULES, PRIORS, CategoricalPath
from diffuse.core.sampling.categorical import (CATEGORICAL_RULES, categorical_prior, categorical_sampler, draw,
                                               uniforms)

F64 = torch.float64
K = 3


def _joint(D: int, seed: int = 0):
    """A random joint distribution over ``K^D`` states (float64, sums to 1) and its states."""
    g = torch.Generator().manual_seed(seed)
    states = torch.tensor(list(itertools.product(range(K), repeat=D)))
    p = torch.rand(len(states), generator=g, dtype=F64) ** 3 + 0.01     # uneven, every state possible
    return states, p / p.sum()


def _path(prior: str, schedule: str, states: torch.Tensor, p: torch.Tensor) -> CategoricalPath:
    marg = torch.stack([torch.bincount(states[:, d], weights=p, minlength=K) for d in range(states.shape[1])]).mean(0)
    return CategoricalPath(K, prior, schedule, marginal=marg)


def _exact_denoiser(path: CategoricalPath, states: torch.Tensor, p: torch.Tensor):
    """``p(x_0^d | x_t)`` per dimension by enumeration over the joint: ``x_t [M, D] -> [M, D, K]``."""
    D = states.shape[1]

    def denoise(xt: torch.Tensor, t) -> torch.Tensor:
        t = float(torch.as_tensor(t, dtype=F64).reshape(-1)[0])
        q = path.marginal(states, t)                                          # [S0, D, states]
        lik = torch.stack([q[:, d, :][:, xt[:, d]] for d in range(D)]).prod(0)   # [S0, M]
        post = p[:, None] * lik
        post = post / post.sum(0, keepdim=True).clamp_min(1e-300)     # impossible x_t (never reached): zeros
        return torch.stack([torch.stack([post[states[:, d] == k].sum(0) for k in range(K)], -1)
                            for d in range(D)], 1)
    return denoise


def _step_probs(path: CategoricalPath, rule: str, x: torch.Tensor, p0: torch.Tensor, t: float, s: float):
    """The probabilities a rule draws ``x_s`` from (what the step functions sample), for enumeration."""
    if float(path.kappa(s)) >= 1.0:
        return path._pad(p0)
    if rule == "d3pm":
        return path.posterior(x, p0, t, s)
    rate = float(path.rate(torch.tensor(t, dtype=F64)))
    jump = min(1.0, (t - s) * rate) if rule == "dfm_euler" else -torch.expm1(torch.tensor(-(t - s) * rate)).item()
    return jump * path._pad(p0) + (1.0 - jump) * path.onehot(x)


def _exact_law(path, rule, states, p, steps):
    """The distribution of the sampler's output over the data states, propagated exactly."""
    D = states.shape[1]
    all_x = torch.tensor(list(itertools.product(range(path.states), repeat=D)))
    dist = torch.stack([path.limit[all_x[:, d]] for d in range(D)]).prod(0)
    denoise = _exact_denoiser(path, states, p)
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=F64).tolist()
    for t, s in zip(grid[:-1], grid[1:]):
        probs = _step_probs(path, rule, all_x, denoise(all_x, t), t, s)          # [M, D, states]
        trans = torch.stack([probs[:, d, all_x[:, d]] for d in range(D)]).prod(0)   # [from, to]
        dist = dist @ trans
    index = {tuple(r.tolist()): i for i, r in enumerate(states)}
    out = torch.zeros(len(states), dtype=F64)
    for i, r in enumerate(all_x):
        key = tuple(r.tolist())
        if key in index:
            out[index[key]] += dist[i]
    return out


def _tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a - b).abs().sum())


# ---------------------------------------------------------------------------- the path itself
@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("schedule", sorted(KAPPA_SCHEDULES))
def test_posterior_is_bayes_rule_on_the_transition_matrices(prior, schedule):
    states, p = _joint(2)
    path = _path(prior, schedule, states, p)
    S, m = path.states, path.limit
    for t, s in ((0.9, 0.3), (0.5, 0.49), (1.0, 0.0), (0.7, 0.0), (1.0, 0.6)):
        kt, ks = float(path.kappa(t)), float(path.kappa(s))
        a = kt / ks
        Q_ts = a * torch.eye(S, dtype=F64) + (1 - a) * m[None, :]      # rows x_s, columns x_t
        for x0 in range(K):
            q_s = path.marginal(torch.tensor([x0]), s)[0]
            q_t = path.marginal(torch.tensor([x0]), t)[0]
            assert torch.allclose(q_s @ Q_ts, q_t, atol=1e-12)          # the transitions compose
            for j in range(S):
                if q_t[j] <= 0:
                    continue
                bayes = Q_ts[:, j] * q_s / q_t[j]
                got = path.posterior(torch.tensor([j]), torch.nn.functional.one_hot(torch.tensor([x0]), K).to(F64),
                                     t, s)[0]
                assert torch.allclose(got, bayes, atol=1e-12), (t, s, x0, j)


def test_mask_prior_keeps_unmasked_elements_exactly():
    path = CategoricalPath(K, "mask", "linear")
    logits = torch.randn(5, K, dtype=F64)
    xt = torch.tensor([0, 1, K, 2, K])
    p0 = path.denoised(logits, xt)
    assert torch.equal(p0[0], torch.tensor([1.0, 0, 0], dtype=F64)) and torch.equal(p0[3], torch.tensor([0, 0, 1.0],
                                                                                                     dtype=F64))
    assert torch.allclose(p0[2], torch.softmax(logits[2], -1))
    post = path.posterior(xt, p0, 0.6, 0.3)
    assert torch.equal(post[1], path.onehot(torch.tensor(1))) and float(post[4, K]) > 0


def test_rate_integrates_to_the_jump_probability():
    path = CategoricalPath(4, "uniform", "cosine")
    t, s = 0.8, 0.35
    grid = torch.linspace(s, t, 20001, dtype=F64)
    integral = torch.trapezoid(path.rate(grid), grid)
    assert abs(float(integral) - float(path.jump_mass(t, s))) < 1e-6
    p_jump = -torch.expm1(-path.jump_mass(t, s))
    assert abs(float(p_jump) - float((path.kappa(s) - path.kappa(t)) / (1 - path.kappa(t)))) < 1e-12


def test_bad_paths_are_one_line_errors():
    with pytest.raises(ConfigError, match="prior"):
        CategoricalPath(3, "gaussian")
    with pytest.raises(ConfigError, match="marginal prior"):
        CategoricalPath(3, "marginal")
    with pytest.raises(ConfigError, match="schedule"):
        CategoricalPath(3, "mask", {"kind": "sqrt"})
    with pytest.raises(UnknownNameError, match="categorical sampler"):
        categorical_sampler(lambda x, t: x, torch.zeros(2, 1, dtype=torch.long), torch.tensor([1.0, 0.0]),
                            path=CategoricalPath(3), space=DenseSpace(), rule="euler")


# ---------------------------------------------------------------------------- exact laws by enumeration
@pytest.mark.parametrize("prior", PRIORS)
def test_d3pm_is_exact_for_one_variable_at_any_number_of_steps(prior):
    states, p = _joint(1, seed=3)
    path = _path(prior, "cosine", states, p)
    for steps in (1, 3, 17):
        assert _tv(_exact_law(path, "d3pm", states, p, steps), p) < 1e-12


@pytest.mark.parametrize("rule", sorted(CATEGORICAL_RULES))
@pytest.mark.parametrize("prior", PRIORS)
def test_the_samplers_converge_on_a_joint_distribution(rule, prior):
    """Three dependent variables: the factorised step errs, less and less as the steps shrink
    (first order: the error at 256 steps is a few percent of the error at 4)."""
    states, p = _joint(3, seed=1)
    path = _path(prior, "linear", states, p)
    tv = [_tv(_exact_law(path, rule, states, p, n), p) for n in (4, 16, 64, 256)]
    assert tv[0] > 0.05
    assert all(b < a for a, b in zip(tv, tv[1:])), tv
    assert tv[-1] < 0.006 and tv[-1] < 0.1 * tv[0], tv


# ---------------------------------------------------------------------------- the sampler code on samples
def _empirical(x: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    index = {tuple(r.tolist()): i for i, r in enumerate(states)}
    counts = torch.zeros(len(states), dtype=F64)
    for r in x.tolist():
        if tuple(r) in index:
            counts[index[tuple(r)]] += 1
    return counts / len(x)


@pytest.mark.parametrize("rule", sorted(CATEGORICAL_RULES))
def test_sampler_reaches_the_noise_floor(rule):
    """``categorical_sampler`` itself: with many steps the samples' TV to the truth is within the
    TV of as many exact draws (the noise floor, its mean and spread measured on draws from the truth);
    with two steps it is far above it."""
    states, p = _joint(3, seed=2)
    path = _path("mask", "linear", states, p)
    denoise = _exact_denoiser(path, states, p)
    n = 6000
    g = torch.Generator().manual_seed(0)
    floor = torch.tensor([_tv(_empirical(states[torch.multinomial(p, n, True, generator=g)], states), p)
                          for _ in range(20)])
    space = DenseSpace()

    def run(steps: int) -> float:
        like = torch.zeros(n, 3, dtype=torch.long)
        gen = torch.Generator().manual_seed(1)
        x = categorical_prior(path, space, like, gen)
        out = categorical_sampler(denoise, x, torch.linspace(1, 0, steps + 1, dtype=F64), path=path, space=space,
                                  rule=rule, generator=gen)
        return _tv(_empirical(out, states), p)

    fine, coarse = run(128), run(2)
    assert fine < float(floor.mean() + 3 * floor.std()), (fine, floor.mean())
    assert coarse > float(floor.max()) + 0.05


def test_draws_follow_the_probabilities_and_per_sample_generators():
    space = DenseSpace()
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=F64).expand(40000, 3)
    u = uniforms(space, torch.zeros(40000, dtype=F64), torch.Generator().manual_seed(0))
    freq = torch.bincount(draw(probs, u), minlength=3).to(F64) / 40000
    assert torch.allclose(freq, probs[0], atol=0.01)
    # sample i draws only from generator i: the same samples in any batch
    like = torch.zeros(6, 4, dtype=torch.long)
    path = CategoricalPath(K, "uniform")
    a = categorical_prior(path, space, like, per_sample_generators(5, 6))
    b = categorical_prior(path, space, like[:2], per_sample_generators(5, 2))
    assert torch.equal(a[:2], b)
