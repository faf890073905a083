"""mas: Memory Aware Synapses (Aljundi et al. 2018, ECCV, Sec. 4) for diffusion models.

At the end of task k, over ``importance_batches`` estimation batches b of task k's images
(x_t [B, C, H, W] at fresh t, eps; :meth:`PenaltyStrategy.estimation_batches`):

    Omega_k = (1/n) sum_b | d/dtheta (1/B) sum_{s in b} ||eps_theta(x_t^s, t_s)||_2^2 |

(n = 16 by default, as ewc's Fisher): the squared L2 norm of each sample's whole output [C, H, W]
(summed over C*H*W, Aljundi et al.'s l2^2 of the output), averaged over the batch's B samples, no
division by C*H*W (Avalanche's ``norm(out, dim=1)`` on an image output would sum over channels
only and average over pixels, 1/(H*W) of this). MAS needs no labels or targets: it
measures how sensitive the learned function itself is to each parameter. Importances are summed
over tasks, as the paper accumulates them (Avalanche's plugin averages them instead), and the
penalty is anchored at the latest task: (lambda/2) sum_i Omega_i (theta_i - theta*_i)^2 (the paper's
lambda is half of this one).

As with EWC, taking |.| of a batch-mean gradient rather than the mean of per-sample |.| (the paper)
saves B backward passes per batch and can only shrink Omega (|mean| <= mean |.|), most where samples
disagree in sign. Note that the output norm of an eps-network stays near sqrt(C*H*W) (it predicts
unit-variance noise), so Omega measures how the parameters move the output along itself.

Default lambda 2e-2: the penalty of finetune's drift over one task of fmnist-5 (quick profile)
equals the data loss there (:mod:`cl_diffusion.regularization`); the tuned value is in docs/results.md.
"""
from dataclasses import dataclass

import torch

from cl_diffusion.options import opt, redefault
from cl_diffusion.regularization import PenaltyStrategy
from cl_diffusion.strategy import STRATEGIES, TaskContext


def output_sq_norm(out: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """(1/B) sum_s ||out_s||_2^2 over the C*H*W entries of each sample: out [B, C, H, W] -> scalar
    (``eps`` is unused: MAS has no target)."""
    return out.float().pow(2).flatten(1).sum(1).mean()


@STRATEGIES.register("mas")
class MAS(PenaltyStrategy):
    """Omega = mean |gradient of the output's squared norm|, summed over tasks."""

    @dataclass
    class Params(PenaltyStrategy.Params):
        lambda_: float = redefault(PenaltyStrategy.Params, "lambda_", 2e-2)
        importance_batches: int = opt(16, "batches of B task images that estimate Omega at each task's end "
                                          "(one forward and backward each)", min=1)

    def importance(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        return self.gradient_average(ctx, self.params.importance_batches, output_sq_norm, torch.abs)
