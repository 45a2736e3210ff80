"""An E(3)-invariant noise-aware molecule classifier / property regressor.

The invariant half of the EGNN (:class:`~diffuse.domains.molecules.egnn.GCL` message passing
with attention, Satorras et al. 2021) on node features ``[atom features, noise level]`` and edge
features ``|x_i - x_j|^2``, mean-pooled per molecule and read out by an MLP, as EDM's property
classifiers (Hoogeboom et al. 2022). It reads positions only through pairwise distances, so its
output is invariant to rotations, reflections and translations of the input; the gradient
of ``log p(y | x_t)`` it gives classifier guidance is therefore equivariant.

Property targets computed from any molecule data (``--target property:NAME``):

* ``gyration``: radius of gyration ``sqrt(mean_i |x_i - com|^2)`` (Angstrom; a size/shape
  measure: guiding it steers compact or elongated molecules).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...core.data.graph import GraphSpace

from .egnn import GCL
from ...core.errors import UserInputError

__all__ = ["MoleculeClassifier", "DEFAULT_CLASSIFIER", "PROPERTIES", "molecule_property"]

DEFAULT_CLASSIFIER: dict[str, Any] = {"hidden": 64, "layers": 3, "attention": True}
PROPERTIES = ("gyration",)


class MoleculeClassifier(nn.Module):
    """``f(x [N, 3 + F], noise_level [B], space=GraphSpace) -> [B, out_dim]``, E(3)-invariant."""

    def __init__(self, in_features: int, out_dim: int, hidden: int = 64, layers: int = 3, attention: bool = True,
                 time_scale: float = 1000.0) -> None:
        super().__init__()
        self.time_scale = float(time_scale)
        self.embed = nn.Linear(int(in_features) + 1, hidden)
        self.layers = nn.ModuleList(GCL(hidden, 1, attention, 1.0) for _ in range(int(layers)))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, int(out_dim)))

    def forward(self, x: Tensor, noise_level: Tensor, space: GraphSpace | None = None) -> Tensor:
        if space is None:
            raise UserInputError("the molecule classifier needs the batch's GraphSpace (space=...)")
        batch = space.batch.to(x.device)
        row, col = (e.to(x.device) for e in space.edges())
        t = (noise_level.to(x.dtype).reshape(-1).expand(space.num_graphs) / self.time_scale)[batch].unsqueeze(1)
        pos = x[:, :3]
        d2 = ((pos[row] - pos[col]) ** 2).sum(1, keepdim=True)
        h = self.embed(torch.cat([x[:, 3:], t], 1))
        for layer in self.layers:
            h = layer(h, row, col, d2)
        return self.head(space.graph_mean(h))


def molecule_property(name: str, x: Tensor, space: GraphSpace) -> Tensor:
    """Per-molecule values ``[B]`` of a property computed from the positions ``x[:, :3]``."""
    if name == "gyration":
        pos = x[:, :3]
        com = space.graph_mean(pos)[space.batch.to(x.device)]
        return torch.sqrt(space.graph_mean(((pos - com) ** 2).sum(1, keepdim=True)).reshape(-1))
    raise UserInputError(f"the molecules domain has no property {name!r}; it computes: {', '.join(PROPERTIES)}")
