"""Every random stream of a run, named, and the one hash that seeds them.

A run draws from explicit ``torch.Generator``s only, each seeded from (run seed, a stream tag below,
further integers such as the task) by :func:`derive_seed`, so any part can be re-run alone and a
resumed run draws what an uninterrupted one draws. The streams:

==================  ======================================  =================================
tag                 seeds                                   used by
==================  ======================================  =================================
``INIT``            model weights (torch's global RNG)      ``app.build_components``
``TRAIN``           timesteps, noise, flips, replay draws   the strategy's ``rng`` (checkpointed)
``ORDER``           each (task, epoch)'s batch order        ``trainer``
sample index i      x_T of evaluation sample i              :func:`per_index_noise`
``SOLVER_*``        the evaluation solver                   ``evaluation.solver`` / ``evaluator``
``CLF_*``           the evaluation classifier (clf_seed)    ``evaluation.classifier``
``BUFFER``          which images a replay buffer keeps      :mod:`cl_diffusion.buffer`
``MIXTURE``         which expert draws sample i             :mod:`cl_diffusion.mixture`
``LORA_INIT``       each task's LoRA adapter A matrices     ``strategies/lora.py``
``IMPORTANCE``      importance-estimation batches (EWC/MAS) :mod:`cl_diffusion.regularization`
``KID``             KID subsets, per task (and task j)      ``evaluator``, :mod:`.evaluation.kid`
``PR``              precision/recall equal-size subsets     ``evaluator`` (precision/recall)
==================  ======================================  =================================

The tag values are part of the results: changing one changes every run's numbers.
"""
from __future__ import annotations

import torch

# stream tags (their values are what earlier runs used: ORDER is "no tag", the task comes first)
INIT = 0
TRAIN = 1
SOLVER_INIT = 7100  # initial solver weights
SOLVER_DATA = 7101  # solver batch order, per task
SOLVER_REPLAY = 7102  # x_T of the solver's replayed samples, per task
CLF_INIT = 7000  # evaluation-classifier initial weights (seeded by clf_seed, not the run seed)
CLF_DATA = 7001  # evaluation-classifier batch order and augmentation
BUFFER = 7200  # replay-buffer selection, per task
MIXTURE = 7300  # expert of each sample of a mixture generator
LORA_INIT = 7500  # initial A matrices of each task's LoRA adapters
IMPORTANCE = 7600  # the batches that estimate a penalty's importances (EWC, MAS), per task
KID = 7400  # the evaluator's KID subset draws, per (task, routed task): a seed for torch-fidelity's RandomState
PR = 7401  # which features precision/recall keep of the larger set (equal sizes), per (task, routed task)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, tag, task, ...): FNV-1a style, stable across platforms."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def order_generator(seed: int, task: int, epoch: int) -> torch.Generator:
    """The generator of task ``task``'s batch order in ``epoch``."""
    return generator(seed, task, epoch)


def per_index_noise(seed: int, start: int, n: int, shape: tuple[int, int, int],
                    device: torch.device) -> torch.Tensor:
    """x_T ~ N(0, I) for sample indices start..start+n-1, each from its own seeded generator.

    Returns [n, C, H, W] float32 on ``device``.
    """
    out = torch.empty((n, *shape))
    for j in range(n):
        g = torch.Generator().manual_seed((seed * 1_000_003 + start + j) % (1 << 63))
        out[j] = torch.randn(shape, generator=g)
    return out.to(device)


def unit_uniform(seed: int, indices: torch.Tensor) -> torch.Tensor:
    """u_i in [0, 1) for each index i (int64 [B]), a function of (seed, i) alone: float64 [B].

    :func:`derive_seed` of neighbouring indices differ in few bits, so its value is mixed by the
    splitmix64 finaliser (Steele et al. 2014) before its top 53 bits become the fraction.
    """
    mask = (1 << 64) - 1
    out = []
    for i in indices.tolist():
        z = (derive_seed(seed, MIXTURE, int(i)) + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(((z ^ (z >> 31)) >> 11) / float(1 << 53))
    return torch.tensor(out, dtype=torch.float64)
