"""lwf: LwF-like distillation (Li & Hoiem 2017) as in Masip et al. (2024): no generated input -
distil the teacher on the current batch's own noisy x_t at its own t. lambda 1.25 follows the paper's
CIFAR-10 launch scripts; on fmnist-5 at the quick profile (seed 0) 0.25 does better (docs/results.md, "The
lambda sweep")."""
from dataclasses import dataclass

from cl_diffusion.options import redefault
from cl_diffusion.replay import DistillationStrategy
from cl_diffusion.strategy import STRATEGIES


@STRATEGIES.register("lwf")
class LwFDistillation(DistillationStrategy):
    """LwF-like distillation: current batch's x_t, target = teacher's eps."""

    @dataclass
    class Params(DistillationStrategy.Params):
        lambda_: float = redefault(DistillationStrategy.Params, "lambda_", 1.25)

    trajectory_share = 0.0  # cost: the input is the current batch; one teacher pass for the target

    def replay_pair(self, x0, x_t, t):
        return x_t, t, self.teacher.eps(x_t, t)
