"""Sample-quality metrics: FID, KID and conditional accuracy.

* FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to feature sets,
  ``|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``, computed by the one implementation all
  domains share (:mod:`diffuse.core.frechet`, which states its numerics).
* KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimator of the squared
  MMD with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random
  subsets.
* Conditional accuracy: how often a classifier assigns generated samples to the class they were
  generated for.

All in float64; features come from :mod:`diffuse.domains.image.features`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from ...core.frechet import frechet_from_features
from ...core.errors import UserInputError

__all__ = ["fid_from_features", "kid_from_features", "conditional_accuracy"]

log = logging.getLogger(__name__)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """FID between two feature sets ``[N, D]``, ``[M, D]``: the shared Frechet distance
    (:func:`diffuse.core.frechet.frechet_from_features`)."""
    return frechet_from_features(a, b)


def kid_from_features(a: Tensor, b: Tensor, num_subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation over subsets of the unbiased MMD^2 estimate
    with kernel ``(x.y / d + 1)^3``; the subset size is capped by the smaller set."""
    x = a.detach().cpu().double()
    y = b.detach().cpu().double()
    n = min(subset_size, len(x), len(y))
    if n < 2:
        raise UserInputError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(num_subsets):
        xs = x[torch.randperm(len(x), generator=g)[:n]]
        ys = y[torch.randperm(len(y), generator=g)[:n]]
        kxx = (xs @ xs.T / d + 1) ** 3
        kyy = (ys @ ys.T / d + 1) ** 3
        kxy = (xs @ ys.T / d + 1) ** 3
        mmd = ((kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
               + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1)) - 2 * kxy.mean())
        vals.append(float(mmd))
        if n == len(x) == len(y):  # every subset would be the same
            break
    v = np.array(vals)
    return float(v.mean()), float(v.std())


@torch.no_grad()
def conditional_accuracy(classifier: torch.nn.Module, samples: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """Fraction of ``samples`` (model space ``[-1, 1]``) that ``classifier`` assigns to ``labels``."""
    if len(samples) != len(labels):
        raise UserInputError(f"{len(samples)} samples but {len(labels)} labels")
    hits = 0
    for i in range(0, len(samples), batch_size):
        logits = classifier(samples[i:i + batch_size].float().clamp(-1, 1))
        hits += int((logits.argmax(1).cpu() == labels[i:i + batch_size].cpu().long()).sum())
    return hits / max(1, len(samples))
