"""The image domain's backbones (``core.data.backbones``): the 2-D U-Net (the default) and the
Diffusion Transformer (``dit``, ``diffuse.domains.dit``), for pixels and, through a latent
model, for image latents (built for the latent's channels and size)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ...core.data.backbones import Backbone
from ...core.errors import ConfigError
from ...core.validation import AT_LEAST_ONE, FRACTION, check_kwargs
from ..dit import build_dit, check_dit
from ..text import build_text_encoder, check_text_encoder_options
from .unet import UNet

__all__ = ["UNET", "DIT", "BACKBONES", "UNET_DEFAULTS"]

_UNET_OPTIONS = set(inspect.signature(UNet.__init__).parameters) - {"self"}

#: 1.11 M parameters at 28x28x1: the same width / depth / attention placement as a diffusers
#: UNet2DModel(block_out_channels=(32, 64, 64), layers_per_block=1, attention at 7x7)
UNET_DEFAULTS: dict[str, Any] = {"base_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1,
                                 "attn_levels": [2], "head_dim": 32, "dropout": 0.0, "groups": 8}


def _check_unet(domain: Any, model: dict[str, Any]) -> None:
    unknown = sorted(set(model) - _UNET_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown image model option(s): {', '.join(unknown)}; known: {', '.join(sorted(_UNET_OPTIONS))}")
    check_text_encoder_options(model.get("text_encoder"))
    check_kwargs(UNet, {k: v for k, v in model.items() if k != "text_encoder"}, "model",
                 limits={"base_channels": AT_LEAST_ONE, "num_blocks": AT_LEAST_ONE, "head_dim": AT_LEAST_ONE,
                         "groups": AT_LEAST_ONE, "dropout": FRACTION})


def _build_unet(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The U-Net for the bound data: its channels and size, label / text / low-resolution conditions."""
    info = domain.info
    kwargs = {**UNET_DEFAULTS, **model}
    kwargs.setdefault("in_channels", int(info.get("channels", 1)))
    if info.get("conditional"):
        kwargs["num_classes"] = int(info["num_classes"])
    text_options = kwargs.pop("text_encoder", None)
    if info.get("text"):   # the text encoder lives in the backbone: trained, saved and EMA'd with it
        encoder = build_text_encoder(text_options, domain.condition_kinds()["text"])
        kwargs["text_encoder"], kwargs["context_dim"] = encoder, encoder.dim
    if info.get("lowres"):       # SR3: upsampled low-res image + flag, concatenated
        kwargs["in_cond_channels"] = int(info.get("channels", 1)) + 1
    kwargs.setdefault("image_size", [int(info.get("height", 28)), int(info.get("width", 28))])
    return UNet(**kwargs)


UNET = Backbone("unet", _build_unet, _check_unet, UNET_DEFAULTS,
                "2-D U-Net: ResBlocks, GroupNorm, time embedding, self- and cross-attention (DDPM / ADM style)")

def _sides(info: dict[str, Any]) -> list[int]:
    return [int(info.get("height", 28)), int(info.get("width", 28))]


def _check_dit(domain: Any, model: dict[str, Any]) -> None:
    check_dit(model, _sides(domain.info) if domain.bound else None)


def _build_dit(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The DiT for the bound data: its channels and size, label / text / low-resolution conditions."""
    info = domain.info
    channels = int(info.get("channels", 1))
    return build_dit(model, channels, _sides(info),
                     num_classes=int(info["num_classes"]) if info.get("conditional") else None,
                     text_kind=domain.condition_kinds()["text"] if info.get("text") else None,
                     in_cond_channels=channels + 1 if info.get("lowres") else 0)


DIT = Backbone("dit", _build_dit, _check_dit, {"preset": "small"},
               "Diffusion Transformer (DiT): patches, adaLN-Zero blocks, label / pooled-text conditioning, text by "
               "cross- or joint attention (Peebles & Xie 2023; MMDiT)")

#: the image domain's built-in backbones
BACKBONES = {"unet": UNET, "dit": DIT}
