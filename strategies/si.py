"""si: Synaptic Intelligence (Zenke et al. 2017, ICML, Sec. 3, Eq. 4-5) for diffusion models.

During task k every optimizer step n adds its contribution to the path integral of each parameter:

    omega_i += -g_i(n) * (theta_i(n+1) - theta_i(n))

g: the gradient of the unregularised loss L_data at theta(n), read in ``after_backward`` (the
gradient there is that of L_data + penalty; the penalty's own lambda Omega (theta - theta*) is taken
off, as the original code, ganguli-lab/pathint, uses ``unreg_grads``), before gradient clipping;
theta(n+1) - theta(n): the step the optimizer took, read in ``after_step``. So omega_i is each
parameter's share of the drop of L_data along the path. At the task's end

    Omega_i <- max(0, Omega_i + omega_i / (Delta_i^2 + xi)),   Delta_i = theta_i(end of k) - theta_i(start of k)

(Eq. 5; the max(0, .) is the original code's, it keeps the penalty bounded below), omega is reset,
and later tasks add (lambda/2) sum_i Omega_i (theta_i - theta*_{k,i})^2, anchored at the latest
task (the paper's c is lambda/2).

xi damps parameters that hardly moved. pathint used 0.1 (MLP, permuted MNIST) and 1e-3 (conv net,
split CIFAR), for runs of 20 to 60 epochs; here weights move much less: over task 1 of fmnist-5 at the
quick profile (600 Adam steps at lr 2e-4) the median Delta^2 is 1.3e-5 and 99% are below 5e-4, so
xi = 1e-3 would reduce Omega to omega / xi. The default xi = 1e-5, about the median Delta^2, damps
the half of the parameters that moved least and lets Delta weigh the others.

Memory: during a task four copies of the trainable parameters (theta at the task's start, omega, and
g and theta(n) between ``after_backward`` and ``after_step``); at a task's end only the term is kept.
Default lambda 0.05: the penalty of finetune's drift over one task of fmnist-5 (quick profile)
equals the data loss there, at xi = 1e-5 (:mod:`cl_diffusion.regularization`); the tuned value is in
docs/results.md.
"""
from dataclasses import dataclass
from typing import Mapping

import torch

from cl_diffusion.options import opt, redefault
from cl_diffusion.regularization import PenaltyStrategy, Term
from cl_diffusion.strategy import STRATEGIES, TaskContext


@STRATEGIES.register("si")
class SynapticIntelligence(PenaltyStrategy):
    """Omega from the path integral of each parameter's loss decrease, summed over tasks."""

    @dataclass
    class Params(PenaltyStrategy.Params):
        lambda_: float = redefault(PenaltyStrategy.Params, "lambda_", 0.05)
        xi: float = opt(1e-5, "damping xi of Omega = omega / (Delta^2 + xi), in squared parameter units", min=0.0)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.start: dict[str, torch.Tensor] = {}  # theta at the start of the task
        self.omega: dict[str, torch.Tensor] = {}  # the running path integral
        self._g: dict[str, torch.Tensor] = {}  # g(n), between after_backward and after_step
        self._before: dict[str, torch.Tensor] = {}  # theta(n), idem

    def begin_task(self, ctx: TaskContext) -> None:
        super().begin_task(ctx)
        self.start = {name: p.detach().clone() for name, p in self.named_trainable(ctx)}
        self.omega = {name: torch.zeros_like(p) for name, p in self.start.items()}

    def after_backward(self, ctx: TaskContext) -> None:
        with torch.no_grad():
            for name, p in self.named_trainable(ctx):
                g = p.grad if p.grad is not None else torch.zeros_like(p)
                self._g[name] = g - self.penalty_gradient(name, p) if self.terms else g.clone()
                self._before[name] = p.detach().clone()

    def after_step(self, ctx: TaskContext) -> None:
        with torch.no_grad():
            for name, p in self.named_trainable(ctx):
                self.omega[name] -= self._g[name] * (p - self._before[name])
        self._g, self._before = {}, {}

    def importance(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        out = {}
        for name, p in self.named_trainable(ctx):
            denom = (p.detach() - self.start[name]) ** 2 + self.params.xi
            out[name] = torch.where(denom > 0, self.omega[name] / denom, 0.0)  # xi = 0: unmoved -> 0
        return out

    def consolidate(self, new: Term) -> list[Term]:
        (term,) = self.merged(new, decay=1.0)
        return [Term(term.anchor, {n: w.clamp_min(0.0) for n, w in term.omega.items()})]

    def end_task(self, ctx: TaskContext) -> None:
        super().end_task(ctx)
        self.start, self.omega = {}, {}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The base's, plus the task's ``si.start.{name}`` and ``si.omega.{name}`` while it trains."""
        out = super().state_tensors()
        out.update({f"si.start.{n}": v for n, v in self.start.items()})
        out.update({f"si.omega.{n}": v for n, v in self.omega.items()})
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        super().load_state_tensors(tensors, ctx)
        for kind in ("start", "omega"):
            prefix = f"si.{kind}."
            setattr(self, kind, {k[len(prefix):]: v.to(self.device) for k, v in tensors.items()
                                 if k.startswith(prefix)})
