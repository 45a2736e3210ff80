"""A 1-D waveform U-Net for diffusion on raw audio ``[B, C, L]``.

The 2-D DDPM U-Net of Ho et al. 2020 (ResBlocks with GroupNorm and a time embedding,
self-attention at low resolution, skip connections), made one-dimensional as in WaveGrad /
DiffWave-style waveform models (Chen et al. 2021; Kong et al. 2021): strided convolutions
downsample by a configurable factor per level, transposed convolutions (or nearest
interpolation + conv) upsample, and ResBlocks may use dilated convolutions to widen the
receptive field. Conditions enter through a class-label embedding added to the time
embedding and/or a cross-attention slot (Rombach et al. 2022) at the attention levels.

Shapes:
    x: ``[B, C, L]`` (mono ``C = 1`` or stereo ``C = 2``; any ``L >= 1``, it is zero-padded
    inside to a multiple of the total downsampling factor and cropped back),
    noise_level: ``[B]`` float (``t * 1000``), cond: ``None`` | long ``[B]`` labels |
    float ``[B, D]`` / ``[B, S, D]`` tokens | a :class:`~diffuse.core.data.condition.Condition` with
    ``label`` (null = ``num_classes``) and/or ``text`` (token ids, encoded by the U-Net's
    ``text_encoder``, see :mod:`diffuse.domains.text`); output: ``[B, C, L]``.

Speed: inside the U-Net activations are ``[B, C, 1, L]`` in channels-last memory and every
convolution runs as the equivalent 2-D one with the ``Conv1d`` weights viewed ``[out, in, 1, k]``
(:func:`_conv`; oneDNN's 2-D kernels are faster on CPU than its 1-D path); the blocks also take
plain ``[B, C, L]`` (the audio classifier uses them so). Attention tokens are free views.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...core.data.condition import Condition, concat_inputs
from ..layers import Attention, norm_groups, timestep_embedding
from ..text import TextPool, text_context
from ...core.errors import UserInputError

__all__ = ["UNet1D"]


def _conv(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv`` (a ``Conv1d``, ``ConvTranspose1d`` or ``Identity``) on ``[B, C, L]`` as it is, or on the
    U-Net's internal layout ``[B, C, 1, L]`` in channels-last memory as the equivalent 2-D convolution
    with the same weights (viewed ``[out, in, 1, k]``): on CPU oneDNN's 2-D kernels in that layout
    are 1.2-3x faster than its 1-D path (dilated and 16-channel convolutions gain most)."""
    if x.ndim == 3 or isinstance(conv, nn.Identity):
        return conv(x)
    w = conv.weight.unsqueeze(2)
    if isinstance(conv, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, w, conv.bias, stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                                  output_padding=(0, conv.output_padding[0]), groups=conv.groups,
                                  dilation=(1, conv.dilation[0]))
    return F.conv2d(x, w, conv.bias, stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                    dilation=(1, conv.dilation[0]), groups=conv.groups)


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    """``[B, C]`` -> broadcastable against ``like`` (``[B, C, L]`` or ``[B, C, 1, L]``)."""
    return v.view(*v.shape, *([1] * (like.ndim - 2)))


#: GroupNorm groups of the audio networks: the largest power-of-two divisor of the width up to this
_MAX_GROUPS = 32


def _group_norm(channels: int) -> nn.GroupNorm:
    """The audio networks' GroupNorm (groups: :data:`_MAX_GROUPS`)."""
    return nn.GroupNorm(norm_groups(channels, _MAX_GROUPS, powers_of_two=True), channels)


def _attention(ch: int, heads: int, ctx_dim: int | None = None, pos_emb: bool = False) -> Attention:
    """The shared attention block (:class:`~diffuse.domains.layers.Attention`) as this U-Net
    configures it: its group rule, separate ``q`` and ``kv`` projections (its weights' layout),
    and with ``pos_emb`` a learned embedding of the frame index before self-attention (so the
    network knows *where* in the clip a frame lies, e.g. for the decay of onset-aligned one-shots)."""
    return Attention(ch, heads, norm_groups(ch, _MAX_GROUPS, powers_of_two=True), ctx_dim, fused_qkv=False,
                     pos_emb=pos_emb)


