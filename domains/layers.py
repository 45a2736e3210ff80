"""Network pieces the domains share: the sinusoidal timestep embedding, the GroupNorm group rule
and one N-d attention block. Each is written once and tested once (``tests/test_layers.py``);
the image U-Net, the audio U-Net, their classifiers and autoencoders import them from here.

* :func:`timestep_embedding`: ``[cos(n w_k), sin(n w_k)]``, ``w_k = max_period^(-k / (dim / 2))``
  (Vaswani et al. 2017; the DDPM time embedding).
* :func:`norm_groups`: how many GroupNorm groups (Wu & He 2018) a width gets.
* :class:`Attention`: pre-norm multi-head self- or cross-attention over the positions of a
  ``[B, C, *spatial]`` tensor (1-D waveforms, 2-D images), residual, zero-initialised output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.errors import UserInputError

__all__ = ["timestep_embedding", "norm_groups", "Attention"]


def timestep_embedding(noise_level: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(n w_k), sin(n w_k)]``, ``w_k = max_period^(-k / half)``,
    ``k = 0 .. half - 1``, ``half = dim // 2`` (Vaswani et al. 2017; DDPM's time embedding), in
    float32; an odd ``dim`` gets one zero column at the end. ``noise_level``: ``[B]`` (any real
    values, e.g. ``t * 1000`` or token positions) -> ``[B, dim]``. ``[B, k]`` (a network of
    several noise inputs, e.g. a flow-map model's time and step): the embeddings of the ``k``
    columns side by side, ``dim // k`` wide each (zero columns pad to ``dim``)."""
    if noise_level.ndim == 2:
        k = noise_level.shape[1]
        parts = [timestep_embedding(noise_level[:, i], dim // k, max_period) for i in range(k)]
        emb = torch.cat(parts, dim=1)
        return F.pad(emb, (0, dim - emb.shape[1])) if emb.shape[1] < dim else emb
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=noise_level.device,
                                                           dtype=torch.float32) / half)
    args = noise_level.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def norm_groups(channels: int, max_groups: int, powers_of_two: bool = False) -> int:
    """GroupNorm groups for ``channels``: the largest divisor of ``channels`` that is at most
    ``max_groups``, or with ``powers_of_two`` the largest power-of-two divisor at most
    ``max_groups`` (1 when ``channels`` is odd).

    The image networks use the first rule (``max_groups`` = their ``groups`` option), the audio
    U-Net and classifier the second with 32, the audio autoencoder the second with 8; a network's
    group counts are part of what its shipped weights mean, so each keeps its rule."""
    if channels < 1 or max_groups < 1:
        raise UserInputError(f"GroupNorm needs channels >= 1 and groups >= 1, got {channels} and {max_groups}")
    if powers_of_two:
        g = 1
        while 2 * g <= max_groups and channels % (2 * g) == 0:
            g *= 2
        return g
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


class Attention(nn.Module):
    """Pre-norm multi-head attention over the positions of ``x [B, C, *spatial]`` (Vaswani et al.
    2017, as in the DDPM U-Net's attention block; cross-attention as in Rombach et al. 2022)::

        h   = tokens(GroupNorm(x)) [+ W_p emb(position)]          [B, N, C],  N = prod(spatial)
        q   = W_q h,  (k, v) = W_kv s,   s = h (self) | context   (heads of C / heads channels)
        out = x + untokens(W_o softmax(q k^T / sqrt(C / heads) + mask) v)

    ``W_o`` starts at zero, so a fresh block is the identity. Tokens are free views when ``x`` is
    channels-last (``[B, C, H, W]``, or ``[B, C, 1, L]`` for 1-D signals); plain ``[B, C, L]``
    works too. The output has ``x``'s memory layout (the next convolution's kernel, and so its
    rounding, depends on it).

    Args:
        channels: ``C``. heads: attention heads (must divide ``C``).
        groups: GroupNorm groups of the pre-norm (see :func:`norm_groups`).
        context_dim: width of context tokens ``[B, S, context_dim]``: cross-attention to them
            (``forward(x, context, mask)``, ``mask [B, S]`` True where a token is valid); ``None``:
            self-attention.
        fused_qkv: self-attention projects ``q, k, v`` with one ``[3C, C]`` matrix (parameter
            ``qkv``, one matrix product); ``False`` projects ``q`` and ``(k, v)`` separately
            (parameters ``q`` and ``kv``, the layout cross-attention always has). The image
            U-Net's weights use the first layout, the audio U-Net's the second (kept so that
            shipped weights and old runs load as saved: ``load_weights`` checks names before any
            load hook could rename them); the outputs agree up to float rounding.
        pos_emb: add a learned projection ``W_p`` of the sinusoidal embedding
            (:func:`timestep_embedding`, ``max_period`` 1000) of each token's flat index before
            the projections: convolutions with zero padding sense a signal's edges only locally,
            so without it nothing knows *where* a token lies (the audio U-Net's self-attention).
    """

    def __init__(self, channels: int, heads: int, groups: int, context_dim: int | None = None,
                 fused_qkv: bool = True, pos_emb: bool = False) -> None:
        super().__init__()
        if heads < 1 or channels % heads:
            raise UserInputError(f"attention channels {channels} not divisible by {heads} heads")
        self.heads = heads
        self.cross = bool(context_dim)
        self.fused = fused_qkv and not self.cross
        # creation order (norm, pos, projections, out) fixes the order random initial weights are drawn in
        self.norm = nn.GroupNorm(groups, channels)
        self.pos = nn.Linear(channels, channels) if pos_emb else None
        if self.fused:
            self.qkv = nn.Linear(channels, 3 * channels)
        else:
            self.q = nn.Linear(channels, channels)
            self.kv = nn.Linear(context_dim if self.cross else channels, 2 * channels)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _heads(self, t: Tensor) -> Tensor:
        """``[B, N, C]`` -> ``[B, heads, N, C / heads]`` (a view)."""
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        b, c = x.shape[:2]
        h = self.norm(x).movedim(1, -1).reshape(b, -1, c)                   # [B, N, C]
        if self.pos is not None:
            idx = torch.arange(h.shape[1], device=x.device, dtype=torch.float32)
            h = h + self.pos(timestep_embedding(idx, c, max_period=1000.0)).to(h.dtype)[None]
        attn_mask = None
        if self.cross:
            if context is None:
                raise UserInputError("this cross-attention block needs context tokens")
            q = self.q(h)
            k, v = self.kv(context.to(h.dtype)).chunk(2, dim=-1)
            if mask is not None:
                attn_mask = mask[:, None, None, :].to(torch.bool)
        elif self.fused:
            q, k, v = self.qkv(h).chunk(3, dim=-1)
        else:
            q = self.q(h)
            k, v = self.kv(h).chunk(2, dim=-1)
        o = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=attn_mask)
        o = self.out(o.transpose(1, 2).reshape(h.shape))
        # back to [B, C, *spatial]: channels-last strides. The output keeps x's layout and dtype:
        # the residual is added in place where the view already has them (a channels-last x), else
        # out of place (a contiguous x, or a wider x than o under autocast)
        o = o.reshape(b, *x.shape[2:], c).movedim(-1, 1)
        in_place = o.stride() == x.stride() and torch.promote_types(o.dtype, x.dtype) == o.dtype
        return o.add_(x) if in_place else x + o
