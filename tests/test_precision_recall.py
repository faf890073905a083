"""Improved precision/recall (Kynkäänniemi et al. 2019) on toy manifolds with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from cl_diffusion.evaluation.precision_recall import precision_recall


def _cluster(center: float, n: int, seed: int, d: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return center + torch.randn(n, d, generator=g, dtype=torch.float64)


def test_identical_sets_give_one_and_one():
    x = _cluster(0.0, 200, 0)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_disjoint_far_clusters_give_zero_and_zero():
    assert precision_recall(_cluster(0.0, 150, 1), _cluster(100.0, 120, 2), k=3) == (0.0, 0.0)


def test_samples_covering_one_of_two_real_modes():
    a, b = _cluster(0.0, 90, 3), _cluster(100.0, 60, 4)
    precision, recall = precision_recall(a.clone(), torch.cat([a, b]), k=3)
    assert precision == 1.0  # every sample is a real point
    assert recall == pytest.approx(90 / 150)  # mode b (60 of 150 real points) is missed


def test_hand_computed_radii_in_one_dimension():
    # k = 1. Real {0, 1, 2, 10}: radii (distance to the nearest other real point) 1, 1, 1, 8.
    # Samples {0.5, 30, 31}: radii 29.5, 1, 1.
    # precision: 0.5 is within 1 of 0 (yes); 30 and 31 are 20 and 21 from 10 (> 8): 1/3.
    # recall: 0, 1, 2 and 10 are all within 29.5 of the sample 0.5: 1.
    real = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    gen = torch.tensor([[0.5], [30.0], [31.0]], dtype=torch.float64)
    assert precision_recall(gen, real, k=1) == (pytest.approx(1 / 3), 1.0)
    # k = 2 (second-nearest other point): sample radii 30.5, 29.5, 30.5 and real radii 2, 1, 2, 9;
    # precision stays 1/3 (30 is 20 > 9 from 10), recall stays 1 (all within 30.5 of 0.5).
    assert precision_recall(gen, real, k=2) == (pytest.approx(1 / 3), 1.0)


def test_too_few_points_for_k_is_blank():
    assert all(math.isnan(v) for v in precision_recall(torch.randn(3, 2), torch.randn(50, 2), k=3))
    assert not math.isnan(precision_recall(torch.randn(4, 2), torch.randn(50, 2), k=3)[0])


def test_equal_size_subset_is_seeded_and_leaves_global_rngs_alone():
    import random

    import numpy as np

    from cl_diffusion.evaluation.precision_recall import equal_size

    gen, real = _cluster(0.0, 40, 5), _cluster(0.5, 300, 6)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    pr = precision_recall(gen, real, k=3, balance_seed=11)
    assert torch.equal(states[0], torch.get_rng_state()) and random.getstate() == states[2]
    assert np.array_equal(states[1], np.random.get_state()[1])
    g_cut, r_cut = equal_size(gen, real, 11)
    assert g_cut is gen and r_cut.shape == (40, 8)  # only the larger set is cut
    assert all(any(torch.equal(row, r) for r in real) for row in r_cut)  # a subset of the real rows
    assert pr == precision_recall(g_cut, r_cut, k=3)  # = torch-fidelity on the equal-size sets
    assert pr == precision_recall(gen, real, k=3, balance_seed=11)
    assert pr != precision_recall(gen, real, k=3)  # as given, 300 real points make a denser manifold