class ResBlock1D(nn.Module):
    """GroupNorm -> SiLU -> dilated Conv -> FiLM(time) -> GroupNorm -> SiLU -> Dropout -> Conv, plus a skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dilation: int = 1, dropout: float = 0.0,
                 kernel_size: int = 3) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.norm1 = _group_norm(cin)
        self.conv1 = nn.Conv1d(cin, cout, kernel_size, padding=pad, dilation=dilation)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = _group_norm(cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(cout, cout, kernel_size, padding=(kernel_size - 1) // 2)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x``: ``[B, C, L]``, or ``[B, C, 1, L]`` channels-last (see :func:`_conv`)."""
        h = _conv(self.conv1, F.silu(self.norm1(x)))
        scale, shift = _per_channel(self.emb(F.silu(emb)), h).chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = _conv(self.conv2, self.drop(F.silu(h)))
        # in place: a convolution's backward needs its input and weight, not its output
        return h.add_(_conv(self.skip, x))


class Downsample1D(nn.Module):
    """Strided convolution by ``factor``: kernel ``factor + 2 * (factor // 2)``, exact ``L / factor``."""

    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        p = factor // 2
        self.conv = nn.Conv1d(cin, cout, factor + 2 * p, stride=factor, padding=p)

    def forward(self, x: Tensor) -> Tensor:
        return _conv(self.conv, x)


class Upsample1D(nn.Module):
    """Upsampling by ``factor``: a transposed convolution (exact ``L * factor``) or nearest
    interpolation followed by a kernel-3 convolution."""

    def __init__(self, cin: int, cout: int, factor: int, mode: str = "conv_transpose") -> None:
        super().__init__()
        self.factor, self.mode = factor, mode
        if mode == "conv_transpose":
            p = factor // 2
            self.conv = nn.ConvTranspose1d(cin, cout, factor + 2 * p, stride=factor, padding=p)
        elif mode == "interp":
            self.conv = nn.Conv1d(cin, cout, 3, padding=1)
        else:
            raise UserInputError(f"upsample must be 'conv_transpose' or 'interp', got {mode!r}")

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "interp":
            x = F.interpolate(x, scale_factor=self.factor if x.ndim == 3 else (1, self.factor), mode="nearest")
        return _conv(self.conv, x)


class _Level(nn.Module):
    def __init__(self, cin: int, ch: int, emb_dim: int, n_res: int, dilations: Sequence[int], dropout: float,
                 attn: bool, heads: int, ctx_dim: int | None, pos_emb: bool = False) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock1D(cin if j == 0 else ch, ch, emb_dim, dilations[j % len(dilations)], dropout)
                                 for j in range(n_res))
        self.attn = _attention(ch, heads, pos_emb=pos_emb) if attn else None
        self.cross = _attention(ch, heads, ctx_dim) if (attn and ctx_dim) else None

    def forward(self, x: Tensor, emb: Tensor, ctx: Tensor | None, mask: Tensor | None = None) -> Tensor:
        for blk in self.res:
            x = blk(x, emb)
        if self.attn is not None:
            x = self.attn(x)
        if self.cross is not None and ctx is not None:
            x = self.cross(x, ctx, mask)
        return x


