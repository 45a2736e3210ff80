"""Sample-quality metrics: FID, KID and conditional accuracy.

* FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to feature sets,
  ``|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2})``, the trace of the matrix square root
  through a symmetric eigen-decomposition (or ``scipy.linalg.sqrtm``).
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
import scipy.linalg
import torch
from torch import Tensor
from ...core.errors import UserInputError

__all__ = ["frechet_distance", "fid_from_features", "feature_stats", "kid_from_features", "conditional_accuracy"]

log = logging.getLogger(__name__)


def feature_stats(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``features [N, D]`` (float64 numpy)."""
    f = features.detach().cpu().double().numpy()
    if f.shape[0] < 2:
        raise UserInputError(f"FID needs at least 2 samples per set, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "eigh") -> float:
    """``d^2(N(mu1, S1), N(mu2, S2)) = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` (Dowson & Landau 1982).

    ``method="eigh"`` (default) uses ``Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}``, the sum
    of the square roots of the eigenvalues of a symmetric PSD matrix: exact, real and stable for the
    rank-deficient covariances of small sample sets. ``method="sqrtm"`` uses
    ``scipy.linalg.sqrtm(S1 @ S2)`` directly (the usual FID code path; tiny imaginary parts dropped).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise UserInputError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    if method == "eigh":
        r1 = _psd_sqrt(s1)
        eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
        tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    elif method == "sqrtm":
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        tr_covmean = float(np.trace(covmean).real)
    else:
        raise UserInputError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(fid, 0.0)


def fid_from_features(a: Tensor, b: Tensor) -> float:
    """FID between two feature sets ``[N, D]``, ``[M, D]``."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))


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
