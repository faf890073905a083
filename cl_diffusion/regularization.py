"""A quadratic penalty to anchored weights: the base of the regularisation baselines l2, ewc, si, mas.

At the end of each task k the strategy stores the anchor theta*_k (the trainable parameters as they
are then) and an importance Omega_k >= 0 per parameter, and merges (theta*_k, Omega_k) into its list
of penalty terms (:meth:`PenaltyStrategy.consolidate`). From the second task on the loss is

    L = L_data + (lambda / 2) * sum_j sum_i Omega_{j,i} (theta_i - theta*_{j,i})^2,

L_data the eps-MSE of the batch (DDPM Eq. 14, :meth:`Strategy.loss`), j over the stored terms and i
over the parameters' entries. On the first task L = L_data. A subclass says only how Omega_k is
estimated (:meth:`PenaltyStrategy.importance`) and, if not by the default, how terms merge:

======  ===============================================  ===========================  ==========================
name    Omega_k                                          terms kept                   paper
======  ===============================================  ===========================  ==========================
``l2``  1                                                the latest anchor only       the regularisation floor
``ewc`` diagonal batch Fisher of the eps-MSE             one per task, or one online  Kirkpatrick et al. 2017;
                                                                                      Schwarz et al. 2018
``si``  path integral of -g dtheta / (Delta^2 + xi)      one: Omegas summed           Zenke et al. 2017
``mas`` mean |d ||eps_theta(x_t, t)||^2 / dtheta|        one: Omegas summed           Aljundi et al. 2018
======  ===============================================  ===========================  ==========================

The factor lambda/2 follows EWC (Kirkpatrick et al. 2017, Eq. 3); SI (Zenke et al. 2017, Eq. 4)
and MAS (Aljundi et al. 2018, Sec. 4) write the same penalty as c * sum Omega (...)^2 and
lambda * sum Omega (...)^2, so their constants are half of this suite's lambda.

Default lambdas are starting points for the sweep on fmnist-5, whose tuned values are written in
``docs/results.md``. Each is the lambda at which the penalty of unregularised drift equals the data
loss, measured once on fmnist-5 at the quick profile (seed 0): train task 1, estimate Omega, train
task 2 with lambda = 0 (finetune's drift Delta = theta - theta*_1), then lambda = L / ((1/2) sum
Omega Delta^2) with L = 0.047 the eps-MSE on task 2 at its end; rounded to 1, 2 or 5 x 10^n:

====  =================================  ===================  =======
name  (1/2) sum Omega Delta^2            L / that             default
====  =================================  ===================  =======
l2    5.57                               8.5e-3               1e-2
ewc   1.18e-6 (F from 32 batches)        4.0e4                5e4
si    0.681 (xi = 1e-5)                  0.069                0.05
mas   2.41 (Omega from 32 batches)       0.020                2e-2
====  =================================  ===================  =======

Over that drift the old task's own eps-MSE rose only from 0.0553 to 0.0580, so the lambdas at which
the penalty equals that rise are 17 times smaller: forgetting in a diffusion model shows in what it
samples more than in its loss.

Anchors and importances are checkpointed (:meth:`state_tensors`) and counted in ``params_stored``;
the evaluation solver keeps the base default, generative replay from the previous generator.

Estimation batches (EWC, MAS) are drawn from a generator of their own,
``seeding.generator(seed, IMPORTANCE, k)``, not from the run's training generator, so estimating
importances changes no draw of the training that follows and an estimate can be recomputed alone.
Each batch is B = batch_size images of task k (random, without replacement within the batch, flipped
at random if the stream flips), fresh t ~ U{0..T-1} and eps ~ N(0, I), drawn on the CPU and moved
to the device; the network runs in eval mode (the function that is sampled from) through
``Strategy.model``, not the DistributedDataParallel wrapper, so every rank computes the same values.
Each batch costs one forward and one backward, counted in ``extra_forwards`` / ``extra_backwards``.

Why not Avalanche's plugins (avalanche-lib 0.6.0, ``avalanche/training/plugins/{ewc,
synaptic_intelligence,mas}.py``): they are written against Avalanche's training template, not a
loss function. All three add their penalty to ``strategy.loss`` from ``before_backward`` (mutating
the strategy from outside) and read ``strategy.clock.train_exp_counter``; EWC and MAS estimate
importance over ``strategy.experience.dataset`` with a ``DataLoader`` of ``strategy.train_mb_size``
and call ``avalanche_forward(model, x, task_labels)``, which is ``model(x)`` for a plain module: one
input, where an eps-network takes (x_t, t) and needs fresh t and eps per batch; EWC's loss is
``strategy._criterion(out, y)`` with the class labels y as targets, where the diffusion target is
the drawn noise. Using them would mean faking a template object around the trainer. They also
differ from the papers in ways this suite does not want: the SI plugin reads the regularised
gradient after the step (the original code, ganguli-lab/pathint, uses the unregularised one),
copies every parameter to the CPU every iteration and clips the importance at 1e-3; the MAS plugin
averages importances over tasks (alpha 0.5, after FACIL) where Aljundi et al. sum them; EWC and MAS
weight the penalty by lambda, not lambda/2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

from .data import random_hflip, to_model_range
from .diffusion import q_sample, sample_timesteps
from .options import opt
from .seeding import IMPORTANCE, generator
from .strategy import Batch, Strategy, TaskContext, n_params


#: An estimation objective: (eps_theta(x_t, t) [B, C, H, W], eps [B, C, H, W]) -> scalar.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Term:
    """One penalty term: anchor theta* and importance Omega, keyed by parameter name.

    ``anchor[name]`` has the parameter's shape; ``omega[name]`` too, or is a 0-dim tensor broadcast
    over it (l2's Omega = 1).
    """

    anchor: dict[str, torch.Tensor]
    omega: dict[str, torch.Tensor]

    def numel(self) -> int:
        return sum(t.numel() for t in [*self.anchor.values(), *self.omega.values()])


class PenaltyStrategy(Strategy):
    """Eps-MSE plus (lambda/2) sum_j sum_i Omega_{j,i} (theta_i - theta*_{j,i})^2 from the second task
    on. Subclasses implement :meth:`importance`, and :meth:`consolidate` if they merge otherwise."""

    @dataclass
    class Params:
        lambda_: float = opt(1.0, "weight lambda of the penalty (lambda/2) sum Omega (theta - theta*)^2",
                             min=0.0, key="lambda")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.terms: list[Term] = []

    # ---- what subclasses write -------------------------------------------------------------------
    def importance(self, ctx: TaskContext) -> dict[str, torch.Tensor]:
        """Omega_k of task k, called at its end: parameter name -> tensor of its shape (or 0-dim)."""
        raise NotImplementedError

    def consolidate(self, new: Term) -> list[Term]:
        """The terms after task k given its ``new`` term. Default: one term anchored at theta*_k with
        the importances summed over tasks."""
        return self.merged(new, decay=1.0)

    # ---- the penalty -------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """(lambda/2) sum_j sum_i Omega_{j,i} (theta_i - theta*_{j,i})^2, a scalar with gradient."""
        params = dict(self.model.named_parameters())
        total = torch.zeros((), device=self.device)
        for term in self.terms:
            for name, anchor in term.anchor.items():
                total = total + (term.omega[name] * (params[name] - anchor) ** 2).sum()
        return 0.5 * self.params.lambda_ * total

    def penalty_gradient(self, name: str, theta: torch.Tensor) -> torch.Tensor:
        """d penalty / d theta of parameter ``name`` at ``theta``: lambda sum_j Omega_j (theta - theta*_j)."""
        grad = torch.zeros_like(theta)
        for term in self.terms:
            if name in term.anchor:
                grad += term.omega[name] * (theta - term.anchor[name])
        return self.params.lambda_ * grad

    def loss(self, batch: Batch, ctx: TaskContext) -> tuple[torch.Tensor, dict[str, float]]:
        """L_data, plus the penalty once a task has ended (logged as ``loss_penalty``)."""
        l_data, stats = super().loss(batch, ctx)
        if not self.terms:
            return l_data, stats
        pen = self.penalty()
        return l_data + pen, {**stats, "loss_penalty": float(pen.detach())}

    def end_task(self, ctx: TaskContext) -> None:
        """Estimate Omega_k, anchor at the current weights, merge into the terms."""
        omega = self.importance(ctx)
        anchor = {name: p.detach().clone() for name, p in self.named_trainable(ctx)}
        self.terms = self.consolidate(Term(anchor, omega))

    # ---- building blocks ----------------------------------------------------------------------------
    def named_trainable(self, ctx: TaskContext) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the parameters the optimizer updates during task k."""
        chosen = {id(p) for p in self.trainable_parameters(ctx)}
        return [(name, p) for name, p in self.model.named_parameters() if id(p) in chosen]

    def merged(self, new: Term, decay: float) -> list[Term]:
        """One term anchored at ``new``'s anchor with Omega = decay * Omega_old + Omega_new."""
        if not self.terms:
            return [new]
        (old,) = self.terms
        return [Term(new.anchor, {n: decay * old.omega[n] + w if n in old.omega else w
                                  for n, w in new.omega.items()})]

    def estimation_batches(self, ctx: TaskContext, n: int
                           ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``n`` batches (x_t [B, C, H, W], t int64 [B], eps [B, C, H, W]) of task k's images, on the
        device, from ``generator(seed, IMPORTANCE, k)`` (see the module docstring)."""
        data = ctx.stream.tasks[ctx.k].train
        g = generator(self.cfg.run.seed, IMPORTANCE, ctx.k)
        B = min(self.cfg.run.batch_size, len(data))
        for _ in range(n):
            x0 = to_model_range(data.images[torch.randperm(len(data), generator=g)[:B]])
            if ctx.stream.hflip:
                x0 = random_hflip(x0, g)
            t = sample_timesteps(B, self.schedule.T, g, "cpu")
            eps = torch.randn(x0.shape, generator=g)
            x0, t, eps = x0.to(self.device), t.to(self.device), eps.to(self.device)
            yield q_sample(self.schedule, x0, t, eps), t, eps

    def gradient_average(self, ctx: TaskContext, n: int, objective: Objective,
                         f: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """(1/n) sum_b f(d objective(eps_theta(x_t, t), eps) / d theta) over :meth:`estimation_batches`,
        per trainable parameter (a gradient that does not reach a parameter counts as 0)."""
        named = self.named_trainable(ctx)
        total = {name: torch.zeros_like(p) for name, p in named}
        was_training = self.model.training
        self.model.eval()
        try:
            for x_t, t, eps in self.estimation_batches(ctx, n):
                with self.execution.autocast():
                    value = objective(self.model(x_t, t), eps)
                grads = torch.autograd.grad(value, [p for _, p in named], allow_unused=True)
                for (name, _), grad in zip(named, grads):
                    if grad is not None:
                        total[name] += f(grad.float())
                self.costs_.extra_forwards += 1
                self.costs_.extra_backwards += 1
        finally:
            self.model.train(was_training)
        return {name: v / n for name, v in total.items()}

    # ---- storage and state ----------------------------------------------------------------------------
    def storage(self) -> dict[str, int]:
        """Model, previous generator, and every stored anchor and importance."""
        stored = n_params(self.model, self.previous) + sum(term.numel() for term in self.terms)
        return {"params_stored": stored, "buffer_images": 0}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The previous generator and ``penalty.{j}.anchor.{name}`` / ``penalty.{j}.omega.{name}``."""
        out = super().state_tensors()
        for j, term in enumerate(self.terms):
            out.update({f"penalty.{j}.anchor.{n}": v for n, v in term.anchor.items()})
            out.update({f"penalty.{j}.omega.{n}": v for n, v in term.omega.items()})
        return out

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        super().load_state_tensors(tensors, ctx)
        terms: dict[int, Term] = {}
        for key, v in tensors.items():
            if key.startswith("penalty."):
                j, kind, name = key[len("penalty."):].split(".", 2)
                term = terms.setdefault(int(j), Term({}, {}))
                getattr(term, kind)[name] = v.to(self.device)
        self.terms = [terms[j] for j in sorted(terms)]
