"""An E(3)-equivariant point-cloud autoencoder for molecules (GeoLDM, Xu et al. 2023).

GeoLDM ("Geometric Latent Diffusion Models for 3D Molecule Generation") runs EDM's diffusion in
a latent space that keeps the geometry: every atom ``i`` gets an *equivariant* latent position
``x_z[i] in R^3`` (zero centre of mass per molecule) and ``k`` *invariant* latent features
``h_z[i]``. Both halves are EGNNs built from this package's layers (:class:`~.egnn.GCL` message
passing with attention and the :class:`~.egnn.CoordUpdate` coordinate update, Satorras et al.
2021):

* encoder ``E(x, h) -> (mu_x, log s, mu_h, log sigma_h^2)``: ``mu_x`` the EGNN's output positions,
  centred (equivariant); ``mu_h``, ``log sigma_h^2`` ``[N, k]`` per atom and ``log s`` (one
  isotropic scale per molecule, the mean of a per-atom head) read from the invariant node
  features, so they are E(3)-invariant;
* posterior ``q(z | x, h)``: ``h_z ~ N(mu_h, sigma_h^2)`` per atom and ``x_z ~ N(mu_x, s^2 I)`` on
  the zero-centre-of-mass subspace (the noise is the data Space's own centred Gaussian);
* decoder ``D(x_z, h_z) -> (x_hat, element logits [, charge])``: positions centred (equivariant),
  logits invariant.

Loss (per atom, averaged over the batch): the squared position error ``|x_hat - x|^2`` summed over
the 3 coordinates (plain MSE on centred positions is valid because ``D o E`` is equivariant, so no
alignment is needed), the element cross-entropy, the squared formal-charge error when the data
carries charges, and ``kl_weight`` times the KL divergence to the prior: ``N(0, 1)`` per invariant
feature and the centred standard Gaussian for the positions, whose KL on the ``3 (n - 1)``
dimensional subspace is ``(|mu_x|^2 + 3 (n - 1) (s^2 - 1 - log s^2)) / 2``. Defaults as GeoLDM's
QM9 runs where they apply: KL weight 0.01, one invariant latent feature per atom. Unlike GeoLDM,
which can train the autoencoder jointly with the diffusion model, training is two-stage here
(Rombach et al. 2022): the autoencoder first, then diffusion on its frozen latents. Message sums
are divided by ``normalization_factor`` = 10 (EDM uses 1): at 1 the position heads' gradients
reached 1e5 and training diverged within 10 steps at lr 1e-3.

The latent a batch encodes to is ``z = [x_z, h_z]`` ``[N, 3 + k]`` on a
:class:`~diffuse.core.data.graph.GraphSpace` with the same batch index as the data (centred first 3
channels), so the molecule domain's diffusion machinery runs on it unchanged. ``decode`` returns
data in the molecule layout of :class:`~.dataset.FeatureCodec`: positions (Angstrom, centred),
the one-hot of the most likely element times ``onehot_scale`` (and the rounded charge times
``charge_scale``), which the domain's metrics and writers read as they read samples.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ...core.data.domain import Batch
from ...core.data.graph import GraphSpace
from ...core.models.latent import Autoencoder
from ...core.data.space import GeneratorLike

from .dataset import FeatureCodec
from .egnn import GCL, CoordUpdate, egnn_trunk
from ...core.errors import UserInputError

__all__ = ["MoleculeAutoencoder", "AUTOENCODER_DEFAULTS", "autoencoder_kwargs"]

#: the autoencoder's options; ``latent_features`` is GeoLDM's ``latent_nf`` (k)
AUTOENCODER_DEFAULTS: dict[str, Any] = {
    "latent_features": 1, "hidden": 64, "encoder_layers": 3, "decoder_layers": 4, "inv_sublayers": 1,
    "attention": True, "tanh": True, "coords_range": 15.0, "norm_constant": 1.0, "normalization_factor": 10.0,
    "kl_weight": 0.01, "charge_weight": 1.0,
}


def autoencoder_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The full option set for ``config`` (defaults filled in); ``ValueError`` for unknown or bad ones."""
    unknown = sorted(set(config) - set(AUTOENCODER_DEFAULTS))
    if unknown:
        raise UserInputError(f"unknown molecule autoencoder option(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(AUTOENCODER_DEFAULTS))}")
    out = {**AUTOENCODER_DEFAULTS, **config}
    for key in ("latent_features", "hidden", "encoder_layers", "decoder_layers", "inv_sublayers"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserInputError(f"molecule autoencoder option {key} must be a whole number >= 1, got {v!r}")
    for key in ("kl_weight", "charge_weight"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UserInputError(f"molecule autoencoder option {key} must be a finite number >= 0, got {v!r}")
    return out


class _EquivariantNet(nn.Module):
    """EGNN blocks (``GCL`` sublayers, then a ``CoordUpdate``) mapping ``(pos [N, 3], h [N, F_in])``
    to ``(pos' [N, 3] centred, out [N, F_out])``; edge features are the current and the input
    squared distances, as in :class:`~.egnn.EGNN` (which adds the noise level and a condition)."""

    def __init__(self, in_features: int, out_features: int, hidden: int, layers: int, inv_sublayers: int,
                 attention: bool, tanh: bool, coords_range: float, norm_constant: float,
                 normalization_factor: float) -> None:
        super().__init__()
        self.norm_constant = float(norm_constant)
        self.embed = nn.Linear(int(in_features), hidden)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            gcls = nn.ModuleList([GCL(hidden, 2, attention, normalization_factor) for _ in range(inv_sublayers)])
            upd = CoordUpdate(hidden, 2, tanh, float(coords_range) / layers, normalization_factor)
            self.blocks.append(nn.ModuleList([gcls, upd]))
        self.head = nn.Linear(hidden, int(out_features))

    def forward(self, pos0: Tensor, h: Tensor, space: GraphSpace) -> tuple[Tensor, Tensor]:
        row, col = (e.to(pos0.device) for e in space.edges())
        h = self.embed(h)
        h, pos = egnn_trunk(self.blocks, h, pos0, row, col, self.norm_constant)
        return space.project(pos), self.head(h)


class MoleculeAutoencoder(Autoencoder):
    """GeoLDM-style equivariant autoencoder ``x [N, 3 + F] <-> z [N, 3 + k]`` (module docstring).

    Shapes:
        batch.x: ``[N, 3 + F]`` (positions, one-hot * onehot_scale [, charge * charge_scale]);
        latent: ``[N, 3 + k]``; decode output: ``[N, 3 + F]``
    """

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        opts = autoencoder_kwargs(config)
        super().__init__(config, "molecules")
        self.codec = FeatureCodec.from_info(data_info)
        self.num_elements = len(self.codec.elements)
        self.latent_features = k = int(opts["latent_features"])
        self.kl_weight, self.charge_weight = float(opts["kl_weight"]), float(opts["charge_weight"])
        net = {key: opts[key] for key in ("hidden", "inv_sublayers", "attention", "tanh", "coords_range",
                                           "norm_constant", "normalization_factor")}
        # encoder head: mu_h (k), log sigma_h^2 (k), log s (1: per atom, averaged per molecule)
        self.encoder = _EquivariantNet(self.codec.num_features, 2 * k + 1, layers=int(opts["encoder_layers"]), **net)
        # decoder head: element logits (K) [+ formal charge (1)]
        self.decoder = _EquivariantNet(k, self.codec.num_features, layers=int(opts["decoder_layers"]), **net)
        # zero heads: the first posterior is mu_h = 0 with a narrow, fixed width (sigma = e^-2 ~ 0.14,
        # for the features and the positions) and the first element logits are uniform
        for head in (self.encoder.head, self.decoder.head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.encoder.head.bias[k:].fill_(-4.0)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _space(batch: Batch) -> GraphSpace:
        space = batch.space
        if not isinstance(space, GraphSpace):
            raise UserInputError(f"the molecule autoencoder needs graph batches, got {type(space).__name__}")
        return space

    def posterior(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(mu_x [N, 3], log_s [B], mu_h [N, k], logvar_h [N, k])`` of ``q(z | batch)``."""
        space = self._space(batch)
        x = batch.x
        if x.shape[1] != 3 + self.codec.num_features:
            raise UserInputError(f"molecule batch has {x.shape[1]} channels; this autoencoder was built for "
                             f"{3 + self.codec.num_features} (3 positions + {self.codec.num_features} features)")
        k = self.latent_features
        mu_x, out = self.encoder(space.project(x[:, :3]), x[:, 3:], space)
        log_s = 0.5 * space.graph_mean(out[:, 2 * k:]).reshape(-1)
        return mu_x, log_s, out[:, :k], out[:, k:2 * k]

    def _sample(self, space: GraphSpace, mu_x: Tensor, log_s: Tensor, mu_h: Tensor, logvar_h: Tensor,
                generator: GeneratorLike) -> Tensor:
        mean = torch.cat([mu_x, mu_h], 1)
        eps = space.noise(mean, generator)          # centred on the position channels
        sd = torch.cat([space.expand(log_s.exp(), mu_x).expand_as(mu_x), (0.5 * logvar_h).exp()], 1)
        return mean + sd * eps

    def kl(self, space: GraphSpace, mu_x: Tensor, log_s: Tensor, mu_h: Tensor, logvar_h: Tensor) -> Tensor:
        """KL(q || prior) per molecule ``[B]`` (nats): the centred standard Gaussian on the
        ``3 (n - 1)`` position dimensions plus ``N(0, 1)`` on each invariant feature."""
        dof = space.dof(mu_x)                                   # 3 (n - 1)
        var = (2 * log_s).exp()
        kl_x = 0.5 * (space.graph_sum((mu_x * mu_x).sum(1)) + dof * (var - 1 - 2 * log_s))
        kl_h = 0.5 * space.graph_sum((mu_h * mu_h + logvar_h.exp() - 1 - logvar_h).sum(1))
        return kl_x + kl_h

    # ------------------------------------------------------------------ Autoencoder contract
    def encode(self, batch: Batch, generator: GeneratorLike = None, sample: bool = True) -> Tensor:
        """The UNSCALED latent ``[N, 3 + k]``: a posterior draw (``sample``) or its mean."""
        space = self._space(batch)
        mu_x, log_s, mu_h, logvar_h = self.posterior(batch)
        if not sample:
            return torch.cat([mu_x, mu_h], 1)
        return self._sample(space, mu_x, log_s, mu_h, logvar_h, generator)

    def _decode_raw(self, z: Tensor, space: GraphSpace) -> tuple[Tensor, Tensor]:
        if z.shape[1] != 3 + self.latent_features:
            raise UserInputError(f"molecule latent has {z.shape[1]} channels; this autoencoder's latent has "
                             f"{3 + self.latent_features} (3 positions + {self.latent_features} features)")
        return self.decoder(space.project(z[:, :3]), z[:, 3:], space)

    def decode(self, z: Tensor, like: Batch) -> Tensor:
        """Data ``[N, 3 + F]`` in the molecule layout for the molecules of ``like``: centred
        positions, the one-hot of the most likely element (times ``onehot_scale``) and, with
        charges, the rounded charge (times ``charge_scale``)."""
        space = self._space(like)
        pos, out = self._decode_raw(z, space)
        kk = self.num_elements
        types = out[:, :kk].argmax(1)
        charges = torch.round(out[:, kk]).long() if self.codec.include_charges else None
        return self.codec.encode(pos, types, charges)

    def latent_info(self, data_info: dict[str, Any]) -> dict[str, Any]:
        """The latent's channel count (``feature_dim``); atom counts, the sampling structure, stay
        the data's. (The latent Space is the data's own GraphSpace: the default ``latent_space``.)"""
        return {"feature_dim": 3 + self.latent_features}

    @torch.no_grad()
    def latent_template(self, batch: Batch) -> Tensor:
        return batch.x.new_zeros(batch.x.shape[0], 3 + self.latent_features)

    @torch.no_grad()
    def reconstruction_metrics(self, batch: Batch) -> dict[str, Tensor]:
        """Per molecule, from the posterior mean: ``element_recovery`` (share of atoms whose element
        is decoded right), ``molecule_recovery`` (1 where every atom's is), ``position_rmsd``
        (Angstrom, no alignment: positions are decoded in the input's frame)."""
        space = self._space(batch)
        rec = self.decode(self.encode(batch, sample=False), batch)
        pos, types, _ = self.codec.decode(rec)
        true_pos, true_types, _ = self.codec.decode(batch.x)
        right = (types == true_types).to(batch.x.dtype)
        sq = ((pos - space.project(true_pos)) ** 2).sum(1)
        element = space.graph_mean(right)
        return {"element_recovery": element, "molecule_recovery": (element == 1).to(batch.x.dtype),
                "position_rmsd": space.graph_mean(sq).sqrt()}

    def loss(self, batch: Batch, generator: GeneratorLike = None) -> tuple[Tensor, dict[str, float]]:
        """``(scalar loss, {"loss", "position_mse", "element_ce", ["charge_mse",] "kl",
        "element_accuracy", "position_rmsd"})`` for one batch (module docstring)."""
        space = self._space(batch)
        mu_x, log_s, mu_h, logvar_h = self.posterior(batch)
        z = self._sample(space, mu_x, log_s, mu_h, logvar_h, generator)
        pos, out = self._decode_raw(z, space)
        target_pos, types, charges = self.codec.decode(batch.x)
        n_atoms = max(batch.x.shape[0], 1)
        sq = ((pos - space.project(target_pos)) ** 2).sum(1)            # [N], Angstrom^2
        kk = self.num_elements
        ce = nn.functional.cross_entropy(out[:, :kk], types)
        kl = self.kl(space, mu_x, log_s, mu_h, logvar_h).sum() / n_atoms
        total = sq.mean() + ce + self.kl_weight * kl
        logs = {"position_mse": sq.mean(), "element_ce": ce, "kl": kl}
        if self.codec.include_charges:
            charge_mse = ((out[:, kk] - charges.to(out.dtype)) ** 2).mean()
            total = total + self.charge_weight * charge_mse
            logs["charge_mse"] = charge_mse
        logs["element_accuracy"] = (out[:, :kk].argmax(1) == types).to(torch.float64).mean()
        logs["position_rmsd"] = sq.mean().sqrt()
        logs["loss"] = total
        return total, {key: float(v.detach()) for key, v in logs.items()}
