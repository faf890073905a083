"""gd: generative distillation, the paper's method (Masip et al. 2024, Sec. 4).

Replay input: the teacher's DDIM sample x0~ noised to a random t' (as in gr); target: the
teacher's own prediction eps_theta'(input, t') instead of the added noise.
lambda 0.75 follows the paper's launch scripts (CIFAR-10; FMNIST at 10/100 teacher steps); at 2
teacher steps on fmnist-5, quick profile (seed 0), it is the best of the sweep 0.25 to 2 in FID_clf
and KLD (docs/results.md, "The lambda sweep").
"""
from dataclasses import dataclass

from cl_diffusion.options import redefault
from cl_diffusion.replay import DistillationStrategy
from cl_diffusion.strategy import STRATEGIES


@STRATEGIES.register("gd")
class GenerativeDistillation(DistillationStrategy):
    """Generative distillation (the paper's method): noised teacher samples, target = teacher's eps."""

    @dataclass
    class Params(DistillationStrategy.Params):
        lambda_: float = redefault(DistillationStrategy.Params, "lambda_", 0.75)

    def replay_pair(self, x0, x_t, t):
        x_r, t_r, _ = self.noised_teacher_samples(x0)
        return x_r, t_r, self.teacher.eps(x_r, t_r)
