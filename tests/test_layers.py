"""The domains' shared pieces, tested once: the GroupNorm group rule against the three rules it
replaced, the Frechet distance against closed forms, exact nuclear norms and scipy's sqrtm, the
N-d attention block against an explicit float64 computation, the timestep embedding by hand, and
the preset resolver."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from diffuse.core.frechet import feature_stats, frechet_distance, frechet_from_features
from diffuse.domains.layers import Attention, norm_groups, timestep_embedding
from diffuse.domains.presets import resolve_preset

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ GroupNorm groups
def _old_image_rule(channels, groups):          # domains/image/unet.py before the shared rule
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _old_audio_unet_rule(ch, max_groups=32):    # domains/audio/unet.py (always called with 32)
    for g in (max_groups, 16, 8, 4, 2, 1):
        if g <= max_groups and ch % g == 0:
            return g
    return 1


def _old_audio_autoencoder_rule(ch):            # domains/audio/autoencoder.py
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


def test_norm_groups_reproduces_the_three_rules_it_replaced():
    for ch in range(1, 513):
        for cap in range(1, 65):
            assert norm_groups(ch, cap) == _old_image_rule(ch, cap), (ch, cap)
        assert norm_groups(ch, 32, powers_of_two=True) == _old_audio_unet_rule(ch), ch
        assert norm_groups(ch, 8, powers_of_two=True) == _old_audio_autoencoder_rule(ch), ch
    assert norm_groups(96, 32) == 32 and norm_groups(96, 32, powers_of_two=True) == 32
    assert norm_groups(48, 32) == 24 and norm_groups(48, 32, powers_of_two=True) == 16
    with pytest.raises(ValueError, match="groups >= 1"):
        norm_groups(8, 0)


# ------------------------------------------------------------------ timestep embedding
def test_timestep_embedding_by_hand():
    levels = [0.0, 3.0, 250.5]
    for dim, period in ((6, 10000.0), (7, 1000.0)):
        emb = timestep_embedding(torch.tensor(levels), dim, max_period=period)
        assert emb.shape == (3, dim) and emb.dtype == torch.float32
        half = dim // 2
        for i, n in enumerate(levels):
            w = [period ** (-k / half) for k in range(half)]
            expected = [math.cos(n * wk) for wk in w] + [math.sin(n * wk) for wk in w] + [0.0] * (dim % 2)
            torch.testing.assert_close(emb[i], torch.tensor(expected, dtype=torch.float32), rtol=0, atol=2e-5)


# ------------------------------------------------------------------ Frechet distance
def _factor(d, rank, rng):
    return rng.standard_normal((d, rank)) * rng.uniform(0.1, 3.0, rank)


@pytest.mark.parametrize("d", [2, 10, 64, 128])
def test_frechet_matches_exact_nuclear_norm_and_scipy(d):
    """``S1 = A A^T``, ``S2 = B B^T``: ``Tr (S1 S2)^{1/2} = ||A^T B||_*`` (the singular values of
    ``A^T B`` are the square roots of the nonzero eigenvalues of ``S1 S2``), exact by an SVD of the
    factors at any rank. Covariances full-rank, rank-deficient (down to rank 1) and full-rank with
    eigenvalues spread over 12 decades. Stated tolerances, relative to ``Tr S1 + Tr S2``: 1e-13
    against that exact value (measured: 2e-15 at worst); 1e-6 against
    ``Tr scipy.linalg.sqrtm(S1 S2)`` (scipy's own error on singular products is up to about 2e-7)."""
    rng = np.random.default_rng(d)
    factors = [(_factor(d, r1, rng), _factor(d, r2, rng))
               for r1, r2 in ((d, d), (d // 2 + 1, d), (max(1, d // 4), max(1, d // 3)), (1, 1))]
    q1, q2 = (np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(2))
    spread = np.sqrt(np.logspace(-12, 0, d))
    factors.append((q1 * spread, q2 * spread[::-1]))
    for a, b in factors:
        s1, s2 = a @ a.T, b @ b.T
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        scale = np.trace(s1) + np.trace(s2)
        exact = np.sum((mu1 - mu2) ** 2) + scale - 2 * np.linalg.svd(a.T @ b, compute_uv=False).sum()
        fd = frechet_distance(mu1, s1, mu2, s2)
        assert abs(fd - exact) <= 1e-13 * scale, (a.shape, b.shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # scipy warns on singular products
            via_scipy = np.sum((mu1 - mu2) ** 2) + scale - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
        assert abs(fd - via_scipy) <= 1e-6 * scale, (a.shape, b.shape)


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    a, b = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # S2 = c^2 S1: Tr(S1) (1 - c)^2
    f = rng.normal(size=(4, 4))
    s = f @ f.T + 0.1 * np.eye(4)
    assert frechet_distance(mu1, s, mu1, 9 * s) == pytest.approx(4 * np.trace(s), rel=1e-9)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)
    # 1-D feature sets: (m_a - m_b)^2 + (s_a - s_b)^2 with unbiased standard deviations
    x, y = rng.normal(0.0, 1.0, (500, 1)), rng.normal(2.0, 3.0, (400, 1))
    expected = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_from_features(x, y) == pytest.approx(expected, rel=1e-8)
    assert frechet_from_features(torch.from_numpy(x), torch.from_numpy(y)) == frechet_from_features(x, y)
    assert frechet_from_features(x, x) == pytest.approx(0.0, abs=1e-12)


def test_frechet_from_small_sets_of_wide_features():
    """Fewer samples than dimensions (the audio metrics' case: 64 clips against 10 reference clips,
    128-d log-mel statistics): rank-deficient covariances, exact to round-off against the nuclear
    norm of the centred feature matrices' cross product."""
    rng = np.random.default_rng(3)
    mix = rng.standard_normal((128, 128)) / np.sqrt(128)
    x, y = rng.standard_normal((64, 128)) @ mix, rng.standard_normal((10, 128)) @ mix + 0.2
    xc, yc = x - x.mean(0), y - y.mean(0)
    cross = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / math.sqrt(63 * 9)
    (mu1, s1), (mu2, s2) = feature_stats(x), feature_stats(y)
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    assert frechet_from_features(x, y) == pytest.approx(exact, abs=1e-13 * (np.trace(s1) + np.trace(s2)))


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"N >= 2"):
        frechet_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_from_features(np.zeros((4, 3)), np.zeros((5, 2)))


# ------------------------------------------------------------------ attention
def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return module


def _reference(block, x, context=None, mask=None):
    """The attention formula written out in float64 on ``[B, C, N]`` tokens."""
    p = {k: v.double() for k, v in block.state_dict().items()}
    b, c = x.shape[:2]
    h = torch.nn.functional.group_norm(x.double(), block.norm.num_groups, p["norm.weight"], p["norm.bias"], 1e-5)
    h = h.reshape(b, c, -1).transpose(1, 2)                                                   # [B, N, C]
    if block.pos is not None:
        pos = timestep_embedding(torch.arange(h.shape[1], dtype=torch.float32), c, max_period=1000.0).double()
        h = h + pos @ p["pos.weight"].T + p["pos.bias"]
    if "qkv.weight" in p:
        w_q, w_kv = p["qkv.weight"][:c], p["qkv.weight"][c:]
        b_q, b_kv = p["qkv.bias"][:c], p["qkv.bias"][c:]
    else:
        w_q, w_kv, b_q, b_kv = p["q.weight"], p["kv.weight"], p["q.bias"], p["kv.bias"]
    src = h if context is None else context.double()
    q = h @ w_q.T + b_q
    k, v = (src @ w_kv.T + b_kv).chunk(2, dim=-1)
    heads, dh = block.heads, c // block.heads
    q, k, v = (t.reshape(b, t.shape[1], heads, dh).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
    o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, c)
    o = o @ p["out.weight"].T + p["out.bias"]
    return x.double() + o.transpose(1, 2).reshape(x.shape)


CASES = [  # (input shape, heads, context_dim, fused_qkv, pos_emb)
    ((2, 16, 24), 4, None, False, True),          # 1-D [B, C, L], the audio U-Net's self-attention
    ((2, 16, 1, 24), 2, None, False, False),      # 1-D as [B, C, 1, L]
    ((2, 16, 5, 6), 4, None, True, False),        # 2-D, the image U-Net's fused self-attention
    ((2, 16, 5, 6), 2, 12, True, False),          # 2-D cross-attention (q + kv whatever fused_qkv says)
    ((2, 16, 30), 4, 12, False, False),           # 1-D cross-attention
]


@pytest.mark.parametrize("shape,heads,context_dim,fused,pos", CASES)
def test_attention_shapes_identity_at_init_and_the_formula(shape, heads, context_dim, fused, pos):
    torch.manual_seed(0)
    block = Attention(shape[1], heads, norm_groups(shape[1], 4), context_dim, fused_qkv=fused, pos_emb=pos)
    names = {k.split(".")[0] for k in block.state_dict()}
    assert names == {"norm", "out", *(["pos"] if pos else []), *(["qkv"] if fused and not context_dim else ["q", "kv"])}
    x = torch.randn(shape)
    context = torch.randn(shape[0], 5, context_dim) if context_dim else None
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]]) if context_dim else None
    args = (context, mask) if context_dim else ()
    # zero-initialised output projection: a fresh block is the identity
    assert torch.equal(block(x, *args), x)
    _randomise(block)
    out = block(x, *args)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), _reference(block, x, context, mask), rtol=1e-5, atol=1e-5)
    if context_dim:
        # masked context tokens do not matter
        changed = context.clone()
        changed[1, 2:] = 100.0
        torch.testing.assert_close(block(x, changed, mask)[1], out[1])


