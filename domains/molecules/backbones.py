"""The molecule domain's backbones (``core.data.backbones``): the E(n)-equivariant graph network
(the default), in named sizes (``preset``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...core.data.backbones import Backbone
from ...core.validation import check_kwargs
from .dataset import FeatureCodec
from .egnn import EGNN, model_kwargs
from .property import CONDITION_NAME

__all__ = ["EGNN_BACKBONE", "BACKBONES"]


def _check_egnn(domain: Any, model: dict[str, Any]) -> None:
    check_kwargs(EGNN, {k: v for k, v in model.items() if k != "preset"}, "model", skip=("in_features",),
                 allow_unknown=True)
    model_kwargs(model)


def _build_egnn(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The EGNN for the bound data: its feature width (or a latent model's latent width) and the
    property condition's context."""
    info = domain.info
    codec = FeatureCodec.from_info(info)
    kind = domain.condition_kinds().get(CONDITION_NAME)
    context = 2 * len(kind.names) if kind is not None else 0   # normalised values + presence mask
    # ``feature_dim`` (3 + features) is the data's, or a latent model's latent width
    features = int(info.get("feature_dim", 3 + codec.num_features)) - 3
    return EGNN(features, **model_kwargs(model), context_dim=context, context_key=CONDITION_NAME)


EGNN_BACKBONE = Backbone("egnn", _build_egnn, _check_egnn, {"preset": "small"},
                         "E(n)-equivariant graph network (EGNN, EDM's denoiser) on flat graph batches")

#: the molecule domain's built-in backbones
BACKBONES = {"egnn": EGNN_BACKBONE}
