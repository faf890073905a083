"""er: experience replay (Chaudhry et al. 2019, "On tiny episodic memories in continual learning";
the ER baseline of CLoG and continual-ddpm) for diffusion models.

A class-balanced buffer of ``buffer_size`` real training images (:mod:`cl_diffusion.buffer`) is
replayed as noised data under the same weighting as the paper's replay strategies: with n tasks
seen, L = (1/n) L_data(current batch) + (1 - 1/n) L_data(B buffer images), both eps-MSEs at fresh
t ~ U{0..T-1} and eps ~ N(0, I); L = L_data on the first task, while the buffer is empty.
"""
import torch

from cl_diffusion.buffer import BufferStrategy
from cl_diffusion.diffusion import mse
from cl_diffusion.strategy import STRATEGIES, Batch, TaskContext


@STRATEGIES.register("er")
class ExperienceReplay(BufferStrategy):
    """Experience replay: real buffer images, noised, replayed beside each batch (1/n weighting)."""

    @classmethod
    def replay_images_per_image(cls, params) -> float:
        return 1.0  # B buffer images beside the B current ones

    def loss(self, batch: Batch, ctx: TaskContext) -> tuple[torch.Tensor, dict[str, float]]:
        if len(self.buffer) == 0:
            return super().loss(batch, ctx)
        B = batch.x0.shape[0]
        x_t, t, eps = self.noise_batch(torch.cat([batch.x0, self.replay_batch(B, ctx).x0]))
        out = ctx.student(x_t, t)  # current and replayed images in one forward pass
        l_data, l_replay = mse(out[:B], eps[:B]), mse(out[B:], eps[B:])
        n = ctx.n_seen
        loss = l_data / n + (1.0 - 1.0 / n) * l_replay
        return loss, {"loss_data": float(l_data.detach()), "loss_replay": float(l_replay.detach())}
