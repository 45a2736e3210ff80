"""The molecule domain's backbones (``core.data.backbones``): the E(n)-equivariant graph network
(the default), in named sizes (``preset``), and the edge-feature network of bond-generating models
(``bondnet``, for data with bonds)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...core.data.backbones import Backbone
from ...core.validation import check_kwargs
from .dataset import FeatureCodec
from .bondnet import BondNet, bondnet_kwargs
from .egnn import EGNN, model_kwargs
from ...core.errors import ConfigError
from .property import CONDITION_NAME

__all__ = ["EGNN_BACKBONE", "BONDNET_BACKBONE", "BACKBONES"]


def _check_egnn(domain: Any, model: dict[str, Any]) -> None:
    check_kwargs(EGNN, {k: v for k, v in model.items() if k != "preset"}, "model", skip=("in_features",),
                 allow_unknown=True)
    model_kwargs(model)


def _build_egnn(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The EGNN for the bound data: its feature width (or a latent model's latent width) and the
    property condition's context."""
    info = domain.info
    if info.get("bonds"):
        raise ConfigError("the egnn backbone generates molecules without bonds; data with bonds (data option bonds) "
                          "needs model.backbone \"bondnet\"")
    codec = FeatureCodec.from_info(info)
    kind = domain.condition_kinds().get(CONDITION_NAME)
    context = 2 * len(kind.names) if kind is not None else 0   # normalised values + presence mask
    # ``feature_dim`` (3 + features) is the data's, or a latent model's latent width
    features = int(info.get("feature_dim", 3 + codec.num_features)) - 3
    return EGNN(features, **model_kwargs(model), context_dim=context, context_key=CONDITION_NAME)


def _check_bondnet(domain: Any, model: dict[str, Any]) -> None:
    check_kwargs(BondNet, {k: v for k, v in model.items() if k != "preset"}, "model",
                 skip=("atom_classes", "charge_classes", "bond_classes", "context_dim", "context_key"),
                 allow_unknown=True)
    bondnet_kwargs(model)


def _build_bondnet(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The edge-feature EGNN for data with bonds: its element, charge and bond classes, and the
    property condition's context."""
    info = domain.info
    if not info.get("bonds"):
        raise ConfigError("the bondnet backbone generates molecules with their bonds; it needs data read with the "
                          "data option bonds: true (see recipes/molecules-bonds.json)")
    kind = domain.condition_kinds().get(CONDITION_NAME)
    context = 2 * len(kind.names) if kind is not None else 0
    return BondNet(len(info["elements"]), len(info.get("charge_values", [0])), len(info.get("bond_orders", [0, 1, 2, 3])),
                   **bondnet_kwargs(model), context_dim=context, context_key=CONDITION_NAME)


EGNN_BACKBONE = Backbone("egnn", _build_egnn, _check_egnn, {"preset": "small"},
                         "E(n)-equivariant graph network (EGNN, EDM's denoiser) on flat graph batches")

BONDNET_BACKBONE = Backbone("bondnet", _build_bondnet, _check_bondnet, {"preset": "small"},
                            "E(3)-equivariant graph network with edge features: atoms, charges and bonds generated "
                            "with the coordinates (data option bonds)")

#: the molecule domain's built-in backbones
BACKBONES = {"egnn": EGNN_BACKBONE, "bondnet": BONDNET_BACKBONE}
