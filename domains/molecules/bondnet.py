"""An E(3)-equivariant graph network with edge features, for molecules with bonds.

The denoiser of a mixed molecule state (``bonded_data``): coordinates ``pos``, element types
``atoms``, formal charges ``charges`` and bond orders ``bonds`` on atom pairs. It is an EGNN
(Satorras et al. 2021) whose pairs carry their own features, updated in every layer as MiDi's and
JODO's edge-aware layers update theirs (Vignac et al. 2023; Huang et al. 2023): per layer, on the
unordered pairs ``i < j`` of each molecule,

    m_ij = SiLU(W SiLU(A h_i + A h_j + (C h_i) * (C h_j) + B [e_ij, rbf(|x_i - x_j|), rbf(|x0_i - x0_j|)]))
    h_i <- h_i + MLP_h([LN(h_i), sum_j m_ij / Z])
    e_ij <- e_ij + MLP_e([LN(e_ij), m_ij])
    x_i <- x_i + sum_j (x_i - x_j) / (|x_i - x_j| + 1) * r tanh(MLP_x(m_ij)) / Z

with ``x0`` the previous step's coordinate prediction (self-conditioning; zeros without one), ``rbf``
Gaussian radial features and ``Z`` a constant. Messages are symmetric in ``i, j``, so each pair is
computed once, and the coordinate update moves ``i`` and ``j`` by opposite amounts along their
difference: the centre of mass is kept and the update is equivariant. Every feature is a function
of distances, so types, charges and bonds are invariant and coordinates equivariant under
rotations, reflections and translations (tested to float precision).

Inputs: the class indices of ``atoms`` / ``charges`` / ``bonds`` (the index past the last class is
the mask state of an absorbing process), the time (``noise_level``, ``t`` in [0, 1]) and the
``property`` context; with ``self_condition`` the previous prediction's class probabilities and
coordinates. Outputs: the coordinates after the last layer (the ``x0`` prediction, centre of mass
removed) and logits of the classes of ``atoms``, ``charges`` (per atom) and ``bonds`` (per pair,
from the pair features and a symmetric function of the two atoms').

Cost: linear in the number of atom pairs, ``sum_g n_g (n_g - 1) / 2`` (no padding).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ...core.data.product import ProductSpace
from ...core.errors import UserInputError
from ..presets import resolve_preset

__all__ = ["BondNet", "BONDNET_PRESETS", "bondnet_kwargs"]

#: named sizes; ``small`` is the shipped ``molecules-bonds`` model (sized for a few CPU hours of training)
BONDNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden": 32, "edge_hidden": 16, "layers": 2},
    "small": {"hidden": 64, "edge_hidden": 32, "layers": 4},
    "medium": {"hidden": 96, "edge_hidden": 48, "layers": 5},
    "base": {"hidden": 128, "edge_hidden": 64, "layers": 6},
}
_DEFAULTS: dict[str, Any] = {"hidden": 64, "edge_hidden": 32, "layers": 4, "rbf": 16, "rbf_max": 8.0,
                             "coords_range": 10.0, "normalization": 8.0, "self_condition": True}


def bondnet_kwargs(model: dict[str, Any]) -> dict[str, Any]:
    """A model config (``preset`` plus overrides) as :class:`BondNet` keyword arguments."""
    out = resolve_preset(model, BONDNET_PRESETS, _DEFAULTS, what="bond network", base=_DEFAULTS)
    for key in ("hidden", "edge_hidden", "layers", "rbf"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise UserInputError(f"model.{key} must be a positive whole number, got {out[key]!r}")
    return out


def _mlp(i: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, o))


class _RBF(nn.Module):
    def __init__(self, count: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, float(cutoff), int(count)), persistent=False)
        self.gamma = (int(count) / float(cutoff)) ** 2

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (d.unsqueeze(-1) - self.centres.to(d.dtype)) ** 2)


class _Layer(nn.Module):
    """One layer (module docstring); the first linear map of the message MLP is evaluated as
    ``A h_i + A h_j + (C h_i) * (C h_j) + B [e_ij, rbf, rbf0]`` with ``A h``, ``C h`` computed once per
    atom: a symmetric function of the pair at a fraction of the per-pair cost of a linear map of
    ``[h_i + h_j, h_i * h_j, ...]``."""

    def __init__(self, hidden: int, edge: int, rbf: int, coords_range: float, norm: float) -> None:
        super().__init__()
        self.node_a = nn.Linear(hidden, hidden)
        self.node_c = nn.Linear(hidden, hidden, bias=False)
        self.pair_b = nn.Linear(edge + 2 * rbf, hidden, bias=False)
        self.message = nn.Linear(hidden, hidden)
        self.node = _mlp(2 * hidden, hidden, hidden)
        self.edge = _mlp(edge + hidden, edge, edge)
        self.coord = _mlp(hidden, max(hidden // 2, 1), 1)
        nn.init.xavier_uniform_(self.coord[2].weight, gain=0.001)
        nn.init.zeros_(self.coord[2].bias)
        self.node_norm, self.edge_norm = nn.LayerNorm(hidden), nn.LayerNorm(edge)
        self.range, self.norm = float(coords_range), float(norm)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, e: Tensor, pos: Tensor, row: Tensor, col: Tensor, rbf: nn.Module,
                sc_rbf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        diff = pos.index_select(0, row) - pos.index_select(0, col)
        d = torch.sqrt((diff * diff).sum(1) + 1e-8)
        a, c = self.node_a(h), self.node_c(h)
        pre = (a.index_select(0, row) + a.index_select(0, col) + c.index_select(0, row) * c.index_select(0, col)
               + self.pair_b(torch.cat([e, rbf(d), sc_rbf], 1)))
        m = self.act(self.message(self.act(pre)))
        agg = h.new_zeros(h.shape).index_add_(0, row, m).index_add_(0, col, m) / self.norm
        h = h + self.node(torch.cat([self.node_norm(h), agg], 1))
        e = e + self.edge(torch.cat([self.edge_norm(e), m], 1))
        w = torch.tanh(self.coord(m)) * self.range
        shift = diff / (d.unsqueeze(1) + 1.0) * w / self.norm
        pos = pos + pos.new_zeros(pos.shape).index_add_(0, row, shift).index_add_(0, col, -shift)
        return h, e, pos


class BondNet(nn.Module):
    """The edge-feature EGNN for molecules with bonds (module docstring).

    Shapes: ``x["pos"]`` ``[N, 3]``, ``x["atoms"]`` / ``x["charges"]`` ``[N]``, ``x["bonds"]`` ``[P]``;
    ``noise_level`` ``[B]``; returns ``{"pos": [N, 3], "atoms": [N, K], "charges": [N, C], "bonds": [P, 4]}``.
    """

    def __init__(self, atom_classes: int, charge_classes: int, bond_classes: int = 4, hidden: int = 64,
                 edge_hidden: int = 32, layers: int = 4, rbf: int = 16, rbf_max: float = 8.0,
                 coords_range: float = 10.0, normalization: float = 8.0, self_condition: bool = True,
                 context_dim: int = 0, context_key: str = "property") -> None:
        super().__init__()
        self.classes = {"atoms": int(atom_classes), "charges": int(charge_classes), "bonds": int(bond_classes)}
        self.self_conditioning = bool(self_condition)
        self.context_dim, self.context_key = int(context_dim), str(context_key)
        k, c, b = self.classes["atoms"], self.classes["charges"], self.classes["bonds"]
        sc = self.self_conditioning
        node_in = (k + 1) + (c + 1) + 1 + self.context_dim + (k + c if sc else 0)
        self.node_in = _mlp(node_in, hidden, hidden)
        self.edge_in = _mlp((b + 1) + (b if sc else 0), edge_hidden, edge_hidden)
        self.rbf = _RBF(rbf, rbf_max)
        self.layers = nn.ModuleList([_Layer(hidden, edge_hidden, rbf, coords_range / math.sqrt(layers),
                                            normalization) for _ in range(layers)])
        self.out_norm, self.edge_out_norm = nn.LayerNorm(hidden), nn.LayerNorm(edge_hidden)
        self.atom_head, self.charge_head = _mlp(hidden, hidden, k), _mlp(hidden, hidden, c)
        self.bond_head = _mlp(edge_hidden + 2 * hidden, hidden, b)

    def forward(self, x: dict[str, Tensor], noise_level: Tensor, cond: Any = None, space: ProductSpace | None = None,
                self_cond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if space is None:
            raise UserInputError("the bond network needs the batch's ProductSpace (space=...)")
        nodes = space["pos"]
        pos0 = x["pos"]
        dev, dtype = pos0.device, pos0.dtype
        batch = nodes.batch.to(dev)
        row, col = (v.to(dev) for v in nodes.pairs())
        k, c, b = self.classes["atoms"], self.classes["charges"], self.classes["bonds"]
        oh = torch.nn.functional.one_hot
        parts = [oh(x["atoms"].long(), k + 1).to(dtype), oh(x["charges"].long(), c + 1).to(dtype),
                 noise_level.to(dtype).index_select(0, batch).unsqueeze(1)]
        if self.context_dim:
            ctx = cond.get(self.context_key) if cond is not None else None
            if ctx is None:   # no condition: the null context (all properties absent)
                ctx = pos0.new_zeros(nodes.num_graphs, self.context_dim)
            parts.append(ctx.to(dtype).index_select(0, batch))
        edge_parts = [oh(x["bonds"].long(), b + 1).to(dtype)]
        sc_pos = None
        if self.self_conditioning:
            if self_cond is None:
                parts += [pos0.new_zeros(len(batch), k + c)]
                edge_parts.append(pos0.new_zeros(len(row), b))
            else:
                parts += [self_cond["atoms"].to(dtype), self_cond["charges"].to(dtype)]
                edge_parts.append(self_cond["bonds"].to(dtype))
                sc_pos = self_cond["pos"].to(dtype)
        h = self.node_in(torch.cat(parts, 1))
        e = self.edge_in(torch.cat(edge_parts, 1))
        if sc_pos is not None:
            diff = sc_pos.index_select(0, row) - sc_pos.index_select(0, col)
            sc_rbf = self.rbf(torch.sqrt((diff * diff).sum(1) + 1e-8))
        else:
            sc_rbf = pos0.new_zeros(len(row), self.rbf.centres.numel())
        pos = pos0
        for layer in self.layers:
            h, e, pos = layer(h, e, pos, row, col, self.rbf, sc_rbf)
        pos = pos - nodes.graph_mean(pos).index_select(0, batch)
        hn = self.out_norm(h)
        hi, hj = hn.index_select(0, row), hn.index_select(0, col)
        bonds = self.bond_head(torch.cat([self.edge_out_norm(e), hi + hj, hi * hj], 1))
        return {"pos": pos, "atoms": self.atom_head(hn), "charges": self.charge_head(hn), "bonds": bonds}
