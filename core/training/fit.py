"""One small supervised fit loop for the networks trained outside the diffusion
:class:`~diffuse.core.training.trainer.Trainer`: the metric feature networks (the image LeNet, the
audio FeatureNet) and the molecule property predictor. Each keeps its own recipe (optimizer,
schedule, steps, batch size, seed, loss, augmentation); the loop, the seeded batch orders and the
step bookkeeping are written once here.

Reproducibility: every random draw goes through the caller's ``torch.Generator`` in a fixed
order (a batch's indices, then whatever the loss draws for that batch), and the model is built
under the caller's ``torch.manual_seed``, so a recipe retrains to the same weights.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["fit", "epoch_batches", "sampled_batches"]


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches over ``n`` examples: each epoch a fresh permutation drawn from
    ``generator`` (when its first batch is asked for), cut into ``batch_size`` pieces (the last
    one of an epoch may be shorter)."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield perm[start:start + batch_size]


def sampled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches of ``batch_size`` drawn uniformly with replacement from ``n`` examples."""
    while True:
        yield torch.randint(0, n, (batch_size,), generator=generator)


def fit(model: nn.Module, loss: Callable[[nn.Module, Any], Tensor], batches: Iterable[Any], steps: int,
        optimizer: torch.optim.Optimizer, scheduler: Any = None, *, grad_clip: float | None = None,
        log: Callable[[int, float], None] | None = None, log_every: int = 100) -> float:
    """Minimise ``loss(model, batch)`` for ``steps`` optimizer steps over ``batches`` (taken
    lazily, one per step: see :func:`epoch_batches`, :func:`sampled_batches`).

    A step: ``loss`` -> gradients (set to ``None`` first) -> optional global-norm clipping at
    ``grad_clip`` -> ``optimizer.step()`` -> ``scheduler.step()`` (per step, if given). ``log(step,
    loss)`` is called after every ``log_every``-th step (1-based). The model is in training mode
    during the loop and in evaluation mode after it. Returns the last step's loss."""
    if steps < 1:
        raise ConfigError(f"training needs steps >= 1, got {steps}")
    model.train()
    value = torch.zeros(())
    for step, batch in zip(range(1, steps + 1), batches):   # range first: no batch is drawn past the last step
        value = loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if log is not None and step % log_every == 0:
            log(step, float(value.detach()))
    model.eval()
    return float(value.detach())