class UNet1D(nn.Module):
    """1-D waveform U-Net (see the module docstring).

    Args:
        in_channels: audio channels ``C`` (1 mono, 2 stereo).
        channels: feature channels per level, e.g. ``(32, 64, 128)``; level ``i + 1`` is
            ``factors[i]`` times shorter than level ``i``.
        factors: downsampling factor between consecutive levels (``len(channels) - 1`` entries).
        num_res_blocks: ResBlocks per level (encoder and decoder each).
        dilations: dilation of ResBlock ``j`` of a level is ``dilations[j % len(dilations)]``.
        attn_levels: indices of levels with self-attention (negative counts from the deepest:
            ``-1`` is the bottleneck, which has self-attention whenever ``mid_attn``; ``-2`` the
            level above it, ``factors[-1]`` times longer).
        num_classes: if set, a label embedding (with an extra "null" label ``num_classes`` for
            classifier-free guidance) is added to the time embedding.
        cond_dim: if set, cross-attention to condition tokens ``[B, S, cond_dim]`` (or ``[B, cond_dim]``)
            at the attention levels.
        upsample: ``conv_transpose`` or ``interp``.
        pos_emb: add an absolute-position embedding before each self-attention (see
            :func:`_attention`).
        text_encoder: a module ``ids [B, L] -> (tokens [B, S, D], mask [B, S])`` for the condition
            ``text`` (``cond_dim`` defaults to its ``dim``); it trains and saves with the U-Net.
        text_pool: also add the pooled prompt (:class:`~diffuse.domains.text.TextPool`) to the
            time embedding, so text reaches every ResBlock as a label does, not only the
            cross-attention at the attention levels (no effect without ``text_encoder``).
        in_cond_channels: channels of a condition concatenated to the input (bandwidth
            extension: the low-rate clip resampled to the output rate, plus its presence flag;
            ``core.data.condition.ConcatKind``); zeros (the null condition) when none is given.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (32, 64, 128, 128),
                 factors: Sequence[int] = (4, 4, 4), num_res_blocks: int = 2, dilations: Sequence[int] = (1, 3),
                 attn_levels: Sequence[int] = (-1,), mid_attn: bool = True, heads: int = 4, dropout: float = 0.0,
                 emb_dim: int | None = None, num_classes: int | None = None, cond_dim: int | None = None,
                 upsample: str = "conv_transpose", stem_kernel: int = 7, pos_emb: bool = True,
                 text_encoder: nn.Module | None = None, in_cond_channels: int = 0, text_pool: bool = False,
                 time_inputs: int = 1) -> None:
        super().__init__()
        if time_inputs not in (1, 2):
            raise UserInputError(f"time_inputs must be 1 or 2 (a flow-map model's time and step), got {time_inputs}")
        #: noise inputs per sample (2: a flow-map model's, ``core.process.flowmap``)
        self.time_inputs = int(time_inputs)
        if text_encoder is not None and cond_dim is None:
            cond_dim = int(text_encoder.dim)
        self.text_encoder = text_encoder
        channels, factors = [int(c) for c in channels], [int(f) for f in factors]
        if len(factors) != len(channels) - 1:
            raise UserInputError(f"need len(factors) == len(channels) - 1, got {len(factors)} factors for {len(channels)} levels")
        if any(f < 1 for f in factors) or any(c < 1 for c in channels):
            raise UserInputError("factors and channels must be positive integers")
        n = len(channels)
        attn = {a % n for a in attn_levels}
        emb_dim = int(emb_dim or 4 * channels[0])
        self.in_channels, self.factors, self.num_classes = in_channels, factors, num_classes
        self.total_factor = math.prod(factors) if factors else 1
        self.base = channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.text_pool = TextPool(int(text_encoder.dim), emb_dim) if text_encoder is not None and text_pool else None
        self.in_cond_channels = int(in_cond_channels)
        self.stem = nn.Conv1d(in_channels + self.in_cond_channels, channels[0], stem_kernel, padding=stem_kernel // 2)
        mk = lambda cin, ch, i: _Level(cin, ch, emb_dim, num_res_blocks, dilations, dropout, i in attn, heads, cond_dim, pos_emb)
        self.down = nn.ModuleList(mk(channels[i], channels[i], i) for i in range(n - 1))
        self.pool = nn.ModuleList(Downsample1D(channels[i], channels[i + 1], factors[i]) for i in range(n - 1))
        self.mid1 = ResBlock1D(channels[-1], channels[-1], emb_dim, 1, dropout)
        self.mid_attn = _attention(channels[-1], heads, pos_emb=pos_emb) if mid_attn else None
        self.mid_cross = _attention(channels[-1], heads, cond_dim) if cond_dim else None
        self.mid2 = ResBlock1D(channels[-1], channels[-1], emb_dim, 1, dropout)
        self.unpool = nn.ModuleList(Upsample1D(channels[i + 1], channels[i], factors[i], upsample) for i in range(n - 1))
        self.up = nn.ModuleList(mk(2 * channels[i], channels[i], i) for i in range(n - 1))
        self.out_norm = _group_norm(channels[0])
        self.out = nn.Conv1d(channels[0], in_channels, stem_kernel, padding=stem_kernel // 2)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _context(self, cond: Any, b: int) -> tuple[Tensor | None, Tensor | None, Tensor | None, bool]:
        """Split ``cond`` into (labels, cross-attention tokens, token mask, whether the tokens are text)."""
        if isinstance(cond, Condition):
            text = text_context(self.text_encoder, cond)
            labels = cond.get("label")
            if labels is not None and self.label_emb is None:
                raise UserInputError("this U-Net was built without num_classes, so it cannot take class labels")
            return labels, *(text if text is not None else (None, None)), text is not None
        if cond is None or not isinstance(cond, Tensor):
            return None, None, None, False
        if cond.dtype in (torch.long, torch.int, torch.int32, torch.int16, torch.uint8):
            return cond.reshape(b).long(), None, None, False
        return None, (cond[:, None, :] if cond.ndim == 2 else cond), None, False

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None, space: Any = None) -> Tensor:
        b, c, length = x.shape
        if c != self.in_channels:
            raise UserInputError(f"UNet1D built for {self.in_channels} channel(s), got input with {c}")
        if self.in_cond_channels:   # --- completion (inpaint helper): concatenated low-rate input ---
            extra = concat_inputs(cond)
            if extra is None:
                extra = x.new_zeros(b, self.in_cond_channels, length)
            if tuple(extra.shape) != (b, self.in_cond_channels, length):
                raise UserInputError(f"the concatenated condition must be {[b, self.in_cond_channels, length]}, "
                                 f"got {list(extra.shape)}")
            x = torch.cat([x, extra.to(x.dtype)], 1)
        pad = (-length) % self.total_factor
        h = F.pad(x, (0, pad)) if pad else x
        emb = self.time_mlp(timestep_embedding(noise_level.reshape(-1).expand(b) if noise_level.numel() == 1
                                               else noise_level.reshape(b, -1).squeeze(1), self.base))
        labels, ctx, mask, is_text = self._context(cond, b)
        if self.text_pool is not None and is_text:
            emb = emb + self.text_pool((ctx, mask)).to(emb.dtype)
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full((b,), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_emb(labels)
        # inside: [B, C, 1, L] in channels-last memory, convolutions as 2-D ones (see _conv)
        h = _conv(self.stem, h.unsqueeze(2).contiguous(memory_format=torch.channels_last))
        skips = []
        for level, pool in zip(self.down, self.pool):
            h = level(h, emb, ctx, mask)
            skips.append(h)
            h = pool(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        if self.mid_cross is not None and ctx is not None:
            h = self.mid_cross(h, ctx, mask)
        h = self.mid2(h, emb)
        for level, unpool, skip in zip(reversed(self.up), reversed(self.unpool), reversed(skips)):
            h = level(torch.cat([unpool(h), skip], dim=1), emb, ctx, mask)
        h = _conv(self.out, F.silu(self.out_norm(h)))
        return h.squeeze(2)[..., :length].contiguous()
