"""Diffusion Transformers (DiT, Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers") for any dense domain: images ``[B, C, H, W]``, their latents, audio ``[B, C, L]``
(waveforms or latents). One module for every number of spatial dimensions ``d``.

Structure::

    patchify: [B, C, *S] -> [B, N, C p^d] -> Linear -> tokens [B, N, D] (+ positions)
    c = MLP(sinusoid(noise_level)) [+ Embed(label)] [+ Linear(mean of text tokens)]
    depth x block(tokens, c) -> adaLN(c) LayerNorm -> Linear -> unpatchify -> [B, C, *S]

* **Patches** (``patch_size`` p per side, ``N = prod(S_i / p_i)``): a linear map of each
  ``p^d`` patch (a convolution with kernel = stride = p, as DiT's ``PatchEmbed``), and the
  inverse (one linear map per token to ``C p^d`` values, then the patches put back). The sides
  must be multiples of the patch (a one-line error otherwise); odd sides work (7x7 latents at
  ``p = 1`` or ``7``; 9x15 at ``p = 3``).
* **Positions** (``pos_emb``): ``"sinusoidal"``: DiT's fixed N-d sine-cosine table (each axis
  gets ``D / d`` channels of :func:`~diffuse.domains.layers.timestep_embedding` of the patch
  index); ``"learned"``: a parameter initialised to that table.
* **adaLN-Zero block** (DiT, section 3.2): with ``(shift_1, scale_1, gate_1, shift_2, scale_2,
  gate_2) = W c + b`` per block::

      x = x + gate_1 * Attn(LN(x) (1 + scale_1) + shift_1)
      x = x + CrossAttn(LN'(x), text)                      (text_mode "cross")
      x = x + gate_2 * MLP(LN(x) (1 + scale_2) + shift_2)

  ``W`` and ``b`` start at zero, as do the cross-attention's and the final layer's output
  projections, so every fresh block is the identity and a fresh DiT outputs zeros. The
  modulations of all blocks come from ONE matrix product of ``SiLU(c)`` (the same numbers as a
  linear map per block, one call).
* **Conditions**: class labels (embedding with the null label ``num_classes``), and a text prompt
  (the condition ``text``, through a ``text_encoder`` held by the DiT, trained and saved with it):
  pooled into ``c`` (``text_pool``: the mean of the valid tokens, projected, as SD3's pooled
  text) and, by ``text_mode``, read as tokens: ``"cross"`` (PixArt-alpha: cross-attention after
  each self-attention), ``"joint"`` (MMDiT, Esser et al. 2024: text and patch tokens attend
  jointly, each stream with its own adaLN-Zero modulation, projections and MLP; the last block
  updates only the patch stream) or ``"pool"`` (the pooled text only). A condition concatenated
  to the input (SR3's ``lowres``, ``core.data.condition.ConcatKind``) enters the patches as extra
  channels (``in_cond_channels``).
* **Speed**: one fused ``qkv`` projection, one matrix product for every block's modulation, the
  time embedding computed once (diffusers' ``DiTTransformer2DModel`` gives every block its own),
  ``F.scaled_dot_product_attention``, and the exact GELU, which PyTorch computes about 3x faster on
  CPU than DiT's tanh approximation of it (``activation: "gelu_tanh"`` restores that one);
  ``benchmarks/bench_dit.py`` measures it against diffusers.

Shapes: ``forward(x [B, C, *S], noise_level [B] or [], cond) -> [B, C, *S]``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.data.condition import Condition, concat_inputs
from ..core.errors import ConfigError, UserInputError
from ..core.validation import AT_LEAST_ONE, POSITIVE, check_kwargs
from .layers import timestep_embedding
from .presets import resolve_preset
from .text import TextPool, build_text_encoder, check_text_encoder_options, text_context

__all__ = ["DiT", "DiTBlock", "DIT_PRESETS", "DIT_OPTIONS", "auto_patch", "check_patch", "patchify",
           "unpatchify", "sincos_positions", "MAX_AUTO_TOKENS", "resolve_dit", "check_dit", "build_dit"]

#: named sizes (``{"preset": NAME}``): ``tiny`` / ``small`` for CPU runs, ``S`` / ``B`` / ``L`` /
#: ``XL`` the paper's DiT-S/B/L/XL widths, depths and heads
DIT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"width": 64, "depth": 4, "heads": 4},
    "small": {"width": 128, "depth": 6, "heads": 4},
    "base": {"width": 256, "depth": 8, "heads": 8},
    "S": {"width": 384, "depth": 12, "heads": 6},
    "B": {"width": 768, "depth": 12, "heads": 12},
    "L": {"width": 1024, "depth": 24, "heads": 16},
    "XL": {"width": 1152, "depth": 28, "heads": 16},
}
#: the model-section keys a DiT takes (besides ``preset`` and ``backbone``)
DIT_OPTIONS = ("patch_size", "width", "depth", "heads", "mlp_ratio", "pos_emb", "text_mode", "text_pool",
               "text_encoder", "qk_norm", "activation")
#: ``patch_size: "auto"`` picks the smallest patch that gives at most this many tokens
MAX_AUTO_TOKENS = 256
_POS = ("learned", "sinusoidal")
_TEXT_MODES = ("cross", "joint", "pool")
_ACTIVATIONS = ("gelu", "gelu_tanh")


# ----------------------------------------------------------------------------- patches
def _sides(size: str | Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in size)


def auto_patch(sizes: Sequence[int], max_tokens: int = MAX_AUTO_TOKENS) -> int:
    """The smallest patch ``p`` dividing every side with ``prod(S_i / p) <= max_tokens``; the
    sides' greatest common divisor if none does."""
    g = 0
    for s in sizes:
        g = math.gcd(g, int(s))
    for p in range(1, g + 1):
        if g % p == 0 and math.prod(int(s) // p for s in sizes) <= max_tokens:
            return p
    return g


def check_patch(patch: Any, sizes: Sequence[int]) -> list[int]:
    """The per-side patch (an int for every side, or one per side); a ConfigError in one line
    when it is not a positive integer or does not divide a side."""
    d = len(sizes)
    if patch == "auto" or patch is None:
        return [auto_patch(sizes)] * d
    ps = list(patch) if isinstance(patch, (list, tuple)) else [patch] * d
    if len(ps) != d or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in ps):
        raise ConfigError(f"model.patch_size must be \"auto\", a positive integer or {d} of them, got {patch!r}")
    bad = [i for i, (s, p) in enumerate(zip(sizes, ps)) if int(s) % p]
    if bad:
        divisors = sorted({p for p in range(1, max(int(s) for s in sizes) + 1) if all(int(s) % p == 0 for s in sizes)})
        raise ConfigError(f"DiT patch size {_sides(ps)} does not divide the input size {_sides(sizes)}; choose a "
                          f"patch dividing every side (here: {', '.join(map(str, divisors))})")
    return ps


