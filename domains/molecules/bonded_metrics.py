"""Metrics of generated molecules with bonds, under two protocols that are never mixed in one table.

**Bonds generated** (MiDi, Vignac et al. 2023; JODO; EQGAT-diff; SemlaFlow; FlowMol): the
molecule is the graph the model generated, its bonds and formal charges.

* an atom is *stable* when the sum of its bond orders equals the valence its element has at its
  formal charge (:data:`CHARGED_VALENCE`; neutral atoms EDM's ``ALLOWED_VALENCE``); hydrogens are
  explicit, so nothing is implicit; a molecule is stable when all its atoms are;
* *validity*: RDKit sanitizes the generated graph (with its charges); the SMILES is that of the
  largest fragment (as EDM's validity); *valid and connected* also asks for one fragment;
  *uniqueness* among valid molecules, *novelty* among unique valid ones against the training
  molecules' graph SMILES.

**EDM's protocol** (Hoogeboom et al. 2022, ``chem.analyze_molecule``): the generated element types
and coordinates only, bonds inferred from distances by EDM's rule; the same samples, so the figures
compare with EDM / GeoLDM and with the bond-free model. Its keys carry the prefix ``edm/`` (the
command line prints them as a table of their own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from ...core.data.domain import Batch
from .chem import ALLOWED_VALENCE, BondTables, analyze_molecule, validity_table
from .graphs import graph_smiles

__all__ = ["CHARGED_VALENCE", "GraphReport", "analyze_graph", "graph_table", "split_bonded", "bonded_metrics",
           "PROTOCOLS"]

#: the valence of an element at a formal charge other than 0 (isoelectronic rule: N+ like C, O- like F ...)
CHARGED_VALENCE: dict[tuple[str, int], tuple[int, ...]] = {
    ("C", 1): (3,), ("C", -1): (3,), ("N", 1): (4,), ("N", -1): (2,), ("O", 1): (3,), ("O", -1): (1,),
    ("S", 1): (3,), ("S", -1): (1,), ("P", 1): (4,), ("P", -1): (2,), ("B", -1): (4,),
    ("F", -1): (0,), ("Cl", -1): (0,), ("Br", -1): (0,), ("I", -1): (0,), ("H", 1): (0,), ("H", -1): (0,),
}
#: the two protocols and the prefix of their metric keys
PROTOCOLS = {"bonds": "", "edm": "edm/"}


def allowed_valence(symbol: str, charge: int) -> tuple[int, ...]:
    if charge == 0:
        return ALLOWED_VALENCE.get(symbol, ())
    return CHARGED_VALENCE.get((symbol, int(charge)), ())


@dataclass
class GraphReport:
    """One generated graph under the bonds-generated protocol."""

    num_atoms: int
    stable_atoms: int
    stable: bool
    connected: bool
    smiles: str | None

    @property
    def valid(self) -> bool:
        return self.smiles is not None


def analyze_graph(symbols: Sequence[str], orders: np.ndarray, charges: Sequence[int]) -> GraphReport:
    """Stability, connectivity and validity of a graph: ``orders`` ``[n, n]`` symmetric bond orders."""
    n = len(symbols)
    orders = np.asarray(orders, dtype=np.int64)
    valence = orders.sum(1)
    stable_atoms = sum(int(int(v) in allowed_valence(s, int(q)))
                       for v, s, q in zip(valence.tolist(), symbols, list(charges)))
    n_comp = connected_components(csr_matrix(orders > 0), directed=False)[0] if n else 0
    ii, jj = np.nonzero(np.triu(orders, 1))
    bonds = np.stack([ii, jj, orders[ii, jj]], 1) if len(ii) else np.zeros((0, 3), np.int64)
    smiles = graph_smiles(list(symbols), bonds, np.asarray(charges)) if n else None
    return GraphReport(n, stable_atoms, stable_atoms == n and n > 0, n_comp == 1, smiles)


def graph_table(reports: Iterable[GraphReport], reference_smiles: set[str] | None = None) -> dict[str, float]:
    """The bonds-generated figures, in the keys (and order) of ``chem.validity_table``."""
    return validity_table(reports, reference_smiles)


def split_bonded(samples: Batch, info: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """Per molecule ``{"pos" [n, 3], "types" [n], "charges" [n] (formal charges), "orders" [n, n]}``."""
    x, space = samples.x, samples.space
    nodes = space["pos"]
    charge_values = np.asarray(info.get("charge_values", [0]), np.int64)
    batch = nodes.batch.cpu()
    counts = nodes.counts.cpu().tolist()
    order = torch.argsort(batch, stable=True)
    pos = x["pos"].detach().double().cpu()[order].numpy()
    types = x["atoms"].detach().cpu()[order].numpy()
    charges = charge_values[x["charges"].detach().cpu()[order].numpy().clip(0, len(charge_values) - 1)]
    bonds = x["bonds"].detach().cpu().numpy()
    out, start, pstart = [], 0, 0
    for n in counts:
        npairs = n * (n - 1) // 2
        orders = np.zeros((n, n), np.int64)
        iu = np.triu_indices(n, 1)
        orders[iu] = np.minimum(bonds[pstart:pstart + npairs], 3)
        orders = orders + orders.T
        out.append({"pos": pos[start:start + n], "types": types[start:start + n], "charges": charges[start:start + n],
                    "orders": orders})
        start += n
        pstart += npairs
    return out


def bonded_metrics(samples: Batch, info: dict[str, Any], graph_reference: set[str] | None = None,
                   edm_reference: set[str] | None = None) -> tuple[dict[str, float], list[GraphReport], list]:
    """Both protocols' figures of the same samples (module docstring): ``(metrics, graph reports,
    EDM reports)``; the EDM protocol's keys start with ``edm/``."""
    elements = list(info["elements"])
    mols = split_bonded(samples, info)
    graphs = [analyze_graph([elements[t] for t in m["types"].tolist()], m["orders"], m["charges"].tolist())
              for m in mols]
    tables = BondTables(elements, rule=info.get("bond_rule", "auto"))
    edm = [analyze_molecule(m["pos"], m["types"], tables, None) for m in mols]
    out = dict(graph_table(graphs, graph_reference))
    out.update({PROTOCOLS["edm"] + k: v for k, v in validity_table(edm, edm_reference).items()
                if k != "num_molecules"})
    return out, graphs, edm
