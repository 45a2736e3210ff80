"""A Space for flat, PyG-style graph batches (molecules, point clouds).

Nodes of all graphs in a batch are stacked into one tensor ``x`` of shape ``[N, D]`` and a
batch index ``batch[N]`` says which graph each node belongs to (no ``N_max`` padding). The
first ``centred`` channels (for molecules: the 3 coordinates) live in the subspace where each
graph's centre of mass is zero, the translation-invariant subspace of Hoogeboom et al. 2022
("Equivariant Diffusion for Molecule Generation in 3D", sec. 3.2, the ideas of EDM's
``remove_mean_with_mask`` and ``subspace_dimensionality``); the remaining channels are plain
Euclidean.

* ``noise``: standard Gaussian on every channel, then the centred channels are projected to
  zero mean per graph (a standard Gaussian *within* the subspace, since the projection is
  orthogonal).
* ``expand``: per-graph coefficients ``[B]`` broadcast to nodes through the batch index.
* ``project``: subtract each graph's mean from the centred channels.
* ``reduce``: mean over a graph's node elements (nodes x channels).
* ``dof``: ``(n - 1) * centred + n * (D - centred)`` per graph.
* ``frame_shift``: the per-graph translation between ``x`` and a target over masked nodes
  (completion keeps fixed atoms in the sample's zero-CoM frame with it).
* ``pairs`` / ``pair_space``: the unordered node pairs ``i < j`` of each graph in a canonical
  order (graph by graph, then by the nodes' order within the graph) and a graph space over them,
  for values that live on pairs (a molecule's bond orders, ``core.data.product``). The order is
  kept by ``concat`` and ``take`` of the node batch, so pair values concatenate and shard with it.

Nothing here knows about chemistry.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .space import GeneratorLike, Space
from ..errors import UserInputError

__all__ = ["GraphSpace", "full_edges", "upper_pairs"]


def full_edges(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """All ordered node pairs ``(i, j)``, ``i != j``, within each graph, without Python loops.

    Returns ``(row, col)`` of length ``sum_g n_g (n_g - 1)``; the cost is the number of real
    pairs, never ``B * N_max^2``. Works for any batch order (nodes need not be grouped).
    """
    device = batch.device
    n_nodes = batch.numel()
    if n_nodes == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    order = torch.argsort(batch, stable=True)            # node ids grouped by graph
    counts = torch.bincount(batch, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts             # first sorted position of each graph
    sorted_batch = batch[order]
    per_node = counts[sorted_batch]                       # partners incl. self, per sorted node
    row_sorted = torch.repeat_interleave(torch.arange(n_nodes, device=device), per_node)
    # position of each pair inside its row block, then offset to the graph's first node
    block_start = torch.cumsum(per_node, 0) - per_node
    within = torch.arange(row_sorted.numel(), device=device) - block_start[row_sorted]
    col_sorted = starts[sorted_batch[row_sorted]] + within
    keep = row_sorted != col_sorted
    return order[row_sorted[keep]], order[col_sorted[keep]]


def upper_pairs(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """The unordered pairs ``(i, j)`` of nodes of one graph, each once (``i`` before ``j`` in the
    graph's node order), grouped graph by graph: ``sum_g n_g (n_g - 1) / 2`` pairs."""
    row, col = full_edges(batch, num_graphs)
    if row.numel() == 0:
        return row, col
    order = torch.argsort(torch.argsort(batch, stable=True))   # each node's position in graph order
    keep = order[row] < order[col]
    return row[keep], col[keep]


class GraphSpace(Space):
    """Flat graph batches ``x[N, D]`` with batch index ``batch[N]`` (see the module docstring).

    Shapes:
        batch: ``[N]`` long, values in ``0..num_graphs-1``
        x / like: ``[N, D]`` (``D >= centred``) or ``[N]`` for per-node scalars in ``reduce``
    """

    def __init__(self, batch: Tensor, num_graphs: int | None = None, centred: int = 3) -> None:
        batch = torch.as_tensor(batch, dtype=torch.long)
        if batch.ndim != 1:
            raise UserInputError(f"batch index must be 1-D, got shape {tuple(batch.shape)}")
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        self.batch = batch
        self.num_graphs = int(num_graphs)
        self.centred = int(centred)
        self.counts = torch.bincount(batch, minlength=self.num_graphs)
        self._edges: tuple[Tensor, Tensor] | None = None
        self._pairs: tuple[Tensor, Tensor] | None = None

    # ------------------------------------------------------------------ helpers
    def to(self, device: torch.device | str) -> "GraphSpace":
        out = GraphSpace(self.batch.to(device), self.num_graphs, self.centred)
        if self._edges is not None:
            out._edges = (self._edges[0].to(device), self._edges[1].to(device))
        if self._pairs is not None:
            out._pairs = (self._pairs[0].to(device), self._pairs[1].to(device))
        return out

    @staticmethod
    def concat(xs: Sequence[Tensor], spaces: Sequence["GraphSpace"]) -> tuple[Tensor, "GraphSpace"]:
        """Stack several batches into one: ``(x, space)`` with graphs renumbered in order."""
        batches, offset = [], 0
        for sp in spaces:
            batches.append(sp.batch + offset)
            offset += sp.num_graphs
        centred = spaces[0].centred if spaces else 3
        return torch.cat(list(xs), 0), GraphSpace(torch.cat(batches), offset, centred)

    def take(self, x: Tensor, start: int, stop: int) -> tuple[Tensor, "GraphSpace"]:
        """Graphs ``start .. stop - 1``: their nodes (in batch order) and a space renumbered from 0."""
        self._check(x)
        batch = self.batch.to(x.device)
        keep = (batch >= start) & (batch < stop)
        return x[keep], GraphSpace(batch[keep] - start, stop - start, self.centred)

    def edges(self) -> tuple[Tensor, Tensor]:
        """Fully connected ordered pairs within each graph (cached: the space is bound to one batch)."""
        if self._edges is None:
            self._edges = full_edges(self.batch, self.num_graphs)
        return self._edges

    def pairs(self) -> tuple[Tensor, Tensor]:
        """The unordered node pairs of each graph in canonical order (:func:`upper_pairs`; cached)."""
        if self._pairs is None:
            self._pairs = upper_pairs(self.batch, self.num_graphs)
        return self._pairs

    def pair_space(self) -> "GraphSpace":
        """A graph space whose elements are this batch's :meth:`pairs` (no centred channels)."""
        row, _ = self.pairs()
        return GraphSpace(self.batch[row], self.num_graphs, centred=0)

    def graph_sum(self, per_node: Tensor) -> Tensor:
        """Sum per-node rows ``[N, ...]`` into per-graph rows ``[B, ...]``."""
        out = per_node.new_zeros((self.num_graphs,) + tuple(per_node.shape[1:]))
        return out.index_add_(0, self.batch.to(per_node.device), per_node)

    def graph_mean(self, per_node: Tensor) -> Tensor:
        """Mean per graph ``[N, ...] -> [B, ...]`` (0 for an empty graph)."""
        cnt = self.counts.to(per_node.device).clamp(min=1).to(per_node.dtype)
        return self.graph_sum(per_node) / cnt.reshape(-1, *([1] * (per_node.ndim - 1)))

    def _check(self, like: Tensor) -> None:
        if like.shape[0] != self.batch.numel():
            raise UserInputError(f"tensor has {like.shape[0]} nodes but the batch index has {self.batch.numel()}")

    # ------------------------------------------------------------------ Space contract
    def batch_size(self, x: Tensor) -> int:
        return self.num_graphs

    def noise(self, like: Tensor, generator: GeneratorLike = None) -> Tensor:
        self._check(like)
        if generator is None or isinstance(generator, torch.Generator):
            z = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
            return self.project(z)
        gens: Sequence[torch.Generator] = generator
        if len(gens) != self.num_graphs:
            raise UserInputError(f"got {len(gens)} generators for a batch of {self.num_graphs} graphs")
        # graph g's nodes (in batch order) get noise drawn only from generator g
        batch = self.batch.to(like.device)
        order = torch.argsort(batch, stable=True)
        counts = self.counts.tolist()
        parts = [torch.randn((n,) + tuple(like.shape[1:]), generator=g, device=like.device, dtype=like.dtype)
                 for g, n in zip(gens, counts)]
        z = torch.empty_like(like)
        if parts:
            z[order] = torch.cat(parts, 0)
        return self.project(z)

    def expand(self, per_sample: Tensor, like: Tensor) -> Tensor:
        vals = per_sample[self.batch.to(per_sample.device)]
        return vals.reshape(vals.shape[0], *([1] * (like.ndim - 1)))

    def project(self, x: Tensor) -> Tensor:
        c = self.centred
        if c == 0:
            return x
        self._check(x)
        pos = x[:, :c]
        mean = self.graph_mean(pos)
        centred = pos - mean[self.batch.to(x.device)]
        if x.shape[1] == c:
            return centred
        return torch.cat([centred, x[:, c:]], dim=1)

    def frame_shift(self, x: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per graph, the mean of ``x - target`` over the masked nodes of the centred channels
        (``mask`` ``[N]``, ``[N, 1]`` or ``[N, D]``; a node counts where its centred channels are
        masked), broadcast to those channels of every node of the graph; zero elsewhere and for
        graphs with no masked node."""
        self._check(x)
        c = min(self.centred, x.shape[1])
        shift = torch.zeros_like(x)
        if c == 0:
            return shift
        m = torch.as_tensor(mask, device=x.device)
        m = m.reshape(m.shape[0], -1) if m.ndim > 1 else m[:, None]
        w = m.expand(x.shape[0], x.shape[1])[:, :c].to(x.dtype)       # [N, c]
        total = self.graph_sum(w * (x[:, :c] - target[:, :c]))         # [B, c]
        count = self.graph_sum(w).clamp(min=1)
        shift[:, :c] = (total / count)[self.batch.to(x.device)]
        return shift

    def reduce(self, per_element: Tensor) -> Tensor:
        self._check(per_element)
        flat = per_element.reshape(per_element.shape[0], -1)
        per_node = flat.sum(1)
        width = flat.shape[1]
        cnt = (self.counts.to(per_element.device) * width).clamp(min=1).to(per_node.dtype)
        return self.graph_sum(per_node) / cnt

    def num_elements(self, like: Tensor) -> Tensor:
        width = like[0].numel() if like.shape[0] else (like.shape[1] if like.ndim > 1 else 1)
        return (self.counts.to(like.device) * width).to(like.dtype if like.is_floating_point() else torch.float32)

    def dof(self, like: Tensor) -> Tensor:
        d = like.shape[1] if like.ndim > 1 else 1
        n = self.counts.to(like.device).to(like.dtype if like.is_floating_point() else torch.float32)
        c = min(self.centred, d)
        return (n - 1).clamp(min=0) * c + n * (d - c)

    def __repr__(self) -> str:
        return f"GraphSpace(nodes={self.batch.numel()}, graphs={self.num_graphs}, centred={self.centred})"