def patchify(x: Tensor, patch: Sequence[int]) -> Tensor:
    """``[B, C, *S] -> [B, N, C * prod(p)]``, tokens in row-major order of the patch grid, each
    token's values ordered ``(c, i_1, ..., i_d)`` (the layout of a conv kernel ``[D, C, *p]``)."""
    b, c, *sizes = x.shape
    d = len(sizes)
    grid = [s // p for s, p in zip(sizes, patch)]
    x = x.reshape(b, c, *[v for g, p in zip(grid, patch) for v in (g, p)])
    perm = [0, *[2 + 2 * i for i in range(d)], 1, *[3 + 2 * i for i in range(d)]]
    return x.permute(perm).reshape(b, math.prod(grid), c * math.prod(patch))


def unpatchify(tokens: Tensor, patch: Sequence[int], grid: Sequence[int], channels: int) -> Tensor:
    """The inverse of :func:`patchify`: ``[B, N, C * prod(p)] -> [B, C, *(grid * p)]``."""
    b, d = tokens.shape[0], len(grid)
    x = tokens.reshape(b, *grid, channels, *patch)
    perm = [0, d + 1, *[v for i in range(d) for v in (1 + i, d + 2 + i)]]
    return x.permute(perm).reshape(b, channels, *[g * p for g, p in zip(grid, patch)])


def sincos_positions(grid: Sequence[int], dim: int) -> Tensor:
    """DiT's fixed position table ``[N, dim]`` for a patch grid: axis ``i`` gets ``dim / d``
    channels (the last axis the remainder) of ``[cos, sin]`` of the patch index (max period 10^4)."""
    d = len(grid)
    widths = [dim // d] * (d - 1) + [dim - (dim // d) * (d - 1)]
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float32) for g in grid], indexing="ij")
    parts = [timestep_embedding(c.reshape(-1), w) for c, w in zip(coords, widths)]
    return torch.cat(parts, dim=1)


