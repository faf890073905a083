"""Kernel Inception Distance (KID; Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 4) on features.

KID is the unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012, Lemma 6)

    MMD^2_u = 1/(m(m-1)) sum_{i != i'} k(x_i, x_i') + 1/(m(m-1)) sum_{j != j'} k(y_j, y_j')
              - 2/m^2 sum_{i, j} k(x_i, y_j)

with the cubic polynomial kernel k(x, y) = (x . y / d + 1)^3 on d-dimensional features, averaged
over ``subsets`` random subsets of ``m`` features drawn without replacement from each set; its
standard deviation over the subsets (population std, ddof 0) is reported beside it. Unlike FID it
is unbiased in the sample count, so it is comparable between the CPU profiles' 1,000 samples and
the paper's 10,000. Values slightly below 0 are valid (similar distributions).

Implementation: torch-fidelity's ``metric_kid.kid_features_to_metric``, which takes two feature
tensors ``[N, d]``, uses exactly this kernel (degree 3, gamma 1/d, coef0 1) and estimator, and
draws its subsets from its own ``numpy.random.RandomState(rng_seed)``, so the global torch /
numpy / python RNG states are left alone. Where it does not fit as is, this module adds:

- the subset size is capped at the smaller set (torch-fidelity refuses ``m > N`` with an error;
  the evaluator's per-task sets can be small); below 2 features in either set KID is NaN (the
  ``m(m-1)`` terms are undefined);
- the seed comes from :mod:`cl_diffusion.seeding` (run seed, task, ...), folded to the 32 bits that
  ``RandomState`` accepts.

Features are used in float64 (torch-fidelity converts them with ``.numpy()``, keeping the dtype).
Cost: 3 kernel matrices of m x m per subset in numpy; at the defaults (100 subsets of 1,000) about
10-25 s per evaluation on one CPU thread for the 128-d classifier features, a few times more for
Inception's 2048-d ones. ``kid_subsets`` trades that time for the precision of the mean.
"""
from __future__ import annotations

import torch

NAN = float("nan")
SEED_BITS = 32  # numpy.random.RandomState accepts seeds in [0, 2**32)


def kid_from_features(f_gen: torch.Tensor, f_real: torch.Tensor, *, subsets: int, subset_size: int,
                      seed: int) -> tuple[float, float]:
    """(KID, its std over subsets) between features ``f_gen [N1, d]`` and ``f_real [N2, d]``.

    ``subset_size`` is capped at ``min(N1, N2)``; ``seed`` (any non-negative int) seeds the subset
    draws only. Returns ``(nan, nan)`` when either set has fewer than 2 features.
    """
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    if f_gen.dim() != 2 or f_real.dim() != 2 or f_gen.shape[1] != f_real.shape[1]:
        raise ValueError(f"need features [N1, d] and [N2, d], got {tuple(f_gen.shape)} and {tuple(f_real.shape)}")
    m = min(subset_size, f_gen.shape[0], f_real.shape[0])
    if m < 2:
        return NAN, NAN
    out = kid_features_to_metric(f_gen.detach().cpu().to(torch.float64), f_real.detach().cpu().to(torch.float64),
                                 kid_subsets=subsets, kid_subset_size=m, rng_seed=seed % (1 << SEED_BITS),
                                 verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])

