"""Seeds of the evaluator's random streams: each derives from (run seed, stream tag, task, ...) only.

Every random draw in ``Evaluator.after_task(k)`` comes from an explicit ``torch.Generator`` seeded
here, so re-running ``after_task(k)`` after a resume gives identical numbers. (Sample i's x_T is
seeded by (run seed, i) alone: :func:`cl_diffusion.sampling.per_index_noise`.)
"""
from __future__ import annotations

import torch

# stream tags, one per independent random stream
SOLVER_INIT = 7100  # initial solver weights
SOLVER_DATA = 7101  # solver batch order, per task
SOLVER_REPLAY = 7102  # x_T of the solver's replayed samples, per task
CLF_INIT = 7000  # evaluation-classifier initial weights (seeded by clf_seed, not the run seed)
CLF_DATA = 7001  # evaluation-classifier batch order and augmentation


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers; the same hash as the trainer's, so all seeds share one scheme."""
    from ..trainer import derived_seed

    return derived_seed(*parts)


def generator(*parts: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))
