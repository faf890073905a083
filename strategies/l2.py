"""l2: a plain L2 penalty to the previous task's weights, the floor of the regularisation baselines.

Omega = 1 for every parameter and only the latest anchor is kept (:mod:`cl_diffusion.regularization`):

    L = L_data + (lambda/2) ||theta - theta*_{k-1}||^2        (tasks after the first; L = L_data before)

theta*_{k-1}: the trainable parameters at the end of the previous task. Omega is stored as one 0-dim
tensor per parameter, so ``params_stored`` counts the anchors, not a copy of ones.

Default lambda 1e-2: the penalty of finetune's drift over one task of fmnist-5 (quick profile) equals
the data loss there (:mod:`cl_diffusion.regularization`); the tuned value is in docs/results.md.
"""
from dataclasses import dataclass

import torch

from cl_diffusion.options import redefault
from cl_diffusion.regularization import PenaltyStrategy, Term
from cl_diffusion.strategy import STRATEGIES, TaskContext


@STRATEGIES.register("l2")
class L2(PenaltyStrategy):
    """Omega = 1, anchored at the previous task's weights."""

    @dataclass
    class Params(PenaltyStrategy.Params):
        lambda_: float = redefault(PenaltyStrategy.Params, "lambda_", 1e-2)

    def importance(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        return {name: torch.ones((), device=p.device) for name, p in self.named_trainable(ctx)}

    def consolidate(self, new: Term) -> list[Term]:
        return [new]
