"""Mixed continuous-categorical state in the core, on a tiny problem whose joint law is known.

A sample is ``(x, c)``: ``c ~ Cat(pi)`` and ``x | c ~ N(mu_c, s_c^2)`` (``x`` one real, ``c`` one of three
classes; with a label ``y`` the class weights are ``pi_y``). The exact mixed denoiser is
computable: the posterior over ``c_0`` given ``(x_t, c_t)`` weighs ``pi_{c_0} q(c_t | c_0)
N(x_t; alpha mu_{c_0}, alpha^2 s_{c_0}^2 + sigma^2)``, and ``E[x_0 | x_t, c_0]`` is Gaussian
conditioning. With it, sampling (each component with its own rule on one grid), flow matching over
the product, classifier-free guidance and completion are checked against the known laws; a small
network trained with the mixed objective learns the joint.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffuse.core.config import DiffusionConfig
from diffuse.core.data.condition import Condition, LabelKind
from diffuse.core.data.domain import Batch, Domain, DomainDataset
from diffuse.core.data.graph import GraphSpace, upper_pairs
from diffuse.core.data.product import ProductSpace, State
from diffuse.core.data.space import DenseSpace, per_sample_generators
from diffuse.core.errors import ConfigError, NotSupportedError, UserInputError
from diffuse.core.process.build import build_process
from diffuse.core.process.mixed import MixedDiffusion
from diffuse.core.sampling.mixed import (MixedGuidance, complete_mixed, generate_mixed, mixed_prior, sample_mixed)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
PI = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]], dtype=F64)     # class weights per label y
MU = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
SD = torch.tensor([0.3, 0.6, 0.4], dtype=F64)
FACTS = {"x": {"kind": "gaussian"}, "c": {"kind": "categorical", "classes": 3, "marginal": PI.mean(0).tolist()}}


def _process(x_spec=None, c_spec=None) -> MixedDiffusion:
    comps = {"x": x_spec or {"kind": "gaussian", "schedule": {"kind": "flow"}, "parameterization": "x0"},
             "c": c_spec or {"kind": "categorical", "prior": "mask", "schedule": "cosine"}}
    return build_process(DiffusionConfig(components=comps, time_scale=1.0), {"components": FACTS})


class ExactBackbone(nn.Module):
    """The exact denoiser of the toy joint as a mixed backbone (``x0`` prediction and class logits)."""

    def __init__(self, process: MixedDiffusion, label: bool = False) -> None:
        super().__init__()
        self.proc, self.label = process, label
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond=None, space=None):
        t = t.to(F64)
        alpha, sigma = self.proc.components["x"].schedule.alpha_sigma(t)
        path = self.proc.components["c"].path
        xt, ct = x["x"].to(F64)[:, 0], x["c"]
        if self.label and cond is not None:
            y = cond["label"]
            pi = torch.where((y < 2)[:, None], PI[y.clamp(max=1)], PI.mean(0)[None, :])   # null label: p(c)
        else:
            pi = PI.mean(0).expand(len(xt), 3)
        a, s = alpha[:, None], sigma[:, None]
        var = a ** 2 * SD ** 2 + s ** 2
        logw = (pi.log() - 0.5 * (xt[:, None] - a * MU) ** 2 / var - 0.5 * var.log()
                + path.marginal(torch.arange(3), t[:, None])[:, :, :].gather(2, ct[:, None, None].expand(-1, 3, 1))
                .squeeze(2).clamp_min(1e-300).log())
        w = torch.softmax(logw, 1)
        cond_mean = MU + a * SD ** 2 * (xt[:, None] - a * MU) / var
        x0 = (w * cond_mean).sum(1, keepdim=True)
        c_skip, c_out, _, _ = self.proc.components["x"].param.coefficients(a, s)
        raw = (x0 - c_skip * xt[:, None]) / c_out         # what the parameterization's network outputs
        return {"x": raw.float(), "c": logw.float()}


def _space(n: int) -> ProductSpace:
    return ProductSpace({"x": DenseSpace(), "c": DenseSpace()})


def _like(n: int) -> State:
    return State({"x": torch.zeros(n, 1), "c": torch.zeros(n, dtype=torch.long)})


def _sample(process, n=4000, steps=100, sampler="ddpm", categorical=None, cond=None, guidance=None, seed=0):
    den = process.denoiser(ExactBackbone(process, label=cond is not None))
    space = _space(n)
    gen = torch.Generator().manual_seed(seed)
    x = mixed_prior(den.components, space, _like(n), 1.0, gen)
    denoise = den.bind(space, cond)
    if guidance is not None:
        denoise = guidance.wrap(denoise, batch=Batch(_like(n), space, cond), denoiser=den)
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
    return sample_mixed(denoise, x, grid, components=den.components, space=space, generator=gen, sampler=sampler,
                        categorical=categorical)


def _check_joint(out: State, pi: torch.Tensor, tol_mean: float = 0.06, tol_sd: float = 0.06) -> None:
    n = len(out["c"])
    freq = torch.bincount(out["c"], minlength=3).to(F64) / n
    assert torch.all((freq - pi).abs() < 4 * torch.sqrt(pi * (1 - pi) / n) + 0.005), (freq, pi)
    x = out["x"][:, 0].to(F64)
    for k in range(3):
        sel = x[out["c"] == k]
        if len(sel) > 50:
            assert abs(float(sel.mean()) - float(MU[k])) < tol_mean, (k, float(sel.mean()))
            assert abs(float(sel.std()) - float(SD[k])) < tol_sd, (k, float(sel.std()))


# ---------------------------------------------------------------------------- sampling the product
@pytest.mark.parametrize("sampler, categorical", [("ddpm", "d3pm"), ("flow_euler", "dfm_euler"),
                                                  ("ddim", "tau_leaping")])
def test_mixed_sampling_reaches_the_joint_law(sampler, categorical):
    """Each component with its own rule on one grid: the class frequencies and each class's
    Gaussian come out (flow matching over the product: ``flow_euler`` + ``dfm_euler``)."""
    out = _sample(_process(), sampler=sampler, categorical=categorical)
    _check_joint(out, PI.mean(0))


def test_mixed_sampling_with_uniform_and_marginal_priors_on_a_vp_schedule():
    x_spec = {"kind": "gaussian", "schedule": {"kind": "cosine"}, "parameterization": "eps"}
    for prior in ("uniform", "marginal"):
        out = _sample(_process(x_spec, {"kind": "categorical", "prior": prior, "schedule": "linear"}), steps=150)
        _check_joint(out, PI.mean(0))


def test_few_steps_break_the_coupling_that_many_steps_keep():
    """The factorised step (each component given the same prediction) errs at two steps; the
    class-conditional means are off there and right at 100."""
    coarse = _sample(_process(), steps=2)
    errs = [abs(float(coarse["x"][coarse["c"] == k, 0].mean()) - float(MU[k])) for k in range(3)
            if int((coarse["c"] == k).sum()) > 50]
    assert max(errs) > 0.2


# ---------------------------------------------------------------------------- guidance and completion
def test_classifier_free_guidance_over_the_product():
    proc = _process()
    kind = LabelKind(2)
    n = 4000
    cond = Condition({"label": torch.ones(n, dtype=torch.long)}, {"label": kind})
    out = _sample(proc, n=n, cond=cond, guidance=MixedGuidance(scale=1.0))
    _check_joint(out, PI[1])                                   # scale 1: the conditional law
    out0 = _sample(proc, n=n, cond=cond, guidance=MixedGuidance(scale=0.0))
    _check_joint(out0, PI.mean(0))                             # scale 0: the unconditional one
    # scale s: per component, x0_u + s (x0_c - x0_u) and log p_u + s (log p_c - log p_u)
    den = proc.denoiser(ExactBackbone(proc, label=True))
    space, x = _space(3), State({"x": torch.tensor([[0.1], [1.0], [-1.0]]), "c": torch.tensor([3, 1, 3])})
    t = torch.full((3,), 0.6, dtype=F64)
    c3 = Condition({"label": torch.ones(3, dtype=torch.long)}, {"label": kind})
    g = MixedGuidance(scale=2.5).wrap(den.bind(space, c3), batch=Batch(x, space, c3), denoiser=den)(x, t)
    pc, pu = den(x, t, cond=c3, space=space), den(x, t, cond=c3.null(), space=space)
    assert torch.allclose(g["x"].x0, pu["x"].x0 + 2.5 * (pc["x"].x0 - pu["x"].x0), atol=1e-5)
    masked = torch.tensor([0, 2])                               # element 1 is unmasked: known exactly
    expect = torch.softmax(pu["c"][masked].log() + 2.5 * (pc["c"][masked].log() - pu["c"][masked].log()), -1)
    assert torch.allclose(g["c"][masked], expect, atol=1e-9)
    assert torch.equal(g["c"][1], torch.tensor([0.0, 1.0, 0.0], dtype=F64))
    with pytest.raises(NotSupportedError):
        MixedGuidance.of(object())


def test_completion_keeps_the_known_part_and_samples_the_rest_from_the_conditional():
    """A known class (unmasked: the network reads it) gives free ``x`` exactly its class's Gaussian."""
    proc = _process()
    den = proc.denoiser(ExactBackbone(proc))
    n, space = 3000, _space(3000)
    gen = torch.Generator().manual_seed(0)
    grid = torch.linspace(1.0, 0.0, 101, dtype=F64)
    # known class 2, free x: x ~ N(mu_2, s_2^2)
    known = State({"x": torch.zeros(n, 1), "c": torch.full((n,), 2)})
    x = mixed_prior(den.components, space, _like(n), 1.0, gen)
    out = complete_mixed(den.bind(space), x, grid, known=known, mask={"x": False, "c": True}, components=den.components,
                         space=space, generator=gen)
    assert torch.equal(out["c"], known["c"])
    assert abs(float(out["x"].mean()) - float(MU[2])) < 0.05 and abs(float(out["x"].std()) - float(SD[2])) < 0.05
    # known x = 0.2, free class: c ~ p(c | x_0) proportional to pi_c N(0.2; mu_c, s_c^2)
    known = State({"x": torch.full((n, 1), 0.2), "c": torch.zeros(n, dtype=torch.long)})
    x = mixed_prior(den.components, space, _like(n), 1.0, gen)
    out = complete_mixed(den.bind(space), x, grid, known=known, mask={"x": True, "c": False}, components=den.components,
                         space=space, generator=gen)
    assert torch.equal(out["x"], known["x"])
    # the true conditional puts all mass on class 1; replacement (RePaint without resampling) only
    # approaches it: classes unmasked early see a known x still deep in noise
    freq = torch.bincount(out["c"], minlength=3).to(F64) / n
    assert float(freq[1]) > 0.5 and float(freq[1]) > 2 * float(PI.mean(0)[1])


