"""gr: generative replay (Shin et al. 2017) for diffusion models, as in Masip et al. (2024), Sec. 4.

Replay input: the teacher's DDIM sample x0~ noised to a random t'; target: the noise eps' added.
"""
from dataclasses import dataclass

from cl_diffusion.options import redefault
from cl_diffusion.replay import DistillationStrategy
from cl_diffusion.strategy import STRATEGIES


@STRATEGIES.register("gr")
class GenerativeReplay(DistillationStrategy):
    """Generative replay: noised teacher samples, target = the noise added."""

    @dataclass
    class Params(DistillationStrategy.Params):
        lambda_: float = redefault(DistillationStrategy.Params, "lambda_", 1.0)

    other_teacher_forwards = 0.0  # cost: the target is the noise added, no target pass

    def replay_pair(self, x0, x_t, t):
        x_r, t_r, eps_r = self.noised_teacher_samples(x0)
        return x_r, t_r, eps_r
