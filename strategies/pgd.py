"""pgd: partial-generation distillation (Masip et al. 2024): the teacher's DDIM trajectory from
x_T is stopped at a random t' and its intermediate x_t' is the input; the target is
eps_theta'(x_t', t'). Cheaper than gd on average, since trajectories stop early."""
from dataclasses import dataclass

from cl_diffusion.options import redefault
from cl_diffusion.replay import DistillationStrategy
from cl_diffusion.strategy import STRATEGIES


@STRATEGIES.register("pgd")
class PartialGenerationDistillation(DistillationStrategy):
    """Partial-generation distillation: teacher trajectory stopped at t', target = teacher's eps."""

    @dataclass
    class Params(DistillationStrategy.Params):
        lambda_: float = redefault(DistillationStrategy.Params, "lambda_", 0.75)

    trajectory_share, other_teacher_forwards = 0.5, 2.0  # cost: half a trajectory, its final jump, the target

    def replay_pair(self, x0, x_t, t):
        t_r = self.random_t(x0.shape[0])
        x_r = self.teacher.sample(self.randn_like(x0), stop_at=t_r)
        return x_r, t_r, self.teacher.eps(x_r, t_r)
