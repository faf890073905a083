"""ewc: Elastic Weight Consolidation (Kirkpatrick et al. 2017, PNAS, Eq. 3) for diffusion models, with
the online variant of Schwarz et al. (2018, ICML, "Progress & Compress": online EWC).

At the end of task k, over ``fisher_batches`` estimation batches b (B images of task k, fresh t and
eps; :meth:`PenaltyStrategy.estimation_batches`), with g_b the gradient of the batch's eps-MSE:

    F_k = (1/n) sum_b g_b^2                                            (elementwise, per parameter)

and the loss of later tasks adds

    separate:  (lambda/2) sum_{j<k} sum_i F_{j,i} (theta_i - theta*_{j,i})^2     (Kirkpatrick et al.)
    online:    (lambda/2) sum_i F~_i (theta_i - theta*_{k-1,i})^2,  F~ <- gamma F~ + F_k  (Schwarz et al.)

``separate`` keeps one anchor and Fisher per past task; ``online`` one running Fisher anchored at the
latest task. gamma = 1 (default) is the recursive Laplace approximation (Huszar 2018); gamma < 1
forgets old Fishers gradually, as in Progress & Compress. ``fisher_batches`` 16: 1,024 images at the
quick profile (B 64), for 2.7% of the passes of a 600-iteration task.

Which Fisher: the batch ("empirical") Fisher. The paper's diagonal Fisher is the mean over single
samples of the squared per-sample gradient, with the target drawn from the model (for the eps-MSE,
a Gaussian likelihood, that is E[J^T J] / sigma^2, J = d eps_theta / d theta). Here the target is the
drawn noise eps itself and the square is taken of the batch-mean gradient, because that costs one
forward and backward per batch (as one training step) instead of B. What that changes: E[g_b^2] =
(E g)^2 + Var(g)/B, so near a minimum (E g ~ 0) F is about 1/B of the per-sample empirical Fisher
(absorbed by lambda), while parameters whose mean gradient has not vanished are weighted up relative
to the others; using the real eps as target weights each timestep by its residual variance, which
is largest at small t (where eps is hardest to tell from x0), so F over-weights low-noise timesteps
and under-weights high-noise ones against the model Fisher. Avalanche's EWC plugin uses the same
batch Fisher.

Default lambda 5e4: the penalty of finetune's drift over one task of fmnist-5 (quick profile) equals
the data loss there (:mod:`cl_diffusion.regularization`); the tuned value is in docs/results.md. It is
large because F is small: for the eps-MSE averaged over D = C*H*W pixels, g g^T ~ (2 L / D) H per
sample near a minimum (H the Hessian, L the loss), so the Laplace weighting lambda F ~ H would need
lambda ~ B D / (2 L), 1.7e5 at that profile (B 64, D 256, L 0.047).
"""
from dataclasses import dataclass

import torch

from cl_diffusion.diffusion import mse
from cl_diffusion.errors import UserError
from cl_diffusion.options import opt, redefault
from cl_diffusion.regularization import PenaltyStrategy, Term
from cl_diffusion.strategy import STRATEGIES, TaskContext


@STRATEGIES.register("ewc")
class EWC(PenaltyStrategy):
    """Diagonal batch Fisher of the eps-MSE; one term per task (separate) or one running term (online)."""

    @dataclass
    class Params(PenaltyStrategy.Params):
        lambda_: float = redefault(PenaltyStrategy.Params, "lambda_", 5e4)
        ewc_mode: str = opt("separate", "'separate': one penalty per past task (Kirkpatrick et al. 2017); "
                                        "'online': one running Fisher at the latest anchor (Schwarz et al. 2018)",
                            choices=("separate", "online"))
        gamma: float = opt(1.0, "online mode's Fisher decay: F <- gamma F + F_k", min=0.0, min_exclusive=True,
                           max=1.0)
        fisher_batches: int = opt(16, "batches of B task images that estimate the Fisher at each task's end "
                                      "(one forward and backward each)", min=1)

        def check(self) -> None:
            if self.ewc_mode == "separate" and self.gamma != 1.0:
                raise UserError(f"bad value {self.gamma!r} for gamma: it applies to ewc_mode=online only")

    def importance(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        return self.gradient_average(ctx, self.params.fisher_batches, mse, torch.square)

    def consolidate(self, new: Term) -> list[Term]:
        if self.params.ewc_mode == "separate":
            return [*self.terms, new]
        return self.merged(new, decay=self.params.gamma)
