"""The data a training run sees: its order, and batches built ahead in a background thread.

Epoch ``e`` walks a permutation of the training set seeded from ``(seed, e)``; step ``k`` draws its
batch (augmentation included) from a generator seeded with ``(seed, k)``. So a run's data is a
function of its seed and the global sample position alone: resuming, or changing the number of
processes, sees the same samples. With ``train.prefetch`` the next steps' batches are built ahead
in a background thread from the same generators; one is used only when built from exactly the
generator state the step has, so prefetching never changes a draw.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from ..config import TrainConfig
from ..data.domain import Batch, DomainDataset
from .optim import step_seed

__all__ = ["BatchStream"]


class BatchStream:
    """The batches of a run over ``dataset`` with ``cfg`` (seed, steps, gradient accumulation,
    prefetch depth); :meth:`prefetching` is the span in which batches are built ahead."""

    def __init__(self, dataset: DomainDataset, cfg: TrainConfig) -> None:
        self.dataset, self.cfg = dataset, cfg
        self._perms: dict[int, torch.Tensor] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[tuple[int, int], tuple[Any, int]] = {}
        self._queued = 0
        #: batches that came from the background thread (the rest were built in the loop)
        self.hits = 0

    def indices(self, position: int, count: int) -> torch.Tensor:
        """Dataset indices of global sample positions ``position .. position + count - 1``:
        epoch ``e`` walks a permutation seeded from ``(seed, e)``."""
        n = len(self.dataset)
        pos = torch.arange(position, position + count)
        epochs, offsets = pos // n, pos % n
        out = torch.empty(count, dtype=torch.long)
        for epoch in torch.unique(epochs).tolist():
            if epoch not in self._perms:
                self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
                self._perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(
                    step_seed(self.cfg.seed, epoch, salt=17)))
            sel = epochs == epoch
            out[sel] = self._perms[epoch][offsets[sel]]
        return out

    @contextmanager
    def prefetching(self) -> Iterator[None]:
        """Build batches ahead (``train.prefetch`` steps, one background thread) for the duration."""
        if self.cfg.prefetch > 0:
            self._pool, self._ahead, self._queued = ThreadPoolExecutor(1, thread_name_prefix="diffuse-data"), {}, 0
        try:
            yield
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._ahead = None, {}

    def batch(self, position: int, count: int, generator: torch.Generator) -> Batch:
        """The batch at sample positions ``position ..`` drawn with ``generator`` (a prefetched one
        where it was built from exactly this generator state; the generator then advances to the
        state after it). Otherwise (or if building it failed) it is built here."""
        pending = self._ahead.pop((position, count), None)
        if self._pool is not None and position % (count * self.cfg.grad_accum) == 0:
            self._prefetch(position // (count * self.cfg.grad_accum) + 1, count)
        if pending is not None:
            future, micro = pending
            try:
                batch, before, after = future.result()[micro]
            except Exception:  # noqa: BLE001 - built again below, where the error is raised
                batch = None
            if batch is not None and torch.equal(before, generator.get_state()):
                generator.set_state(after)
                self.hits += 1
                return batch
        return self.dataset.batch(self.indices(position, count), generator)

    def _prefetch(self, first_step: int, count: int) -> None:
        """Queue the batches of steps ``first_step .. first_step + prefetch - 1`` (not yet queued)."""
        cfg = self.cfg
        for step in range(first_step, min(first_step + cfg.prefetch, cfg.steps)):
            positions = [(step * cfg.grad_accum + m) * count for m in range(cfg.grad_accum)]
            if (positions[0], count) in self._ahead or step < self._queued:
                continue
            jobs = [self.indices(p, count) for p in positions]   # here: indices() is not thread-safe
            future = self._pool.submit(self._build, jobs, step_seed(cfg.seed, step))
            self._ahead.update({(p, count): (future, m) for m, p in enumerate(positions)})
            self._queued = step + 1

    def _build(self, jobs: list[torch.Tensor], seed: int) -> list[tuple[Batch, torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for indices in jobs:
            before = gen.get_state()
            out.append((self.dataset.batch(indices, gen), before, gen.get_state()))
        return out
