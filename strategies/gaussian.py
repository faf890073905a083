"""gaussian: Gaussian distillation (Masip et al. 2024): distil the teacher on pure noise
x ~ N(0, I) at a random t'. lambda 8 follows the paper's CIFAR-10 launch scripts; on fmnist-5 at the
quick profile (seed 0) 1 to 2 does better (docs/results.md, "The lambda sweep")."""
from dataclasses import dataclass

from cl_diffusion.options import redefault
from cl_diffusion.replay import DistillationStrategy
from cl_diffusion.strategy import STRATEGIES


@STRATEGIES.register("gaussian")
class GaussianDistillation(DistillationStrategy):
    """Gaussian distillation: pure noise inputs, target = teacher's eps."""

    @dataclass
    class Params(DistillationStrategy.Params):
        lambda_: float = redefault(DistillationStrategy.Params, "lambda_", 8.0)

    trajectory_share = 0.0  # cost: the input is noise; one teacher pass for the target

    def replay_pair(self, x0, x_t, t):
        x_r = self.randn_like(x0)
        t_r = self.random_t(x0.shape[0])
        return x_r, t_r, self.teacher.eps(x_r, t_r)