def test_attention_keeps_the_input_layout_and_fused_equals_split():
    torch.manual_seed(0)
    fused = _randomise(Attention(16, 4, 4, fused_qkv=True))
    split = Attention(16, 4, 4, fused_qkv=False)
    state = fused.state_dict()
    w, b = state.pop("qkv.weight"), state.pop("qkv.bias")
    split.load_state_dict({**state, "q.weight": w[:16], "q.bias": b[:16], "kv.weight": w[16:], "kv.bias": b[16:]})
    x = torch.randn(2, 16, 6, 7)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        a, b_ = fused(xf), split(xf)
        assert a.is_contiguous(memory_format=fmt) and b_.is_contiguous(memory_format=fmt)
        torch.testing.assert_close(a, b_, rtol=1e-6, atol=1e-6)


def test_attention_rejects_heads_that_do_not_divide_and_cross_without_context():
    with pytest.raises(ValueError, match="not divisible by 3 heads"):
        Attention(16, 3, 4)
    with pytest.raises(ValueError, match="needs context tokens"):
        Attention(16, 2, 4, context_dim=8)(torch.randn(1, 16, 5))


# ------------------------------------------------------------------ presets
def test_resolve_preset():
    presets = {"small": {"width": 8, "depth": 2}, "big": {"width": 64, "depth": 4}}
    known = {"width", "depth", "dropout"}
    assert resolve_preset(None, presets, known, what="toy model") == {"width": 8, "depth": 2}
    assert resolve_preset({"preset": "big", "depth": 5}, presets, known, what="toy model",
                          base={"dropout": 0.0, "depth": 1}) == {"dropout": 0.0, "width": 64, "depth": 5}
    with pytest.raises(ValueError, match="unknown toy model preset 'huge'; expected one of small, big"):
        resolve_preset({"preset": "huge"}, presets, known, what="toy model")
    with pytest.raises(ValueError, match="unknown toy model option\\(s\\): colour; known: preset, depth"):
        resolve_preset({"colour": 1}, presets, known, what="toy model")
