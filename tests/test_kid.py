"""KID (Bińkowski et al. 2018) on features: closed forms, torch-fidelity agreement, seeding.

Closed form used below. With k(x, y) = (x.y/d + 1)^3 = sum_{r=0..3} C(3, r) d^-r (x.y)^r and
(x.y)^r = <x^{(x)r}, y^{(x)r}> (r-fold tensor powers), the kernel's feature map is
phi(x) = (sqrt(C(3, r) d^-r) x^{(x)r})_{r=0..3}, so for independent x ~ P, y ~ Q

    MMD^2(P, Q) = ||E phi(x) - E phi(y)||^2 = sum_{r=1..3} C(3, r) d^-r ||M_r(P) - M_r(Q)||_F^2,

with M_r the r-th moment tensor E[x^{(x)r}] (r = 0 cancels). For a Gaussian N(m, S):
M_1 = m, M_2 = S + m m^T, M_3[ijk] = m_i m_j m_k + m_i S_jk + m_j S_ik + m_k S_ij (Isserlis).
KID is an unbiased estimate of this MMD^2, so on samples it must match up to sampling noise: at
2,000 samples per set its standard deviation over 20 independent draws was 0.015 (mean 0.6824 vs
the closed form 0.6822), and the test allows 0.06 (4 sd). A wrong kernel misses by far: gamma = 1
instead of 1/d gives 2.75, degree 2 gives 0.42, coef0 = 0 gives 0.008.
"""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from cl_diffusion.evaluation.kid import kid_from_features


def _u_statistic(x: torch.Tensor, y: torch.Tensor) -> float:
    """The unbiased MMD^2 of the cubic kernel over the whole sets, written out independently."""
    m, d = x.shape
    k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float((k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
                 + (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1)) - 2.0 * k_xy.sum() / m ** 2)


def _moments(m: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, ...]:
    m3 = (torch.einsum("i,j,k->ijk", m, m, m) + torch.einsum("i,jk->ijk", m, s) + torch.einsum("j,ik->ijk", m, s)
          + torch.einsum("k,ij->ijk", m, s))
    return m, s + torch.outer(m, m), m3


def _gaussian_mmd2(mp, sp, mq, sq) -> float:
    d = mp.numel()
    return sum(math.comb(3, r) / d ** r * float(((a - b) ** 2).sum())
               for r, (a, b) in enumerate(zip(_moments(mp, sp), _moments(mq, sq)), start=1))


def _gaussian(mean, cov, n: int, g: torch.Generator) -> torch.Tensor:
    return mean + torch.randn(n, mean.numel(), generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T


def test_identical_sets_give_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g, dtype=torch.float64)
    kid, std = kid_from_features(x, x.clone(), subsets=5, subset_size=300, seed=1)
    # whole sets: every subset is the set reordered, so exactly 2 (mean K - mean diag K) / (m - 1) ~ 0
    k = (x @ x.T / 8 + 1.0) ** 3
    assert kid == pytest.approx(2 * float(k.mean() - k.diagonal().mean()) / 299, rel=1e-9, abs=1e-12)
    assert abs(kid) < 0.01 * float(k.diagonal().mean()) and std == pytest.approx(0.0, abs=1e-12)
    kid_sub, _ = kid_from_features(x, x.clone(), subsets=20, subset_size=100, seed=1)
    shifted, _ = kid_from_features(x, x + 1.0, subsets=20, subset_size=100, seed=1)
    assert abs(kid_sub) < 0.05 * shifted


def test_two_gaussians_match_the_closed_form():
    mp, sp = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64), 0.05 * torch.eye(3, dtype=torch.float64)
    mq, sq = torch.tensor([0.0, 0.3, 0.0], dtype=torch.float64), torch.diag(torch.tensor([0.1, 0.05, 0.02],
                                                                                          dtype=torch.float64))
    exact = _gaussian_mmd2(mp, sp, mq, sq)
    assert exact == pytest.approx(0.6822311851851851, rel=1e-12)  # the derivation, evaluated once by hand-run
    g = torch.Generator().manual_seed(0)
    x, y = _gaussian(mp, sp, 2000, g), _gaussian(mq, sq, 2000, g)
    kid, _ = kid_from_features(x, y, subsets=1, subset_size=2000, seed=0)
    assert kid == pytest.approx(exact, abs=0.06)


def test_agrees_with_torch_fidelity_and_the_u_statistic():
    from torch_fidelity.metric_kid import kid_features_to_metric

    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64)
    y = 0.8 * torch.randn(300, 16, generator=g, dtype=torch.float64) + 0.3
    ours = kid_from_features(x, y, subsets=7, subset_size=120, seed=42)
    theirs = kid_features_to_metric(x, y, kid_subsets=7, kid_subset_size=120, rng_seed=42, verbose=False)
    assert ours == (theirs["kernel_inception_distance_mean"], theirs["kernel_inception_distance_std"])
    # equal-size sets and a subset size above them (capped): each subset is the whole set reordered
    mean, std = kid_from_features(x[:50], y[:50], subsets=3, subset_size=1000, seed=0)
    assert mean == pytest.approx(_u_statistic(x[:50], y[:50]), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-10)


def test_own_seed_and_no_global_rng_draws():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(200, 4, generator=g), torch.randn(150, 4, generator=g) + 0.2
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    a = kid_from_features(x, y, subsets=10, subset_size=50, seed=2 ** 40 + 7)  # a 63-bit seed is folded
    after = torch.get_rng_state(), np.random.get_state(), random.getstate()
    assert torch.equal(states[0], after[0]) and states[2] == after[2]
    assert all(np.array_equal(u, v) for u, v in zip(states[1], after[1]))
    assert a == kid_from_features(x, y, subsets=10, subset_size=50, seed=2 ** 40 + 7)
    assert a != kid_from_features(x, y, subsets=10, subset_size=50, seed=8)


def test_too_few_features_is_blank_and_shapes_are_checked():
    x = torch.randn(1, 4)
    assert all(math.isnan(v) for v in kid_from_features(x, torch.randn(10, 4), subsets=2, subset_size=5, seed=0))
    with pytest.raises(ValueError):
        kid_from_features(torch.randn(5, 4), torch.randn(5, 3), subsets=2, subset_size=5, seed=0)
