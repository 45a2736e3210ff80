"""Molecule property conditioning (EDM, Hoogeboom et al. 2022, section 5.2) and its measurement.

Conditions: ``diffuse train --domain molecules --condition property:alpha`` (or several,
``property:alpha,gap``) trains on QM9's properties :data:`PROPERTY_NAMES` (dipole moment ``mu``
in D, polarizability ``alpha`` in Bohr^3, ``homo`` / ``lumo`` / ``gap`` in meV, heat capacity
``Cv`` in cal/mol K). The network condition is one :class:`~diffuse.core.data.condition.VectorKind`
named ``property``: the chosen properties normalised with the training data's mean and std,
followed by a presence mask (null = all absent, which condition dropout trains). The EGNN gets
it as extra invariant node features, broadcast to every atom, as EDM concatenates its context
to ``h``; the model stays E(3)-equivariant.

Atom counts stay *sampling structure*. When the user gives a target property but no counts,
each molecule's count is drawn from ``p(N | property)``, estimated from the training data by
nearest neighbours: the atom counts of the ``k = 50`` training molecules whose properties are
nearest the target (in the given properties, each scaled by its training std), one drawn
uniformly (:func:`draw_atom_counts`; the (property, count) pairs are kept in
``data_info["property_atoms"]``, at most 5,000 molecules, a seeded subset for larger data).
EDM goes the other way (a property drawn given ``N`` from per-``N`` histograms); drawing ``N``
given the property is what sampling at a target value needs, and nearest neighbours stay local
in the tails where fixed bins would be wide, and handle several properties jointly. An absent
property is ignored; a molecule with none draws from the plain count histogram ``p(N)``.

Measurement (EDM's protocol, ``benchmarks/bench_molecule_property.py``):
:class:`PropertyPredictor`, an E(3)-invariant EGNN regressor (the denoiser's invariant
message-passing layers on interatomic distances, summed over atoms, then an MLP), trained by
:func:`train_predictor` on one half of the training data and used to score molecules generated
by a model trained on the other half.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...core.data.condition import Condition, VectorKind
from ...core.data.graph import GraphSpace
from ...core.training.fit import epoch_batches, fit

from .egnn import GCL, _geometry
from ...core.errors import UserInputError

__all__ = ["PROPERTY_NAMES", "PROPERTY_UNITS", "CONDITION_NAME", "parse_property_names", "atom_count_table",
           "draw_atom_counts", "PropertyPredictor", "train_predictor", "predict", "atoms_only_baseline"]

#: QM9 properties EDM conditions on, in the bundled data's column order, and their units
PROPERTY_NAMES = ["mu", "alpha", "homo", "lumo", "gap", "Cv"]
PROPERTY_UNITS = {"mu": "D", "alpha": "Bohr^3", "homo": "meV", "lumo": "meV", "gap": "meV", "Cv": "cal/mol K"}
#: the condition's name in ``Batch.cond`` and ``model.sample(cond={"property": {...}})``
CONDITION_NAME = "property"
_K = 50             # neighbours whose atom counts p(N | property) draws from
_MAX_ROWS = 5000    # training molecules kept for it in data_info


def parse_property_names(spec: str | Sequence[str], known: Sequence[str] = PROPERTY_NAMES) -> list[str]:
    """``"alpha"``, ``"alpha,gap"`` or ``["alpha", "gap"]`` -> known property names, in the given
    order, without repeats; ``ValueError`` names an unknown one (case-insensitive match)."""
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in str(s).split(",")]
    lower = {k.lower(): k for k in known}
    out: list[str] = []
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        if name.lower() not in lower:
            raise UserInputError(f"unknown molecule property {name!r}; known: {', '.join(known)}")
        if lower[name.lower()] not in out:
            out.append(lower[name.lower()])
    if not out:
        raise UserInputError(f"--condition property:NAME needs a property name; known: {', '.join(known)}")
    return out


# ---------------------------------------------------------------------- p(N | property)
def atom_count_table(counts: np.ndarray, props: np.ndarray, names: Sequence[str],
                     max_rows: int = _MAX_ROWS, seed: int = 0) -> dict[str, Any]:
    """JSON ``{"names", "values": [[v per name] per molecule], "num_atoms": [...], "k"}``: the
    (property, atom count) pairs of the training molecules that :func:`draw_atom_counts` draws
    from (a seeded subset of ``max_rows`` molecules for large data, to keep checkpoints small)."""
    counts = np.asarray(counts, np.int64)
    props = np.asarray(props, np.float64).reshape(len(counts), len(names))
    keep = np.arange(len(counts))
    if len(keep) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), max_rows, replace=False))
    return {"names": list(names), "values": [[float(f"{v:.6g}") for v in row] for row in props[keep]],
            "num_atoms": counts[keep].tolist(), "k": int(min(_K, len(keep)))}


def draw_atom_counts(table: dict[str, Any], hist: Sequence[Sequence[int]], cond: Condition,
                     generators: Sequence[torch.Generator]) -> Tensor:
    """One atom count per sample from ``p(N | given properties)``: the counts of the ``k``
    training molecules nearest to the target in the given properties (each scaled by its
    training std), one drawn uniformly; a sample with no property given draws from the count
    histogram ``hist``. Sample ``i`` draws from ``generators[i]`` only, so the draw does not
    depend on the batch size."""
    kind = cond.kinds[CONDITION_NAME]
    assert isinstance(kind, VectorKind)
    values = cond[CONDITION_NAME].detach().cpu().double()
    d = len(kind.names)
    ref = torch.tensor(table["values"], dtype=torch.float64).reshape(-1, len(table["names"]))
    ref_counts = torch.tensor(table["num_atoms"], dtype=torch.long)
    k = int(table["k"])
    sizes = torch.tensor([h[0] for h in hist], dtype=torch.long)
    prior = torch.tensor([float(h[1]) for h in hist], dtype=torch.float64)
    out = []
    for i in range(values.shape[0]):
        dist = torch.zeros(len(ref_counts), dtype=torch.float64)
        given = False
        for j, name in enumerate(kind.names):
            if values[i, d + j] <= 0 or name not in table["names"]:
                continue
            given = True
            col = ref[:, table["names"].index(name)]
            target = float(values[i, j]) * kind.std[j] + kind.mean[j]
            dist += ((col - target) / kind.std[j]) ** 2
        if not given:
            out.append(int(sizes[int(torch.multinomial(prior, 1, generator=generators[i]))]))
            continue
        near = torch.sort(dist, stable=True).indices[:k]
        out.append(int(ref_counts[near[int(torch.randint(len(near), (1,), generator=generators[i]))]]))
    return torch.tensor(out, dtype=torch.long)


# ---------------------------------------------------------------------- the property predictor
class PropertyPredictor(nn.Module):
    """E(3)-invariant EGNN regressor: embedded features -> invariant message passing on
    distances (the denoiser's :class:`~diffuse.domains.molecules.egnn.GCL` layers) -> sum over
    atoms -> MLP -> ``outputs`` normalised properties. Input ``x = [positions, features]``."""

    def __init__(self, in_features: int, outputs: int = 1, hidden: int = 64, layers: int = 4,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, hidden)
        self.layers = nn.ModuleList([GCL(hidden, 1, True, 1.0) for _ in range(layers)])
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, outputs))
        self.register_buffer("mean", torch.tensor(list(mean) if mean is not None else [0.0] * outputs))
        self.register_buffer("std", torch.tensor(list(std) if std is not None else [1.0] * outputs))

    def normalised(self, x: Tensor, space: GraphSpace) -> Tensor:
        batch = space.batch.to(x.device)
        row, col = (e.to(x.device) for e in space.edges())
        d2, _ = _geometry(x[:, :3], row, col, 1.0)
        h = self.embed(x[:, 3:])
        for gcl in self.layers:
            h = gcl(h, row, col, d2)
        pooled = h.new_zeros(space.num_graphs, h.shape[1]).index_add_(0, batch, h)
        return self.out(pooled)

    def forward(self, x: Tensor, space: GraphSpace) -> Tensor:
        """Properties in their units, ``[B, outputs]``."""
        return self.normalised(x, space) * self.std + self.mean


def train_predictor(dataset, names: Sequence[str], *, steps: int = 1000, batch_size: int = 64, lr: float = 1e-3,
                    hidden: int = 64, layers: int = 4, seed: int = 0, log=None) -> PropertyPredictor:
    """Fit a :class:`PropertyPredictor` on ``dataset`` (a property-carrying MoleculeDataset) by
    L1 loss on normalised targets (as EDM's property classifiers), AdamW + cosine decay over
    ``steps``, a fresh permutation of the molecules every epoch; seeded
    (:func:`~diffuse.core.training.fit.fit`). ``log(message)`` every 100 steps."""
    torch.manual_seed(seed)
    cols = [dataset.property_names.index(n) for n in names]
    y = dataset.properties[:, cols].double()
    mean, std = y.mean(0), y.std(0).clamp_min(1e-8)
    model = PropertyPredictor(dataset.codec.num_features, len(names), hidden, layers, mean.tolist(), std.tolist())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-12)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)

    def loss(net: PropertyPredictor, idx: Tensor) -> Tensor:
        b = dataset.batch(idx)
        return (net.normalised(b.x, b.space) - ((y[idx] - mean) / std).float()).abs().mean()

    fit(model, loss, epoch_batches(len(dataset), batch_size, g), steps, opt, sched,
        log=None if log is None else lambda step, value: log(f"predictor step {step}: L1 (normalised) {value:.4f}"))
    return model


@torch.no_grad()
def predict(model: PropertyPredictor, batch) -> Tensor:
    """Predicted properties ``[B, outputs]`` of a batch of molecules (model space)."""
    return model(batch.x.float(), batch.space)


def atoms_only_baseline(train_counts: np.ndarray, train_y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """EDM's '#Atoms' row: predict a property from the atom count alone (the training mean of
    molecules with that count; the nearest count's mean for a count not seen in training)."""
    train_counts = np.asarray(train_counts)
    sizes = np.unique(train_counts)
    means = np.array([np.asarray(train_y)[train_counts == s].mean(0) for s in sizes])
    pick = np.abs(np.asarray(counts)[:, None] - sizes[None, :]).argmin(1)
    return means[pick]
