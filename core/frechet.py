"""The Frechet distance between Gaussians fitted to feature sets: one implementation, one numerics,
for every domain's set metric (image FID on LeNet / Inception features, audio ``fd_logmel`` /
``fd_mfcc`` / ``fd_net``).

``d^2(N(mu1, S1), N(mu2, S2)) = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr (S1 S2)^{1/2}``
(Dowson & Landau 1982; FID's formula, Heusel et al. 2017).

Numerics, all in float64: ``Tr (S1 S2)^{1/2} = ||S1^{1/2} S2^{1/2}||_*``, the sum of the singular
values of the product of the two symmetric square roots (``(S1^{1/2} S2^{1/2})(S1^{1/2} S2^{1/2})^T
= S1^{1/2} S2 S1^{1/2}``, which is similar to ``S1 S2``). The roots come from symmetric
eigendecompositions (``numpy.linalg.eigh``) with eigenvalues below the numerical-rank threshold
``d eps max`` set to 0; the singular values from an SVD. Computing singular values rather than
square roots of eigenvalues keeps the round-off at ``eps`` instead of ``sqrt(eps)`` on the
rank-deficient covariances of sets smaller than the feature dimension (the square root of each
round-off eigenvalue, about ``1e-8`` of the scale, would otherwise add up), and unlike
``scipy.linalg.sqrtm(S1 @ S2)`` (a Schur decomposition of a non-symmetric product, with complex
round-off and failures on singular products) it is real and needs no diagonal offset. On random
covariances of dimension 2-512 (full-rank, with eigenvalues spread over 12 decades, of rank down
to 1, and sample covariances of ``d / 4`` to ``4 d`` samples) the trace term agrees with the exact
nuclear norm ``||A^T B||_*`` (``S1 = A A^T``, ``S2 = B B^T``) to 1e-14 of ``Tr S1 + Tr S2``, where
scipy's ``sqrtm`` is off by up to 2e-7 (``tests/test_layers.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import UserInputError

__all__ = ["feature_stats", "frechet_distance", "frechet_from_features"]


def feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``features [N, D]`` (float64 numpy)."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) \
        else np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise UserInputError(f"a Frechet distance needs feature sets [N >= 2, D], got shape {list(f.shape)}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root ``V diag(sqrt(w)) V^T`` of a symmetric PSD matrix, its eigenvalues
    ``w`` below the numerical-rank threshold ``d eps max(w)`` (round-off of the decomposition;
    ``numpy.linalg.matrix_rank``'s) set to 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    w = np.where(w > len(w) * np.finfo(np.float64).eps * max(float(w.max()), 0.0), w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` of two Gaussians (module docstring for
    the numerics); at least 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise UserInputError(f"feature dimensions differ: means {mu1.shape} and {mu2.shape}, "
                             f"covariances {s1.shape} and {s2.shape}")
    diff = mu1 - mu2
    tr_covmean = float(np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum())
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean), 0.0)


def frechet_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``[N, D]`` and ``[M, D]``. Zero
    for identical sets; biased upwards for small sets, so compare numbers only at equal sizes."""
    return frechet_distance(*feature_stats(a), *feature_stats(b))