# ----------------------------------------------------------------------------- blocks
def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``LN(x) (1 + scale) + shift`` (LayerNorm without affine, eps 1e-6 as DiT)."""
    return torch.addcmul(shift.unsqueeze(1), F.layer_norm(x, x.shape[-1:], eps=1e-6), 1 + scale.unsqueeze(1))


def _heads(t: Tensor, heads: int) -> Tensor:
    """``[B, N, D] -> [B, heads, N, D / heads]`` (a view)."""
    return t.unflatten(-1, (heads, -1)).transpose(1, 2)


class _QKNorm(nn.Module):
    """RMS normalisation of queries and keys per head (SD3's ``qk_norm``), learned scale."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.q, self.k = nn.RMSNorm(head_dim, eps=1e-6), nn.RMSNorm(head_dim, eps=1e-6)


class _Mlp(nn.Sequential):
    """``Linear -> GELU -> Linear``. ``activation``: ``"gelu"`` (exact, erf) or ``"gelu_tanh"``
    (its tanh approximation, DiT's): within 1e-3 of each other, and on CPU the exact one is the
    faster kernel (3x in PyTorch 2.x), so it is the default."""

    def __init__(self, width: int, ratio: float, activation: str = "gelu") -> None:
        hidden = int(round(width * ratio))
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none"),
                         nn.Linear(hidden, width))


