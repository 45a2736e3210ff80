"""The video domain's backbones (Backbone records of ``diffuse.core``): a 2-D U-Net over stacked
frames (the default) and a space-time factorised U-Net.

* ``unet`` (:class:`StackedFramesUNet`): the clip's ``T`` frames stacked as channels of one
  image, ``[B, C, T, H, W] -> [B, C T, H, W]``, through the image domain's
  :class:`~diffuse.domains.image.UNet` with ``C T`` input and output channels, and back: the
  design of MCVD (Voleti et al. 2022, "Masked Conditional Video Diffusion"), whose 2-D U-Net reads
  past, current and future frames stacked in its channels. Convolutions are translation
  equivariant in the plane, which is what moving digits need; every frame sees every other from
  the first layer on. It costs one image U-Net per clip, not one per frame. Past or future frames
  given at sampling time are imposed by the core's completion (``diffuse inpaint``), so one
  unconditional model predicts, interpolates and generates.
* ``factorized`` (:class:`FactorizedUNet`): the space-time factorisation of Ho et al. 2022
  ("Video Diffusion Models"): the image U-Net's 2-D ResBlocks applied to every frame (frames
  folded into the batch), and after the ResBlocks of the attention levels, attention over the
  ``T`` frames at each pixel (the shared :class:`~diffuse.domains.layers.Attention` on
  ``[B H W, C, T]`` with a frame-position embedding). About ``T`` times the compute of ``unet``.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffuse.core import Backbone, Condition, ConfigError
from diffuse.domains.image import GroupNormSiLU, ResBlock, UNet, Upsample
from diffuse.domains.layers import Attention, norm_groups, timestep_embedding

__all__ = ["StackedFramesUNet", "FactorizedUNet", "BACKBONES", "UNET_DEFAULTS", "FACTORIZED_DEFAULTS"]

#: 2.1 M parameters for 10 frames of 32 x 32: the image U-Net's layout at 1.5x its width
UNET_DEFAULTS: dict[str, Any] = {"base_channels": 48, "channel_mult": [1, 2, 2], "num_blocks": 1,
                                 "attn_levels": [2], "head_dim": 32, "dropout": 0.0, "groups": 8}
FACTORIZED_DEFAULTS: dict[str, Any] = {"base_channels": 32, "channel_mult": [1, 2, 2], "num_blocks": 1,
                                       "attn_levels": [1, 2], "head_dim": 32, "dropout": 0.0, "groups": 8}


class StackedFramesUNet(nn.Module):
    """``f(x [B, C, T, H, W], noise_level, cond=None, space=None)``: the image U-Net on the frames
    stacked as channels (module docstring). ``unet_options`` go to
    :class:`~diffuse.domains.image.UNet` (``num_classes`` for the ``label`` condition)."""

    def __init__(self, channels: int, frames: int, **unet_options: Any) -> None:
        super().__init__()
        self.channels, self.frames = int(channels), int(frames)
        width = self.channels * self.frames
        self.unet = UNet(in_channels=width, out_channels=width, **unet_options)

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None, space: Any = None) -> Tensor:
        b, c, t, h, w = x.shape
        out = self.unet(x.reshape(b, c * t, h, w), noise_level, cond, space)
        return out.reshape(b, c, t, h, w)


class _FrameStage(nn.Module):
    """A per-frame ResBlock, optionally followed by attention over the frames at each pixel."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float, temporal: bool, head_dim: int) -> None:
        super().__init__()
        self.res = ResBlock(c_in, c_out, groups, dropout)
        self.time = (Attention(c_out, max(1, c_out // head_dim), norm_groups(c_out, groups), pos_emb=True)
                     if temporal else None)

    def forward(self, h: Tensor, emb: Tensor, frames: int) -> Tensor:
        h = self.res(h, emb)
        return _temporal(self.time, h, frames) if self.time is not None else h


def _temporal(attn: Attention, h: Tensor, frames: int) -> Tensor:
    """Attention over the frames of ``h [B T, C, H, W]`` at every pixel (as ``[B H W, C, T]``)."""
    bt, c, hh, ww = h.shape
    b = bt // frames
    seq = h.reshape(b, frames, c, hh, ww).permute(0, 3, 4, 2, 1).reshape(b * hh * ww, c, frames)
    out = attn(seq.contiguous())
    return out.reshape(b, hh, ww, c, frames).permute(0, 4, 3, 1, 2).reshape(bt, c, hh, ww)


class FactorizedUNet(nn.Module):
    """``f(x [B, C, T, H, W], noise_level, cond=None, space=None)``: a space-time factorised U-Net
    (module docstring) built from the image U-Net's ResBlocks, Upsample and GroupNorm and the
    shared attention block. Levels ``attn_levels`` (and the middle) add attention over frames;
    ``num_classes`` adds a class embedding (the ``label`` condition, null class ``num_classes``)."""

    def __init__(self, channels: int, frames: int, base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2),
                 num_blocks: int = 1, attn_levels: Sequence[int] = (1, 2), head_dim: int = 32, dropout: float = 0.0,
                 groups: int = 8, num_classes: int | None = None) -> None:
        super().__init__()
        mult = [int(m) for m in channel_mult]
        self.frames, self.levels, self.base = int(frames), len(mult), int(base_channels)
        self.num_classes = num_classes
        temporal = {int(i) % len(mult) for i in attn_levels}
        emb_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(channels, base_channels, 3, padding=1)
        self.down, self.downsample, skips, ch = nn.ModuleList(), nn.ModuleList(), [base_channels], base_channels
        for lvl, m in enumerate(mult):
            blocks = nn.ModuleList()
            for _ in range(num_blocks):
                blocks.append(_FrameStage(ch, base_channels * m, groups, dropout, lvl in temporal, head_dim))
                ch = base_channels * m
                skips.append(ch)
            self.down.append(blocks)
            if lvl < len(mult) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = _FrameStage(ch, ch, groups, dropout, True, head_dim)
        self.mid2 = _FrameStage(ch, ch, groups, dropout, False, head_dim)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for lvl in reversed(range(len(mult))):
            blocks = nn.ModuleList()
            for _ in range(num_blocks + 1):
                blocks.append(_FrameStage(ch + skips.pop(), base_channels * mult[lvl], groups, dropout,
                                          lvl in temporal, head_dim))
                ch = base_channels * mult[lvl]
            self.up.append(blocks)
            if lvl > 0:
                self.upsample.append(Upsample(ch))
        self.norm_out = GroupNormSiLU(groups, ch)
        self.conv_out = nn.Conv2d(ch, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self._emb_sizes = [m.c_out for m in self.modules() if isinstance(m, ResBlock)]
        self.emb_proj = nn.Linear(emb_dim, sum(self._emb_sizes))

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None, space: Any = None) -> Tensor:
        b, c, t, h, w = x.shape
        if noise_level.ndim == 0:
            noise_level = noise_level.expand(b)
        emb = self.time_mlp(timestep_embedding(noise_level, self.base).to(x.dtype))
        labels = cond.get("label") if isinstance(cond, Condition) else None
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_emb(labels.to(x.device).long())
        embs = iter(e.repeat_interleave(t, 0) for e in self.emb_proj(F.silu(emb)).split(self._emb_sizes, 1))
        m = 2 ** (self.levels - 1)
        ph, pw = (-h) % m, (-w) % m
        hcur = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if ph or pw:
            hcur = F.pad(hcur, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        hcur = self.conv_in(hcur)
        skips = [hcur]
        for lvl, blocks in enumerate(self.down):
            for blk in blocks:
                hcur = blk(hcur, next(embs), t)
                skips.append(hcur)
            if lvl < self.levels - 1:
                hcur = self.downsample[lvl](hcur)
                skips.append(hcur)
        hcur = self.mid2(self.mid1(hcur, next(embs), t), next(embs), t)
        for i, blocks in enumerate(self.up):
            for blk in blocks:
                hcur = blk(torch.cat([hcur, skips.pop()], 1), next(embs), t)
            if i < self.levels - 1:
                hcur = self.upsample[i](hcur)
        out = self.conv_out(self.norm_out(hcur))
        if ph or pw:
            out = out[:, :, ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]
        return out.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4).contiguous()


_LIMITS = {"base_channels": 1, "num_blocks": 1, "head_dim": 1, "groups": 1}


def _checker(cls: type, skip: set[str]):
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "channels", "frames", "num_classes"} - skip
    if cls is StackedFramesUNet:
        known = set(inspect.signature(UNet.__init__).parameters) - {
            "self", "in_channels", "out_channels", "num_classes", "text_encoder", "context_dim", "text_pool",
            "in_cond_channels"}

    def check(domain: Any, model: dict[str, Any]) -> None:
        unknown = sorted(set(model) - known)
        if unknown:
            raise ConfigError(f"unknown video model option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name, lo in _LIMITS.items():
            v = model.get(name, lo)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"video model option {name} must be a whole number >= {lo}, got {v!r}")
        mult = model.get("channel_mult", [1])
        if not isinstance(mult, (list, tuple)) or not mult or not all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mult):
            raise ConfigError(f"video model option channel_mult must be a non-empty list of whole numbers >= 1, got {mult!r}")
        drop = model.get("dropout", 0.0)
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
            raise ConfigError(f"video model option dropout must be a number in [0, 1), got {drop!r}")
    return check


def _build(cls: type, defaults: dict[str, Any]):
    def build(domain: Any, model: dict[str, Any]) -> nn.Module:
        info = domain.info
        kwargs = {**defaults, **model}
        if info.get("conditional"):
            kwargs["num_classes"] = int(info["num_classes"])
        if cls is StackedFramesUNet:
            kwargs.setdefault("image_size", [int(info["height"]), int(info["width"])])
        return cls(int(info.get("channels", 1)), int(info["frames"]), **kwargs)
    return build


UNET = Backbone("unet", _build(StackedFramesUNet, UNET_DEFAULTS), _checker(StackedFramesUNet, set()), UNET_DEFAULTS,
                "2-D U-Net over the frames stacked as channels (MCVD style; the image U-Net)")
FACTORIZED = Backbone("factorized", _build(FactorizedUNet, FACTORIZED_DEFAULTS), _checker(FactorizedUNet, set()),
                      FACTORIZED_DEFAULTS, "space-time factorised U-Net: per-frame 2-D ResBlocks, attention over "
                      "frames (Ho et al. 2022)")

#: the video domain's built-in backbones
BACKBONES = {"unet": UNET, "factorized": FACTORIZED}
