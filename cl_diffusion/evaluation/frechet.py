"""The Fréchet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017 Eq. 6).

    d^2 = ||mu_1 - mu_2||^2 + Tr(Sigma_1 + Sigma_2 - 2 (Sigma_1 Sigma_2)^{1/2})

(Dowson & Landau 1982). :func:`frechet_distance` works from statistics with scipy's ``sqrtm``
(the pytorch-fid / torch-fidelity formulation). :func:`fid_from_features` works from the features
themselves: when a set has fewer samples than feature dimensions (per-task subsets, small runs) it
uses the exact low-rank identity

    Tr (Sigma_1 Sigma_2)^{1/2} = || A B^T ||_* / sqrt((n_1 - 1)(n_2 - 1)),

with ``A``, ``B`` the centred feature matrices and ``||.||_*`` the nuclear norm: the non-zero
eigenvalues of ``Sigma_1 Sigma_2`` are those of ``(A B^T)(A B^T)^T / ((n_1-1)(n_2-1))``. It is
faster and better conditioned than a ``d x d`` square root of a singular matrix, and equal to it.
All arithmetic is float64.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch

def _as_f64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of features ``[N, D]``, N >= 2."""
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N>=2, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), with scipy's matrix square root.

    If the product is too singular for ``sqrtm`` (non-finite result), ``1e-6 I`` is added to both
    covariances, as in pytorch-fid. Imaginary parts from round-off are dropped.
    """
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    diff = mu1 - mu2
    with warnings.catch_warnings():  # "matrix is singular": expected for dead features; checked below
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    tr_covmean = float(np.trace(covmean).real)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _trace_sqrt_product_lowrank(a: np.ndarray, b: np.ndarray) -> float:
    """Tr (Sigma_a Sigma_b)^{1/2} from centred features a [n1, D], b [n2, D] (see module docstring)."""
    g = a @ b.T  # [n1, n2]
    k = g @ g.T if g.shape[0] <= g.shape[1] else g.T @ g  # the smaller Gram matrix, PSD
    eig = np.clip(np.linalg.eigvalsh(k), 0.0, None)
    return float(np.sqrt(eig).sum() / math.sqrt((a.shape[0] - 1) * (b.shape[0] - 1)))


def fid_from_features(f1: torch.Tensor | np.ndarray, f2: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features ``f1 [N1, D]`` and ``f2 [N2, D]``.

    Returns NaN if either set has fewer than 2 samples (the covariance is undefined).
    """
    a, b = _as_f64(f1), _as_f64(f2)
    if a.shape[0] < 2 or b.shape[0] < 2:
        return float("nan")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) > a.shape[1]:  # full-rank covariances: the d x d square root
        return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    a, b = a - mu1, b - mu2
    tr1 = float((a * a).sum() / (a.shape[0] - 1))  # Tr Sigma_1
    tr2 = float((b * b).sum() / (b.shape[0] - 1))
    diff = mu1 - mu2
    return float(diff @ diff + tr1 + tr2 - 2.0 * _trace_sqrt_product_lowrank(a, b))
