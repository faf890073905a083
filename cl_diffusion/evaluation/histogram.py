"""Class histograms of generated samples, and their distance to the true label distribution.

GD (Masip et al. 2024) Sec. 5: the evaluation classifier labels each generated sample by argmax;
``p_gen`` is the histogram of those labels over all classes and ``p_true`` the label histogram of
the seen tasks' test sets. KLD = KL(p_true || p_gen) and ARD = 0.5 * sum |p_true - p_gen|
(the total-variation distance, in [0, 1]).
"""
from __future__ import annotations

import torch

KLD_EPS = 1e-8  # added to both histograms before the KL divergence, so empty classes stay finite


def class_histogram(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised histogram ``float64 [num_classes]`` of integer ``labels [N]`` (all zeros if N = 0)."""
    counts = torch.bincount(labels.to(torch.int64).cpu(), minlength=num_classes).to(torch.float64)
    if counts.numel() != num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got max {int(labels.max())}")
    total = counts.sum()
    return counts / total if total > 0 else counts


def kld(p_true: torch.Tensor, p_gen: torch.Tensor, eps: float = KLD_EPS) -> float:
    """KL(p_true || p_gen) = sum p log(p / q) with ``eps`` added to both histograms."""
    p, q = p_true.to(torch.float64) + eps, p_gen.to(torch.float64) + eps
    return float((p * (p.log() - q.log())).sum())


def ard(p_true: torch.Tensor, p_gen: torch.Tensor) -> float:
    """Absolute ratio difference 0.5 * sum |p_true - p_gen| (total variation), in [0, 1]."""
    return float(0.5 * (p_true.to(torch.float64) - p_gen.to(torch.float64)).abs().sum())
