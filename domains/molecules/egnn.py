"""E(n)-equivariant graph network on flat molecule batches.

The EGNN of Satorras, Hoogeboom & Welling 2021 ("E(n) Equivariant Graph Neural Networks") in
the form EDM uses as its denoiser (Hoogeboom et al. 2022, appendix B): blocks of invariant
message-passing layers followed by an equivariant coordinate update,

    m_ij  = phi_e(h_i, h_j, d_ij^2, d0_ij^2) * sigmoid(phi_att(m_ij))         (attention)
    h_i  <- h_i + phi_h(h_i, sum_j m_ij / Z)
    x_i  <- x_i + sum_j (x_i - x_j) / (|x_i - x_j| + c) * r tanh(phi_x(h_i, h_j, d_ij^2, d0_ij^2)) / Z

with ``d0`` the distances of the input, ``c = norm_constant``, ``r = coords_range / layers`` and
``Z = normalization_factor``. The noise level the denoiser gives (``c_noise``: the diffusion time ``t``
with the molecule domain's ``diffusion.time_scale = 1``, EDM's convention) is an input node feature,
and so is a per-molecule context vector (``context_dim > 0``: the normalised properties and
their presence mask of the ``property`` condition, broadcast to every atom as EDM concatenates
its context to ``h``); both are invariant, so equivariance is kept.
The backbone returns ``eps`` for positions (``x_out - x_in``, centre of mass removed) and for
the features.

Edges are all ordered pairs within each molecule, built per batch from the batch index
(:func:`diffuse.core.data.graph.full_edges`): the cost is the real number of atom pairs
``sum_g n_g (n_g - 1)``, not ``B * N_max^2`` as in EDM's dense padded code. The first linear
layer of each edge MLP acts on ``[h_i, h_j, e_ij]``; it is evaluated as ``A h_i + B h_j + C e_ij``
with ``A h`` and ``B h`` computed once per node, which is the same function at a fraction of the
per-edge cost.

Determinism: node rows are gathered onto edges with ``index_select`` (its backward is
``index_add_``, which adds in index order) and edge messages are summed with ``index_add_``; the
backward of plain indexing ``h[row]`` is ``index_put_(accumulate=True)``, whose threads race, so
two identical 2-thread training runs used to drift apart in the last bits. (Matrix products are
still reduced in an order the BLAS picks by thread count: results are bit-identical for a given
thread count, not across thread counts.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ...core.data.graph import GraphSpace
from ...core.errors import UserInputError
from ..presets import resolve_preset

__all__ = ["EGNN", "PRESETS", "model_kwargs"]

#: named model sizes; ``edm`` is the QM9 denoiser of Hoogeboom et al. 2022.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden": 32, "layers": 2},
    "small": {"hidden": 64, "layers": 4},
    "edm": {"hidden": 256, "layers": 9},
}
_DEFAULTS: dict[str, Any] = {
    "hidden": 64, "layers": 4, "inv_sublayers": 1, "attention": True, "tanh": True, "coords_range": 15.0,
    "norm_constant": 1.0, "normalization_factor": 1.0, "time_inputs": 1,
}


def model_kwargs(model: dict[str, Any]) -> dict[str, Any]:
    """Resolve a model config (``preset`` plus overrides) into :class:`EGNN` keyword arguments."""
    out = resolve_preset(model, PRESETS, _DEFAULTS, what="molecule model", base=_DEFAULTS)
    if int(out["layers"]) < 1 or int(out["hidden"]) < 1 or int(out["inv_sublayers"]) < 1:
        raise UserInputError("molecule model needs layers, hidden and inv_sublayers >= 1")
    return out


class _SiLULinear(torch.autograd.Function):
    """``linear(silu(x), W, b)`` that keeps only ``x`` for backward and recomputes ``silu(x)``:
    one fewer ``[E, H]`` activation per edge MLP (the edge tensors dominate the memory)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return nn.functional.linear(nn.functional.silu(x), weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        sig = torch.sigmoid(x)
        act = x * sig
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_w = flat_grad.t().to(act.dtype) @ act.reshape(-1, act.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = flat_grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad @ weight.to(grad.dtype)) * (sig * (1 + x * (1 - sig))).to(grad.dtype)
        return grad_x, (grad_w.to(weight.dtype) if grad_w is not None else None), \
            (grad_b.to(weight.dtype) if grad_b is not None else None)


def silu_linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(silu(x))`` with the memory-lean backward of :class:`_SiLULinear`."""
    return _SiLULinear.apply(x, layer.weight, layer.bias)


class _PairLinear(nn.Module):
    """``Linear([h_i, h_j, e_ij])`` computed as ``A h_i + B h_j + C e_ij`` (node-level A h, B h)."""

    def __init__(self, hidden: int, edge_dim: int, out: int) -> None:
        super().__init__()
        self.src = nn.Linear(hidden, out)
        self.dst = nn.Linear(hidden, out, bias=False)
        self.edge = nn.Linear(edge_dim, out, bias=False)

    def forward(self, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor) -> Tensor:
        return self.src(h).index_select(0, row) + self.dst(h).index_select(0, col) + self.edge(edge_attr)


class GCL(nn.Module):
    """Invariant graph convolution layer with attention (EDM's ``GCL``)."""

    def __init__(self, hidden: int, edge_dim: int, attention: bool, normalization_factor: float) -> None:
        super().__init__()
        self.edge_in = _PairLinear(hidden, edge_dim, hidden)
        self.edge_out = nn.Linear(hidden, hidden)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.att = nn.Linear(hidden, 1) if attention else None
        self.norm = float(normalization_factor)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor) -> Tensor:
        m = self.act(silu_linear(self.edge_in(h, row, col, edge_attr), self.edge_out))
        if self.att is not None:
            m = m * torch.sigmoid(self.att(m))
        agg = h.new_zeros(h.shape).index_add_(0, row, m) / self.norm
        return h + self.node_mlp(torch.cat([h, agg], 1))


class CoordUpdate(nn.Module):
    """Equivariant coordinate update along normalised relative vectors (EDM's ``EquivariantUpdate``)."""

    def __init__(self, hidden: int, edge_dim: int, tanh: bool, coords_range: float,
                 normalization_factor: float) -> None:
        super().__init__()
        self.inp = _PairLinear(hidden, edge_dim, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(self.out.weight, gain=0.001)
        self.tanh, self.range, self.norm = bool(tanh), float(coords_range), float(normalization_factor)

    def forward(self, h: Tensor, pos: Tensor, row: Tensor, col: Tensor, unit: Tensor, edge_attr: Tensor) -> Tensor:
        w = silu_linear(silu_linear(self.inp(h, row, col, edge_attr), self.mid), self.out)
        w = torch.tanh(w) * self.range if self.tanh else w
        return pos + pos.new_zeros(pos.shape).index_add_(0, row, unit * w) / self.norm


def _geometry(pos: Tensor, row: Tensor, col: Tensor, norm_constant: float) -> tuple[Tensor, Tensor]:
    diff = pos.index_select(0, row) - pos.index_select(0, col)
    d2 = (diff * diff).sum(1, keepdim=True)
    unit = diff / (torch.sqrt(d2 + 1e-8) + norm_constant)
    return d2, unit


def egnn_trunk(blocks: nn.ModuleList, h: Tensor, pos0: Tensor, row: Tensor, col: Tensor,
               norm_constant: float) -> tuple[Tensor, Tensor]:
    """The EGNN's message-passing trunk (EDM's layout): per block, GCLs on edge attributes
    (squared distance now, squared distance at the input) then one equivariant coordinate update.
    ``blocks``: pairs ``(ModuleList of GCL, CoordUpdate)``. Returns ``(h, pos)``; shared by the
    denoiser and the molecule autoencoder."""
    d0, _ = _geometry(pos0, row, col, norm_constant)
    pos = pos0
    for gcls, upd in blocks:
        d2, unit = _geometry(pos, row, col, norm_constant)
        edge_attr = torch.cat([d2, d0], 1)
        for gcl in gcls:
            h = gcl(h, row, col, edge_attr)
        pos = upd(h, pos, row, col, unit, edge_attr)
    return h, pos


class EGNN(nn.Module):
    """EDM-style EGNN denoiser for ``x = [positions (3), features (F)]`` on a :class:`GraphSpace`.

    Shapes:
        x: ``[N, 3 + F]``; noise_level: ``[B]``; output: ``[N, 3 + F]``
    """

    def __init__(self, in_features: int, hidden: int = 64, layers: int = 4, inv_sublayers: int = 1,
                 attention: bool = True, tanh: bool = True, coords_range: float = 15.0,
                 norm_constant: float = 1.0, normalization_factor: float = 1.0,
                 context_dim: int = 0, context_key: str = "property", time_inputs: int = 1) -> None:
        super().__init__()
        if time_inputs not in (1, 2):
            raise UserInputError(f"time_inputs must be 1 or 2 (a flow-map model's time and step), got {time_inputs}")
        #: noise inputs per molecule (2: a flow-map model's, ``core.process.flowmap``), node features each
        self.time_inputs = int(time_inputs)
        self.in_features = int(in_features)
        self.context_dim, self.context_key = int(context_dim), str(context_key)
        self.norm_constant = float(norm_constant)
        edge_dim = 2   # current and input squared distances
        self.embed = nn.Linear(self.in_features + self.time_inputs + self.context_dim, hidden)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            gcls = nn.ModuleList([GCL(hidden, edge_dim, attention, normalization_factor) for _ in range(inv_sublayers)])
            # as in EDM, the coordinate range is shared out between the blocks
            upd = CoordUpdate(hidden, edge_dim, tanh, float(coords_range) / layers, normalization_factor)
            self.blocks.append(nn.ModuleList([gcls, upd]))
        self.head = nn.Linear(hidden, self.in_features)

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None, space: GraphSpace | None = None) -> Tensor:
        if space is None:
            raise UserInputError("the EGNN needs the batch's GraphSpace (space=...)")
        pos0, h = x[:, :3], x[:, 3:]
        batch = space.batch.to(x.device)
        row, col = space.edges()
        row, col = row.to(x.device), col.to(x.device)
        t = noise_level.to(x.dtype).reshape(noise_level.shape[0], -1).index_select(0, batch)
        parts = [h, t]
        if self.context_dim:
            ctx = cond.get(self.context_key) if cond is not None else None
            if ctx is None:   # no condition: the null context (all properties absent)
                ctx = x.new_zeros(space.num_graphs, self.context_dim)
            parts.append(ctx.to(x.dtype).index_select(0, batch))
        h = self.embed(torch.cat(parts, 1))
        h, pos = egnn_trunk(self.blocks, h, pos0, row, col, self.norm_constant)
        eps_pos = pos - pos0
        eps_pos = eps_pos - space.graph_mean(eps_pos).index_select(0, batch)
        return torch.cat([eps_pos, self.head(h)], 1)
