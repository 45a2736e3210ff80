"""Condition dropout drawn per condition (core/process/diffusion.py, Condition.drop): the rates
measured on a large batch against their closed forms, a one-condition model's draws unchanged,
and reflow of a conditional flow model (api/reflow.py, core/training/reflow.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from diffuse.core.config import DiffusionConfig
from diffuse.core.data.condition import Condition, LabelKind, TokensKind
from diffuse.core.data.domain import Batch, Domain
from diffuse.core.data.space import DenseSpace
from diffuse.core.errors import ConfigError
from diffuse.core.process.diffusion import Diffusion

pytestmark = pytest.mark.usefixtures("one_thread")

N = 200_000
LABEL, TEXT = LabelKind(10), TokensKind(vocab_size=50, max_len=4)


def _cond(n: int = N) -> Condition:
    return Condition({"label": torch.arange(n) % 10, "text": torch.ones(n, 4, dtype=torch.long)},
                     {"label": LABEL, "text": TEXT})


def _null(c: Condition) -> dict[str, torch.Tensor]:
    return {k: c.kinds[k].is_null(v) for k, v in c.values.items()}


def _close(measured: float, p: float, n: int = N) -> None:
    """Within 4.5 standard errors of a Bernoulli(p) rate over n draws."""
    assert abs(measured - p) <= 4.5 * math.sqrt(p * (1 - p) / n) + 1e-12, (measured, p)


@pytest.mark.parametrize("p,each", [(0.1, None), (0.05, {"label": 0.05, "text": 0.05}), (0.2, {"label": 0.3}),
                                    (0.0, {"label": 0.25, "text": 0.5}), (0.1, {})])
def test_per_condition_drop_rates_on_a_large_batch(p, each):
    diff = Diffusion(DiffusionConfig(cond_drop=p, cond_drop_each=each))
    null = _null(diff.drop_conditions(_cond(), N, torch.Generator().manual_seed(0), torch.device("cpu")))
    rates = {"label": p, "text": p} if each is None else {k: each.get(k, 0.0) for k in ("label", "text")}
    for k in ("label", "text"):          # null with probability 1 - (1 - p)(1 - p_k)
        _close(float(null[k].float().mean()), 1 - (1 - p) * (1 - rates[k]))
    both = float((null["label"] & null["text"]).float().mean())
    _close(both, p + (1 - p) * rates["label"] * rates["text"])             # all null: the joint draw, or both own
    only_label = float((null["label"] & ~null["text"]).float().mean())
    _close(only_label, (1 - p) * rates["label"] * (1 - rates["text"]))      # the label alone: independent draws
    # the draws come from the generator: the same seed, the same drops
    again = _null(diff.drop_conditions(_cond(), N, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert all(torch.equal(null[k], again[k]) for k in null)


def test_one_condition_draws_exactly_as_before():
    """A model with one condition: one Bernoulli draw per sample (the code before per-condition
    dropout), the same generator state after it, so training draws and golden weights are kept."""
    n, p = 4096, 0.1
    cond = Condition({"label": torch.arange(n) % 10}, {"label": LABEL})
    g_new, g_old = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    diff = Diffusion(DiffusionConfig(cond_drop=p))
    new = diff.drop_conditions(cond, n, g_new, torch.device("cpu"))
    old = cond.drop(torch.rand(n, generator=g_old) < p)
    assert torch.equal(new["label"], old["label"])
    assert torch.equal(torch.rand(3, generator=g_new), torch.rand(3, generator=g_old))
    assert diff.drop_rates(["label"]) == {}
    assert diff.drop_rates(["label", "text"]) == {"label": p, "text": p}


def test_condition_drop_takes_a_mask_per_name_and_bad_rates_are_named():
    c = _cond(4)
    out = c.drop({"label": torch.tensor([True, False, True, False])})
    assert out["label"].tolist() == [10, 1, 10, 3] and torch.equal(out["text"], c["text"])
    with pytest.raises(ConfigError, match="cond_drop_each names prop, which this model does not take"):
        Diffusion(DiffusionConfig(cond_drop_each={"prop": 0.1})).drop_rates(["label", "text"])
    with pytest.raises(ConfigError, match=r"diffusion.cond_drop_each.label must be in \[0, 1\]"):
        Diffusion(DiffusionConfig(cond_drop_each={"label": 1.5}))


def test_unknown_per_condition_rate_fails_before_the_run_is_written(tmp_path):
    from diffuse import api
    from tiny import TINY_UNET

    with pytest.raises(ConfigError, match="names text, which this model does not take"):
        api.train("image", out=tmp_path / "r", model=TINY_UNET, steps=1, progress=False, conditions=["label"],
                  diffusion={"cond_drop_each": {"text": 0.1}})
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------ reflow of a conditional model
class _Points(Domain):
    """Two Gaussians at x = -2 and x = +2, the label saying which (a minimal conditional domain)."""

    name = "cond-points"
    description = "test"

    def load_data(self, path, options):
        raise NotImplementedError

    def template(self, num, generator=None, structure=None):
        return Batch(torch.zeros(num, 2), DenseSpace())

    def condition_kinds(self):
        return {"label": LabelKind(2)}

    def metrics(self, samples, reference):
        return {}

    def write(self, samples, out_dir):
        return []


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(3, 16)
        self.net = nn.Sequential(nn.Linear(2 + 16 + 16, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 2))
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(8) / 8))

    def forward(self, x, noise_level, cond=None, space=None):
        arg = noise_level.reshape(-1).expand(x.shape[0])[:, None] * self.freqs[None]
        labels = cond["label"] if cond is not None else torch.full((x.shape[0],), 2)
        return self.net(torch.cat([x, torch.sin(arg), torch.cos(arg), self.emb(labels)], 1))


def _fit(diff, den, batches, steps, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(den.parameters(), lr=lr)
    for _ in range(steps):
        loss = diff.training_losses(den, batches(g), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    den.eval()


def test_reflow_of_a_conditional_flow_keeps_conditions_and_straightens_conditional_paths():
    """Pairs drawn given each pair's label keep it; retrained on that coupling (with condition
    dropout), one-step conditional samples land in their label's mode far more often."""
    from diffuse.core.process.gaussian import energy_distance
    from diffuse.core.sampling.grids import time_grid
    from diffuse.core.sampling.registry import SAMPLERS
    from diffuse.core.training.reflow import draw_pairs

    torch.manual_seed(0)
    kinds = {"label": LabelKind(2)}
    diff = Diffusion(DiffusionConfig(training="flow", time_sampler="uniform", cond_drop=0.1))
    den = diff.denoiser(_Net())

    def data(g):
        y = torch.randint(0, 2, (256,), generator=g)
        x = torch.stack([4.0 * y - 2.0, torch.zeros(256)], 1) + 0.3 * torch.randn(256, 2, generator=g)
        return Batch(x, DenseSpace(), Condition({"label": y}, kinds))

    _fit(diff, den, data, 500, 3e-3, 0)
    dom = _Points().bind({})
    labels = torch.arange(1024) % 2
    pairs = draw_pairs(den, dom, 1024, steps=16, sampler="flow_heun", seed=0, device="cpu",
                       cond=Condition({"label": labels}, kinds))
    b = pairs.batch(torch.arange(1024))
    assert torch.equal(b.cond["label"], labels)                         # each pair keeps its condition
    assert float(((b.x[:, 0] > 0).long() == labels).float().mean()) > 0.95

    ref = data(torch.Generator().manual_seed(7))

    def one_step():
        """Energy distance of one-step samples given each label to that label's data (one Euler
        step of the first flow collapses onto the conditional mean; the reflowed one keeps the spread)."""
        y = torch.arange(2000) % 2
        x1 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            x = SAMPLERS["flow_euler"](den.bind(DenseSpace(), Condition({"label": y}, kinds)), x1,
                                       time_grid(diff.schedule, 1, "uniform"), schedule=diff.schedule,
                                       space=DenseSpace())
        return sum(energy_distance(x[y == k], ref.x[ref.cond["label"] == k]) for k in (0, 1))

    before = one_step()
    den.train()
    _fit(diff, den, lambda g: pairs.batch(torch.randint(0, 1024, (256,), generator=g)), 600, 2e-3, 1)
    after = one_step()
    assert after < 0.5 * before, (before, after)


def test_api_reflow_of_a_conditional_model(tmp_path):
    from diffuse import api
    from tiny import TINY_UNET

    base = api.train("image", out=tmp_path / "base", model={**TINY_UNET, "attn_levels": []}, steps=2,
                     batch_size=8, progress=False, final_eval=False, conditions=["label"],
                     diffusion={"training": "flow"})
    res = api.reflow(base.run_dir, out=tmp_path / "re", pairs=6, steps=2, train_steps=2, guidance_scale=2.0,
                     progress=False)
    record = json.loads((res.run_dir / "reflow.json").read_text())
    assert record["conditions"] == "of random training items" and record["guidance_scale"] == 2.0
    model = api.load(res.run_dir)
    assert "label" in model.condition_kinds()
    assert model.sample(2, sampler="flow_euler", steps=1, cond={"label": 3}).x.shape == (2, 1, 28, 28)
