"""Shared by the few-step tests and ``benchmarks/bench_fewstep.py``: exact Gaussian mixtures, a small
MLP backbone with one or two noise inputs, and a plain loop that trains an objective on mixture
samples (the objective's own ``training_losses``; the Trainer adds EMA / checkpoints around it)."""

from __future__ import annotations

import math

import torch
from torch import nn

from diffuse.core.data.domain import Batch
from diffuse.core.data.space import DenseSpace
from diffuse.core.process.gaussian import GaussianMixture


def mixture(seed: int, k: int = 4, d: int = 2) -> GaussianMixture:
    """A random mixture of unit-ish scale (``spread`` 1.5, component scale 0.3)."""
    return GaussianMixture.random(k=k, d=d, seed=seed, spread=1.5, scale=0.3)


class TimeMLP(nn.Module):
    """``F(x, noise_level)`` for vectors ``[B, D]``: sinusoidal features of each noise input
    (``[B]`` or ``[B, time_inputs]``) concatenated to ``x``, then an MLP with SiLU."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, time_inputs: int = 1, freqs: int = 16) -> None:
        super().__init__()
        self.time_inputs = time_inputs
        layers: list[nn.Module] = [nn.Linear(dim + 2 * freqs * time_inputs, width), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(freqs) / freqs))

    def forward(self, x, noise_level, cond=None, space=None):
        level = noise_level.reshape(x.shape[0], -1).float()
        arg = (level[:, :, None] * self.freqs[None, None]).reshape(x.shape[0], -1)
        return self.net(torch.cat([x, torch.sin(arg), torch.cos(arg)], 1))


def batch_of(gm: GaussianMixture, n: int, generator: torch.Generator) -> Batch:
    return Batch(gm.sample(n, generator).float(), DenseSpace())


def train(objective, model: nn.Module, gm: GaussianMixture, steps: int, batch: int = 256, lr: float = 2e-3,
          seed: int = 0, ema: float = 0.0) -> nn.Module:
    """Adam on ``objective.training_losses`` for ``steps`` steps (cosine-decayed rate), the step
    counter given to objectives that follow it. Returns the model (or its EMA with ``ema > 0``)."""
    step = [0]
    if hasattr(objective, "follow"):
        objective.follow(lambda: step[0])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    avg = None
    if ema > 0:
        avg = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for k in range(steps):
        step[0] = k
        loss = objective.training_losses(model, batch_of(gm, batch, g), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if avg is not None:
            avg.update_parameters(model)
    out = avg.module if avg is not None else model
    return out.eval()
