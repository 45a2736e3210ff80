"""What a latent model needs to complete, edit and restore inputs given in data space (used by
:class:`~diffuse.core.models.latent.LatentDomain`; domain-agnostic).

* **The known part on the latent grid** (:func:`latent_mask`): a latent element is known only
  when every data element it summarises is known. Dense data: the unknown mask max-pooled onto
  the latent's sides (``adaptive_max_pool``: for an image autoencoder with factor ``f`` each latent
  cell covers an ``f x f`` block; where the sides are not multiples of the latent's, as for an
  audio latent of a padded clip, the data is padded at the end, as the encoder pads it). Graph
  latents (molecules: one row per atom, by message passing) cannot complete a fragment: a known
  atom's latent depends on the atoms still to be generated (a NotSupportedError says so).
* **Inputs through the encoder** (:func:`encode_input`): the posterior mean of the input, scaled
  as the diffusion runs on it; completion then re-imposes its known latents at every step
  (``core.sampling.completion``: RePaint), the result is decoded and the known data elements are
  put back (:func:`paste_known`), so the output keeps the input exactly where it was known.
* **Concatenated conditions** (:func:`encode_concat`): a restoration condition (SR3's upsampled
  low-resolution image, a low-rate clip: ``ConcatKind``) lives in data space; a latent model takes
  its encoding, ``[encoder mean (scaled), presence flag]`` on the latent grid, so the backbone
  concatenates latent-shaped channels (Rombach et al. 2022 condition their super-resolution
  models on the low-resolution input concatenated to the latent). Null rows stay null (zeros).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.condition import ConcatKind, Condition
from ..data.domain import Batch
from ..errors import NotSupportedError, UserInputError

__all__ = ["latent_mask", "encode_input", "paste_known", "encode_concat", "latent_concat_kinds"]

_POOL = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def latent_mask(mask: Tensor, data: Tensor, latent: Tensor) -> Tensor:
    """The known part (bool, true = known) of ``latent`` given the known part ``mask`` of ``data``
    (broadcastable to it); see the module docstring. Returns ``[B, 1, *latent sides]`` (dense
    data). Latents of graphs (one row per atom, computed by message passing) are refused: a known
    atom's latent would depend on the atoms still to be generated."""
    m = torch.as_tensor(mask, device=data.device)
    m = (m > 0.5) if m.dtype != torch.bool else m
    m = m.reshape(m.shape + (1,) * (data.ndim - m.ndim)).expand_as(data)
    if latent.ndim == data.ndim == 2 and latent.shape[0] == data.shape[0]:     # one latent row per data row
        raise NotSupportedError("completion with a latent model of graphs (molecules) is not supported: an atom's "
                                "latent depends on its neighbours through the encoder, so a fragment cannot be encoded "
                                "apart from the atoms still to be generated; use a data-space model")
    d = data.ndim - 2
    if latent.ndim != data.ndim or latent.shape[0] != data.shape[0] or d not in _POOL:
        raise UserInputError(f"cannot map a mask of data {list(data.shape)} onto latents {list(latent.shape)}")
    unknown = (~m.all(1, keepdim=True)).float()
    sides, cells = list(data.shape[2:]), list(latent.shape[2:])
    factors = [-(-s // c) for s, c in zip(sides, cells)]           # ceil: a cell covers this many elements
    pad = [v for s, c, f in zip(reversed(sides), reversed(cells), reversed(factors)) for v in (0, c * f - s)]
    unknown = F.pad(unknown, pad)             # the encoder's padding (an audio latent's tail) counts as known
    return _POOL[d](unknown, cells) < 0.5


@torch.no_grad()
def encode_input(autoencoder: Any, batch: Batch, mask: Tensor) -> tuple[Batch, Tensor]:
    """``(latent Batch, latent mask)`` of a data ``batch`` and its known part: the posterior mean,
    scaled (what the diffusion runs on), and the known part on the latent grid
    (``Autoencoder.latent_mask``: :func:`latent_mask` unless an autoencoder knows better)."""
    dev = autoencoder.scale.device
    data = batch.to(dev)
    z = autoencoder.encode_scaled(data, sample=False)
    m = autoencoder.latent_mask(torch.as_tensor(mask).to(dev), data.x, z)
    space = autoencoder.latent_space(data)
    return Batch(z.to(batch.x.device), space.to(batch.x.device), batch.cond, batch.extras), m.to(batch.x.device)


def paste_known(samples: Batch, known: Batch, mask: Tensor) -> Batch:
    """``samples`` with the elements ``mask`` marks known replaced by ``known``'s (same layout)."""
    m = torch.as_tensor(mask, device=samples.x.device)
    m = (m > 0.5) if m.dtype != torch.bool else m
    m = m.reshape(m.shape + (1,) * (samples.x.ndim - m.ndim)).expand_as(samples.x)
    x = torch.where(m, known.x.to(samples.x.device, samples.x.dtype), samples.x)
    return Batch(x, samples.space, samples.cond, samples.extras)


def _concat_names(cond: Any) -> list[str]:
    return sorted(k for k in cond.values if isinstance(cond.kinds[k], ConcatKind)) if isinstance(cond, Condition) else []


@torch.no_grad()
def encode_value(autoencoder: Any, value: Tensor, like: Batch) -> Tensor:
    """The scaled posterior mean of data ``value [n, C, *S]`` (a batch structured like ``like``)."""
    dev = autoencoder.scale.device
    data = Batch(value.to(dev), like.space.to(dev))
    return autoencoder.encode_scaled(data, sample=False).to(value.device)


def encode_concat(autoencoder: Any, cond: Any, like: Batch) -> Any:
    """``cond`` with every :class:`ConcatKind` value ``[n, C + 1, *S]`` (data, then presence flag)
    replaced by ``[n, c + 1, *s]`` on the latent grid: the encoding of the data channels where the
    flag is set, zeros where it is not (see the module docstring). Other values pass unchanged."""
    names = _concat_names(cond)
    if not names:
        return cond
    values, kinds = dict(cond.values), dict(cond.kinds)
    for k in names:
        v, kind = values[k], kinds[k]
        flag = v[:, kind.channels:kind.channels + 1]
        given = flag.reshape(v.shape[0], -1).amax(1) > 0
        z = encode_value(autoencoder, v[:, :kind.channels], like)
        z = torch.where(given.reshape(-1, *([1] * (z.ndim - 1))), z, torch.zeros_like(z))
        f = _AVG[z.ndim - 2](flag.float(), list(z.shape[2:])).to(z.dtype)
        values[k] = torch.cat([z, f], 1)
        kinds[k] = ConcatKind(int(z.shape[1]), list(z.shape[2:]))
    return Condition(values, kinds)


def latent_concat_kinds(kinds: dict[str, Any], latent_shape: Sequence[int]) -> dict[str, Any]:
    """``kinds`` with every :class:`ConcatKind` for data replaced by the latent grid's
    (``latent_shape``: ``[c, *s]`` of one latent)."""
    c, *sides = (int(v) for v in latent_shape)
    return {k: ConcatKind(c, sides) if isinstance(kind, ConcatKind) else kind for k, kind in kinds.items()}
