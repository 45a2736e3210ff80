"""The audio domain's backbones (``core.data.backbones``): the 1-D waveform U-Net (the default),
in named sizes (``preset``), the DiffWave-style dilated network of the vocoder (``wavenet``) and the
1-D Diffusion Transformer (``dit``, ``diffuse.domains.dit``) over patches of a waveform or, through a
latent model, of an audio latent."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ...core.data.backbones import Backbone
from ...core.validation import AT_LEAST_ONE, FRACTION, check_kwargs
from ..dit import build_dit, check_dit
from ..presets import resolve_preset
from ..text import build_text_encoder, check_text_encoder_options
from .unet import UNet1D
from .wavenet import WaveNet

__all__ = ["UNET", "WAVENET", "DIT", "BACKBONES", "MODEL_PRESETS", "WAVENET_PRESETS", "resolve_model",
           "restoration_channels"]

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"channels": [16, 32, 64, 128], "factors": [4, 4, 4], "num_res_blocks": 2, "dilations": [1, 3],
              "attn_levels": [-2], "heads": 4, "dropout": 0.0, "upsample": "conv_transpose", "text_pool": True},
    "base": {"channels": [32, 64, 128, 256], "factors": [4, 4, 4], "num_res_blocks": 2, "dilations": [1, 3],
             "attn_levels": [-2], "heads": 8, "dropout": 0.0, "upsample": "conv_transpose", "text_pool": True},
    "large": {"channels": [64, 128, 256, 512, 512], "factors": [4, 4, 4, 2], "num_res_blocks": 2,
              "dilations": [1, 3, 9], "attn_levels": [-3, -2], "heads": 8, "dropout": 0.1,
              "upsample": "conv_transpose", "text_pool": True},
}
_UNET_KEYS = set(inspect.signature(UNet1D.__init__).parameters) - {"self", "in_channels"}


def resolve_model(model: dict[str, Any]) -> dict[str, Any]:
    """Expand ``preset`` (default ``small``) and apply the other keys over it."""
    return resolve_preset(model, MODEL_PRESETS, _UNET_KEYS, what="audio model")


def restoration_channels(info: dict[str, Any]) -> int:
    """Input channels a restoration run concatenates to the noisy clip: per degraded input (the
    low-rate clip of bandwidth extension, the noisy clip of denoising) its channels and a flag."""
    return (int(info.get("channels", 1)) + 1) * (bool(info.get("lowrate")) + bool(info.get("noisy")))


def _check_unet(domain: Any, model: dict[str, Any]) -> None:
    check_text_encoder_options(model.get("text_encoder"))
    check_kwargs(UNet1D, {k: v for k, v in resolve_model(model).items() if k != "text_encoder"}, "model",
                 skip=("in_channels",),
                 limits={"num_res_blocks": AT_LEAST_ONE, "heads": AT_LEAST_ONE, "dropout": FRACTION})


def _build_unet(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The U-Net for the bound data: its channels, label / text / low-rate conditions."""
    info = domain.info
    kwargs = resolve_model(model)
    classes = info.get("classes")
    if classes and "num_classes" not in (model or {}) and info.get("label_condition", True):
        kwargs["num_classes"] = len(classes)
    text_options = kwargs.pop("text_encoder", None)
    if info.get("text"):   # the text encoder lives in the backbone: trained, saved and EMA'd with it
        encoder = build_text_encoder(text_options, domain.condition_kinds()["text"])
        kwargs["text_encoder"], kwargs["cond_dim"] = encoder, encoder.dim
    if restoration_channels(info):
        kwargs["in_cond_channels"] = restoration_channels(info)
    return UNet1D(in_channels=int(info.get("channels", 1)), **kwargs)


UNET = Backbone("unet", _build_unet, _check_unet, {"preset": "small"},
                "1-D waveform U-Net: strided conv down / up, dilated ResBlocks, attention at low resolution")

# --- the vocoder's network (speech helper) ---
#: sizes of the DiffWave-style network (DiffWave's own: 64 channels, 30 layers, cycle 10, 512)
WAVENET_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"residual_channels": 32, "layers": 12, "dilation_cycle": 6, "cond_channels": 64, "emb_dim": 128},
    "base": {"residual_channels": 64, "layers": 30, "dilation_cycle": 10, "cond_channels": 128, "emb_dim": 512},
}


def _wavenet_options(model: dict[str, Any]) -> dict[str, Any]:
    known = set(inspect.signature(WaveNet.__init__).parameters) - {"self", "in_channels", "n_mels", "in_cond_channels"}
    return resolve_preset(model, WAVENET_PRESETS, known, what="wavenet model")


def _check_wavenet(domain: Any, model: dict[str, Any]) -> None:
    check_kwargs(WaveNet, _wavenet_options(model), "model", skip=("in_channels", "n_mels", "in_cond_channels"))


def _build_wavenet(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The vocoder network for the bound data: its mel bands, any concatenated (noisy) input."""
    info = domain.info
    concat = restoration_channels(info)
    return WaveNet(in_channels=int(info.get("channels", 1)), n_mels=int((info.get("mel") or {}).get("n_mels", 0)),
                   in_cond_channels=concat, **_wavenet_options(model))


WAVENET = Backbone("wavenet", _build_wavenet, _check_wavenet, {"preset": "small"},
                   "DiffWave-style dilated residual network (Kong et al. 2021), mel-conditioned: the vocoder")


def _check_dit(domain: Any, model: dict[str, Any]) -> None:
    check_dit(model, [int(domain.info["length"])] if domain.bound and "length" in domain.info else None)


def _build_dit(domain: Any, model: dict[str, Any]) -> nn.Module:
    """The 1-D DiT for the bound data (a clip's or a latent's channels and length), label / text /
    low-rate / noisy conditions."""
    info = domain.info
    channels = int(info.get("channels", 1))
    classes = info.get("classes")
    return build_dit(model, channels, [int(info["length"])],
                     num_classes=len(classes) if classes and info.get("label_condition", True) else None,
                     text_kind=domain.condition_kinds()["text"] if info.get("text") else None,
                     in_cond_channels=restoration_channels(info))


DIT = Backbone("dit", _build_dit, _check_dit, {"preset": "small"},
               "1-D Diffusion Transformer (DiT) over patches of a clip or an audio latent, adaLN-Zero blocks")

#: the audio domain's built-in backbones
BACKBONES = {"unet": UNET, "wavenet": WAVENET, "dit": DIT}