class _CrossAttention(nn.Module):
    """Pre-norm cross-attention of patch tokens to context tokens (PixArt-alpha), zero-initialised output."""

    def __init__(self, width: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.q, self.kv = nn.Linear(width, width), nn.Linear(context_dim, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, ctx: Tensor, mask: Tensor | None) -> Tensor:
        q = _heads(self.q(self.norm(x)), self.heads)
        k, v = (_heads(t, self.heads) for t in self.kv(ctx.to(x.dtype)).chunk(2, dim=-1))
        m = mask[:, None, None, :] if mask is not None else None
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        return self.out(o.transpose(1, 2).flatten(2))


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (see the module docstring). ``forward(x, mod, text)``
    with ``mod [B, 6, D]`` this block's modulation (from :attr:`DiT.adaln`), ``text`` the
    ``(tokens, mask)`` of a cross-attention DiT; a joint block also takes and returns the text
    stream (``mod [B, 12, D]``: the patch stream's six, then the text stream's)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, context_dim: int | None = None,
                 joint: bool = False, last: bool = False, qk_norm: bool = False, activation: str = "gelu") -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ConfigError(f"DiT width {width} is not divisible by {heads} heads")
        self.heads, self.joint, self.last = heads, joint, last
        self.qkv, self.proj, self.mlp = nn.Linear(width, 3 * width), nn.Linear(width, width), _Mlp(width, mlp_ratio, activation)
        self.qk_norm = _QKNorm(width // heads) if qk_norm else None
        self.cross = _CrossAttention(width, context_dim, heads) if context_dim and not joint else None
        if joint:    # MMDiT: the text stream's own projections (the last block only feeds keys and values)
            self.ctx_qkv = nn.Linear(width, 3 * width)
            self.ctx_qk_norm = _QKNorm(width // heads) if qk_norm else None
            if not last:
                self.ctx_proj, self.ctx_mlp = nn.Linear(width, width), _Mlp(width, mlp_ratio, activation)

    #: rows of the modulation this block reads
    def mod_rows(self) -> int:
        return 6 + ((2 if self.last else 6) if self.joint else 0)

    def _qkv(self, h: Tensor, proj: nn.Linear, norm: _QKNorm | None) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = (_heads(t, self.heads) for t in proj(h).chunk(3, dim=-1))
        if norm is not None:
            q, k = norm.q(q), norm.k(k)
        return q, k, v

    def forward(self, x: Tensor, mod: Tensor, text: tuple[Tensor, Tensor | None] | None = None):
        shift1, scale1, gate1, shift2, scale2, gate2 = mod[:, :6].unbind(1)
        q, k, v = self._qkv(_modulate(x, shift1, scale1), self.qkv, self.qk_norm)
        if not self.joint:
            o = F.scaled_dot_product_attention(q, k, v)
            x = torch.addcmul(x, gate1.unsqueeze(1), self.proj(o.transpose(1, 2).flatten(2)))
            if self.cross is not None and text is not None:
                x = x + self.cross(x, *text)
            return torch.addcmul(x, gate2.unsqueeze(1), self.mlp(_modulate(x, shift2, scale2)))
        ctx, mask = text
        cmod = mod[:, 6:].unbind(1)
        cq, ck, cv = self._qkv(_modulate(ctx, cmod[0], cmod[1]), self.ctx_qkv, self.ctx_qk_norm)
        s = ctx.shape[1]
        m = None
        if mask is not None:   # text padding masked out; every patch token is valid
            m = torch.cat([mask, mask.new_ones(mask.shape[0], x.shape[1])], 1)[:, None, None, :]
        o = F.scaled_dot_product_attention(torch.cat([cq, q], 2), torch.cat([ck, k], 2), torch.cat([cv, v], 2),
                                           attn_mask=m).transpose(1, 2).flatten(2)
        x = torch.addcmul(x, gate1.unsqueeze(1), self.proj(o[:, s:]))
        x = torch.addcmul(x, gate2.unsqueeze(1), self.mlp(_modulate(x, shift2, scale2)))
        if not self.last:
            _, _, cgate1, cshift2, cscale2, cgate2 = cmod
            ctx = torch.addcmul(ctx, cgate1.unsqueeze(1), self.ctx_proj(o[:, :s]))
            ctx = torch.addcmul(ctx, cgate2.unsqueeze(1), self.ctx_mlp(_modulate(ctx, cshift2, cscale2)))
        return x, ctx


# ----------------------------------------------------------------------------- the network
class DiT(nn.Module):
    """Diffusion Transformer ``f(x_t, noise_level, cond=None, space=None) -> tensor like x_t``
    (see the module docstring).

    Args:
        in_channels: channels ``C`` of the input (and of the output).
        input_size: the spatial sides ``S`` (``[H, W]`` images, ``[L]`` audio): the DiT is built
            for this grid.
        patch_size: ``"auto"`` (:func:`auto_patch`), an int for every side, or one per side;
            it must divide every side.
        width / depth / heads / mlp_ratio: token width ``D``, blocks, attention heads, MLP width
            ``mlp_ratio * D``.
        pos_emb: ``"learned"`` (initialised to the sine-cosine table) or ``"sinusoidal"`` (fixed).
        num_classes: class labels (``None``: none); label ``num_classes`` is the null class.
        text_encoder: a module ``ids [B, L] -> (tokens [B, S, E], mask [B, S])`` for the
            condition ``text`` (``diffuse.domains.text``).
        text_mode: ``"cross"``, ``"joint"`` (MMDiT) or ``"pool"`` (see the module docstring).
        text_pool: add the pooled prompt to ``c`` (SD3's pooled text).
        in_cond_channels: channels of a condition concatenated to the input (zeros when absent).
        qk_norm: RMS-normalise queries and keys per head (SD3).
        activation: the MLP's ``"gelu"`` (exact) or ``"gelu_tanh"`` (DiT's approximation of it).
        freq_dim: width of the sinusoidal noise-level features.
    """

    def __init__(self, in_channels: int, input_size: Sequence[int], patch_size: Any = "auto", width: int = 128,
                 depth: int = 6, heads: int = 4, mlp_ratio: float = 4.0, pos_emb: str = "learned",
                 num_classes: int | None = None, text_encoder: nn.Module | None = None, text_mode: str = "cross",
                 text_pool: bool = True, in_cond_channels: int = 0, qk_norm: bool = False,
                 activation: str = "gelu", freq_dim: int = 256) -> None:
        super().__init__()
        sizes = [int(s) for s in input_size]
        if not sizes or min(sizes) < 1:
            raise UserInputError(f"a DiT needs positive input sides, got {input_size!r}")
        if pos_emb not in _POS:
            raise ConfigError(f"model.pos_emb must be one of {', '.join(_POS)}, got {pos_emb!r}")
        if text_mode not in _TEXT_MODES:
            raise ConfigError(f"model.text_mode must be one of {', '.join(_TEXT_MODES)}, got {text_mode!r}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"model.activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if width < 1 or depth < 1 or heads < 1 or width % heads or mlp_ratio <= 0:
            raise ConfigError(f"a DiT needs width divisible by heads and positive depth and mlp_ratio, got width "
                              f"{width}, heads {heads}, depth {depth}, mlp_ratio {mlp_ratio}")
        self.patch = check_patch(patch_size, sizes)
        self.sizes, self.grid = sizes, [s // p for s, p in zip(sizes, self.patch)]
        self.in_channels, self.in_cond_channels = int(in_channels), int(in_cond_channels)
        self.width, self.depth, self.num_classes, self.freq_dim = width, depth, num_classes, freq_dim
        self.text_encoder = text_encoder
        tokens_in = (self.in_channels + self.in_cond_channels) * math.prod(self.patch)
        self.embed = nn.Linear(tokens_in, width)
        table = sincos_positions(self.grid, width)[None]
        if pos_emb == "learned":
            self.pos = nn.Parameter(table.clone())
        else:
            self.register_buffer("pos", table, persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.class_emb = nn.Embedding(num_classes + 1, width) if num_classes else None
        text_dim = int(text_encoder.dim) if text_encoder is not None else None
        self.text_mode = text_mode if text_encoder is not None else "pool"
        if text_encoder is not None and text_mode == "pool" and not text_pool:
            raise ConfigError("model.text_mode \"pool\" reads the prompt only through text_pool; leave text_pool on")
        self.text_pool = TextPool(text_dim, width) if text_dim and text_pool else None
        joint = self.text_mode == "joint"
        self.context_embed = nn.Linear(text_dim, width) if joint else None
        self.blocks = nn.ModuleList(
            DiTBlock(width, heads, mlp_ratio, context_dim=text_dim if self.text_mode == "cross" else None,
                     joint=joint, last=(i == depth - 1), qk_norm=qk_norm, activation=activation)
            for i in range(depth))
        self._rows = [blk.mod_rows() for blk in self.blocks]
        #: every block's modulation and the final layer's (shift, scale): one matrix product of SiLU(c)
        self.adaln = nn.Linear(width, width * (sum(self._rows) + 2))
        self.out = nn.Linear(width, self.in_channels * math.prod(self.patch))
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linear maps with zero biases, N(0, 0.02) for the
        label embedding and the time MLP, and zeros for every adaLN modulation, the
        cross-attention outputs and the final layer (adaLN-Zero: the identity at the start)."""
        text = {id(m) for m in self.text_encoder.modules()} if self.text_encoder is not None else set()
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m) not in text:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time_mlp[0], self.time_mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        if self.class_emb is not None:
            nn.init.normal_(self.class_emb.weight, std=0.02)
        zero = [self.adaln, self.out] + [b.cross.out for b in self.blocks if b.cross is not None]
        for lin in zero:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # ------------------------------------------------------------------------- forward
    def _conditioning(self, noise_level: Tensor, labels: Tensor | None, text: tuple[Tensor, Tensor] | None,
                      b: int, dtype: torch.dtype) -> Tensor:
        level = noise_level.reshape(-1).expand(b) if noise_level.numel() == 1 else noise_level.reshape(b)
        c = self.time_mlp(timestep_embedding(level, self.freq_dim).to(dtype))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full((b,), self.num_classes, dtype=torch.long, device=c.device)
            c = c + self.class_emb(labels.to(c.device).long())
        if self.text_pool is not None and text is not None:
            c = c + self.text_pool(text).to(c.dtype)
        return c

    def _inputs(self, x: Tensor, cond: Any) -> Tensor:
        if tuple(x.shape[2:]) != tuple(self.sizes) or x.shape[1] != self.in_channels:
            raise UserInputError(f"this DiT was built for inputs [B, {self.in_channels}, {', '.join(map(str, self.sizes))}], "
                                 f"got {list(x.shape)}")
        if not self.in_cond_channels:
            return x
        extra = concat_inputs(cond)
        want = (x.shape[0], self.in_cond_channels, *self.sizes)
        if extra is None:
            extra = x.new_zeros(want)
        if tuple(extra.shape) != want:
            raise UserInputError(f"the concatenated condition must be {list(want)}, got {list(extra.shape)}")
        return torch.cat([x, extra.to(x.dtype)], 1)

    def forward(self, x: Tensor, noise_level: Tensor, cond: Any = None, space: Any = None) -> Tensor:
        b = x.shape[0]
        labels = cond.get("label") if isinstance(cond, Condition) else (
            cond if isinstance(cond, Tensor) and not cond.is_floating_point() else None)
        if labels is not None and self.class_emb is None:
            raise UserInputError("this DiT was built without num_classes, so it cannot take class labels")
        text = text_context(self.text_encoder, cond)
        c = self._conditioning(noise_level, labels, text, b, x.dtype)
        mods = self.adaln(F.silu(c)).unflatten(1, (-1, self.width))          # [B, rows, D]
        h = self.embed(patchify(self._inputs(x, cond), self.patch)) + self.pos.to(x.dtype)
        ctx = self.context_embed(text[0].to(h.dtype)) if self.context_embed is not None and text is not None else None
        row = 0
        for blk, rows in zip(self.blocks, self._rows):
            mod = mods[:, row:row + rows]
            row += rows
            if blk.joint:
                if ctx is None:
                    raise UserInputError("this DiT attends jointly to text tokens; give it a text condition")
                h, ctx = blk(h, mod, (ctx, text[1]))
            else:
                h = blk(h, mod, text if self.text_mode == "cross" else None)
        shift, scale = mods[:, row:row + 2].unbind(1)
        out = self.out(_modulate(h, shift, scale))
        return unpatchify(out, self.patch, self.grid, self.in_channels)


# ----------------------------------------------------------------------------- options (backbone records)
def resolve_dit(model: dict[str, Any] | None) -> dict[str, Any]:
    """A DiT model section with its ``preset`` (default ``small``) expanded; unknown keys are a
    ConfigError naming them."""
    return resolve_preset(model, DIT_PRESETS, DIT_OPTIONS, what="DiT model")


def check_dit(model: dict[str, Any] | None, sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Check a DiT model section (names, types, ranges; with the data's ``sizes`` also that the
    patch divides them) before anything is built; returns it resolved."""
    opts = resolve_dit(model)
    check_text_encoder_options(opts.get("text_encoder"))
    check_kwargs(DiT, {k: v for k, v in opts.items() if k not in ("text_encoder", "patch_size")}, "model",
                 skip=("in_channels", "input_size", "num_classes", "text_encoder", "in_cond_channels"),
                 limits={"width": AT_LEAST_ONE, "depth": AT_LEAST_ONE, "heads": AT_LEAST_ONE, "mlp_ratio": POSITIVE})
    if opts.get("pos_emb", "learned") not in _POS:
        raise ConfigError(f"model.pos_emb must be one of {', '.join(_POS)}, got {opts['pos_emb']!r}")
    if opts.get("activation", "gelu") not in _ACTIVATIONS:
        raise ConfigError(f"model.activation must be one of {', '.join(_ACTIVATIONS)}, got {opts['activation']!r}")
    if opts.get("text_mode", "cross") not in _TEXT_MODES:
        raise ConfigError(f"model.text_mode must be one of {', '.join(_TEXT_MODES)}, got {opts['text_mode']!r}")
    if opts.get("text_mode") == "pool" and opts.get("text_pool") is False:
        raise ConfigError("model.text_mode \"pool\" reads the prompt only through text_pool; leave text_pool on")
    if opts["width"] % opts["heads"]:
        raise ConfigError(f"model.width {opts['width']} is not divisible by model.heads {opts['heads']}")
    if sizes is not None:
        check_patch(opts.get("patch_size", "auto"), sizes)
    return opts


def build_dit(model: dict[str, Any] | None, channels: int, sizes: Sequence[int], *, num_classes: int | None = None,
              text_kind: Any = None, in_cond_channels: int = 0) -> DiT:
    """The DiT of a model section for data of ``channels`` x ``sizes``, with class labels, a text
    encoder for the condition kind ``text_kind`` (``diffuse.domains.text.TextKind``) and
    concatenated input channels as the data has them."""
    opts = check_dit(model, sizes)
    text_options = opts.pop("text_encoder", None)
    encoder = build_text_encoder(text_options, text_kind) if text_kind is not None else None
    return DiT(channels, sizes, num_classes=num_classes, text_encoder=encoder, in_cond_channels=in_cond_channels,
               **opts)
