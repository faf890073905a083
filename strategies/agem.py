"""agem: Averaged Gradient Episodic Memory (Chaudhry et al. 2019, "Efficient lifelong learning with
A-GEM", ICLR, Eq. 11) for diffusion models.

Each iteration the gradient g of the batch's eps-MSE is compared with the reference gradient g_ref
of the eps-MSE on B images of a class-balanced buffer of real images (:mod:`cl_diffusion.buffer`):
when they conflict (g . g_ref < 0), g is projected to g - (g . g_ref / g_ref . g_ref) g_ref, so the
step does not increase the buffer's loss to first order. That costs one extra forward and backward
pass per iteration from the second task on.
"""
import torch

from cl_diffusion.buffer import BufferStrategy
from cl_diffusion.diffusion import mse
from cl_diffusion.strategy import STRATEGIES, TaskContext


def project(g: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """A-GEM Eq. 11: g if g . g_ref >= 0, else g - (g . g_ref / g_ref . g_ref) g_ref. Flat [P] tensors."""
    dot = torch.dot(g, g_ref)
    if dot >= 0:
        return g
    return g - (dot / torch.dot(g_ref, g_ref).clamp_min(1e-30)) * g_ref


@STRATEGIES.register("agem")
class AGEM(BufferStrategy):
    """A-GEM: project the gradient when it conflicts with the gradient on a buffer batch."""

    @classmethod
    def replay_images_per_image(cls, params) -> float:
        return 1.0  # the reference gradient: a forward and backward of B buffer images

    def after_backward(self, ctx: TaskContext) -> None:
        if len(self.buffer) == 0:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        g = _flat_grad(params)
        for p in params:
            p.grad = None
        x_t, t, eps = self.noise_batch(self.replay_batch(self.cfg.run.batch_size, ctx).x0)
        with self.execution.autocast():
            ref = mse(ctx.student(x_t, t), eps)
        ref.backward()
        self.costs_.extra_forwards += 1
        self.costs_.extra_backwards += 1
        g = project(g, _flat_grad(params))
        for p, piece in zip(params, g.split([p.numel() for p in params])):
            p.grad = piece.view_as(p).to(p.dtype)


def _flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The gradients of ``params`` as one flat fp32 vector [P] (zeros where a gradient is None)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
