"""Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 2, Eq. 1-2) on given features.

Each set's manifold is the union of balls around its features, of radius the distance to the
feature's k-th nearest neighbour within the same set (itself excluded):

    f(phi, Phi) = 1 if ||phi - phi'|| <= ||phi' - NN_k(phi', Phi)|| for some phi' in Phi, else 0
    precision   = mean over generated phi_g of f(phi_g, Phi_real)    (samples on the real manifold)
    recall      = mean over real phi_r of f(phi_r, Phi_gen)          (real data covered by the samples)

Both are in [0, 1]; higher is better. Precision measures fidelity and recall coverage separately,
which FID mixes into one number.

Implementation: torch-fidelity's ``metric_prc.prc_features_to_metric`` (features_1 = generated,
features_2 = real), in its ``save_cpu_ram`` mode, which computes the distances in chunks of
``DIST_CHUNK`` rows (``torch.cdist``), so no [N, M] distance matrix is held whole. It is
deterministic. Where it does not fit as is, this module adds:

- equal set sizes (``balance_seed``): torch-fidelity takes the sets as given, but the k-NN radii
  shrink as a set grows, so 1,000 samples against 10,000 test images (or a task's 100 routed
  samples against its 2,000) would estimate the two manifolds at different densities and tilt
  precision against recall. The paper compares equally many real and generated images, so the
  larger set is first cut to the smaller one's size by a random subset from its own
  ``torch.Generator`` (no global RNG draw). Values still depend on that common size (fewer
  points, wider balls), so compare runs at equal sample counts and per-task values with
  ``n_routed`` in view;
- NaN when either set has at most k features (no k-th neighbour besides the feature itself).
"""
from __future__ import annotations

import torch

NAN = float("nan")
DIST_CHUNK = 1024  # rows per block of pairwise distances: bounds memory, does not change the result


def equal_size(f_gen: torch.Tensor, f_real: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the larger of ``f_gen [N1, D]``, ``f_real [N2, D]`` to min(N1, N2) rows, a random subset
    (kept in order) drawn by a ``torch.Generator`` seeded with ``seed``; the smaller set is unchanged."""
    n, g = min(f_gen.shape[0], f_real.shape[0]), torch.Generator().manual_seed(seed)

    def cut(f: torch.Tensor) -> torch.Tensor:
        return f if f.shape[0] == n else f[torch.randperm(f.shape[0], generator=g)[:n].sort().values]

    return cut(f_gen), cut(f_real)


def precision_recall(f_gen: torch.Tensor, f_real: torch.Tensor, k: int = 3,
                     balance_seed: int | None = None) -> tuple[float, float]:
    """(precision, recall) of generated features ``f_gen [N1, d]`` against real ``f_real [N2, d]``.

    ``k``: the neighbourhood size of the manifold estimate (paper: 3). ``balance_seed``: when given,
    the sets are first made equally large (:func:`equal_size`); None uses them as given. Returns
    ``(nan, nan)`` unless both sets have more than ``k`` features. Compared in float64 on the CPU.
    """
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    if f_gen.dim() != 2 or f_real.dim() != 2 or f_gen.shape[1] != f_real.shape[1]:
        raise ValueError(f"need features [N1, d] and [N2, d], got {tuple(f_gen.shape)} and {tuple(f_real.shape)}")
    if min(f_gen.shape[0], f_real.shape[0]) <= k:
        return NAN, NAN
    if balance_seed is not None:
        f_gen, f_real = equal_size(f_gen, f_real, balance_seed)
    out = prc_features_to_metric(f_gen.detach().cpu().to(torch.float64), f_real.detach().cpu().to(torch.float64),
                                 prc_neighborhood=k, prc_batch_size=DIST_CHUNK, save_cpu_ram=True, verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])