# ---------------------------------------------------------------------------- training the product
class ToyNet(nn.Module):
    """A small MLP on ``[x_t, onehot(c_t), Fourier features of t]`` predicting ``x0`` and class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1 + 4 + 8, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 4))

    def forward(self, x, t, cond=None, space=None):
        tt = t[:, None].float() * torch.arange(1, 5, dtype=torch.float32) * math.pi
        h = torch.cat([x["x"], nn.functional.one_hot(x["c"], 4).float(), tt.sin(), tt.cos()], 1)
        out = self.net(h)
        return {"x": out[:, :1], "c": out[:, 1:]}


def _data(n: int, g: torch.Generator) -> Batch:
    c = torch.multinomial(PI.mean(0), n, replacement=True, generator=g)
    x = (MU[c] + SD[c] * torch.randn(n, generator=g, dtype=F64)).float()[:, None]
    return Batch(State({"x": x, "c": c}), _space(n))


def test_a_network_trained_with_the_mixed_objective_learns_the_joint():
    """300 steps of the mixed objective: the class frequencies and each class's mean come out (a
    short run underestimates the spreads, so they are not checked)."""
    torch.manual_seed(0)
    proc = _process(c_spec={"kind": "categorical", "prior": "mask", "schedule": "linear", "weight": 0.5})
    den = proc.denoiser(ToyNet())
    opt = torch.optim.Adam(den.parameters(), 5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 300)
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        loss = proc.training_losses(den, _data(128, g), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    n, space = 3000, _space(3000)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        out = sample_mixed(den.bind(space), mixed_prior(den.components, space, _like(n), 1.0, gen),
                           torch.linspace(1, 0, 51, dtype=F64), components=den.components, space=space, generator=gen)
    freq = torch.bincount(out["c"], minlength=3).to(F64) / n
    assert torch.allclose(freq, PI.mean(0), atol=0.04), freq
    for k in range(3):
        assert abs(float(out["x"][out["c"] == k].mean()) - float(MU[k])) < 0.15, k


def test_training_losses_of_a_shard_are_those_samples_losses():
    proc = _process()
    den = proc.denoiser(ToyNet())
    batch = _data(10, torch.Generator().manual_seed(0))
    full = proc.training_losses(den, batch, torch.Generator().manual_seed(3))
    part = proc.training_losses(den, batch, torch.Generator().manual_seed(3), shard=(4, 9))
    assert torch.allclose(full[4:9], part, atol=1e-6)
    per = proc.component_losses(den, batch, torch.Generator().manual_seed(3))
    assert set(per) == {"x", "c"} and all(v.shape == (10,) for v in per.values())


# ---------------------------------------------------------------------------- a domain with a mixed state
class ToyDomain(Domain):
    """The toy joint as a domain from outside: its samples are mixed states."""

    name = "toy-mixed"
    description = "x | c ~ N(mu_c, s_c^2)"

    def load_data(self, path, options):
        raise NotImplementedError

    def template(self, num, generator=None, structure=None):
        return Batch(_like(num), _space(num))

    def metrics(self, samples, reference):
        return {}

    def write(self, samples, out_dir):
        return []


def test_generate_mixed_gives_the_same_samples_whatever_the_batch_size():
    proc = _process()
    den = proc.denoiser(ExactBackbone(proc))
    dom = ToyDomain().bind({"components": FACTS})
    a = generate_mixed(den, dom, 6, steps=8, seed=4, batch_size=6)
    b = generate_mixed(den, dom, 6, steps=8, seed=4, batch_size=4)
    assert torch.equal(a.x["c"], b.x["c"]) and torch.allclose(a.x["x"], b.x["x"])
    with pytest.raises(UserInputError, match="evaluations per step"):
        generate_mixed(den, dom, 2, sampler="edm_heun", steps=4)
    with pytest.raises(UserInputError, match="categorical sampler"):
        generate_mixed(den, dom, 2, steps=4, categorical="gibbs")


# ---------------------------------------------------------------------------- the contract's parts
def test_product_space_concatenates_shards_and_reduces_over_all_elements():
    nodes = GraphSpace(torch.tensor([0, 0, 0, 1, 1]), 2, centred=3)
    space = ProductSpace({"pos": nodes, "pairs": nodes.pair_space()})
    x = State({"pos": torch.randn(5, 3), "pairs": torch.arange(4.0)})      # 3 + 1 pairs
    assert space.batch_size(x) == 2
    (x2, sp2) = space.concat([x, x], [space, space])
    assert sp2.batch_size(x2) == 4 and torch.equal(x2["pairs"], torch.cat([x["pairs"]] * 2))
    part, psp = sp2.take(x2, 2, 4)
    assert torch.equal(part["pos"], x["pos"]) and torch.equal(psp["pairs"].batch, space["pairs"].batch)
    red = space.reduce(State({"pos": torch.ones(5, 3), "pairs": torch.full((4,), 3.0)}))
    assert torch.allclose(red, torch.tensor([(9 + 9) / 12, (6 + 3) / 7]))


def test_pairs_are_canonical_and_follow_concatenation():
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    row, col = upper_pairs(batch, 2)
    assert row.tolist() == [0, 0, 0, 1, 1, 2, 4, 4, 5] and col.tolist() == [1, 2, 3, 2, 3, 3, 5, 6, 6]
    a, b = GraphSpace(batch, 2), GraphSpace(torch.tensor([0, 0, 1, 1, 1]), 2)
    _, both = GraphSpace.concat([torch.zeros(7, 3), torch.zeros(5, 3)], [a, b])
    r, c = both.pairs()
    r2, c2 = b.pairs()
    assert torch.equal(r[len(a.pairs()[0]):], r2 + 7) and torch.equal(c[len(a.pairs()[0]):], c2 + 7)
    n = 4
    i, j = row[:6], col[:6]
    assert (i * n - i * (i + 1) // 2 + (j - i - 1)).tolist() == list(range(6))


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="kind"):
        build_process(DiffusionConfig(components={"x": {"kind": "poisson"}}), None)
    with pytest.raises(ConfigError, match="the data's samples have"):
        build_process(DiffusionConfig(components={"x": {"kind": "gaussian"}}), {"components": FACTS})
    with pytest.raises(ConfigError, match="diffusion.components is not set"):
        build_process(DiffusionConfig(), {"components": FACTS})
    with pytest.raises(ConfigError, match="one tensor"):
        build_process(DiffusionConfig(components={"x": {"kind": "gaussian"}}), {"shape": [2]})
    with pytest.raises(ConfigError, match="edm parameterization"):
        _process(x_spec={"kind": "gaussian", "parameterization": "edm"})
    with pytest.raises(ConfigError, match="unknown option"):
        _process(c_spec={"kind": "categorical", "prior": "mask", "temperature": 2})
    assert math.isfinite(float(_process().sample_t(4).sum()))
