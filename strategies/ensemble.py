"""ensemble: one model per task, sampled as a mixture weighted by each task's share of the data.

The upper bound of the parameter-isolation family (CLoG, Zhang et al. 2024, "CLoG: Benchmarking
Continual Learning of Image Generation Models"): expert j is trained on task j alone and
then frozen, so nothing is forgotten, at T times the parameters. After task k the generator is
the mixture p(x) = sum_{j<=k} w_j p_j(x), w_j = |task j's training images| / |tasks 0..k's|
(:mod:`cl_diffusion.mixture`).

Every expert starts from the same initial weights theta_0, the model's weights when the strategy was
built: a copy needs no random draw (the run's generators, hence task 1, are exactly finetune's) and
the experts differ only by their data, not by their initial draw as well.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from cl_diffusion.mixture import data_mixture
from cl_diffusion.strategy import STRATEGIES, Strategy, TaskContext, n_params


def _indexed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[int, dict[str, torch.Tensor]]:
    """``{j: state dict}`` from keys ``{prefix}{j}.{name}``."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            j, name = key[len(prefix):].split(".", 1)
            out.setdefault(int(j), {})[name] = value
    return out


@STRATEGIES.register("ensemble")
class Ensemble(Strategy):
    """One frozen model per task (from the same theta_0); samples from the data-weighted mixture."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.init = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}  # theta_0
        self.experts: list[nn.Module] = []  # frozen experts 0..k-1 during task k

    def begin_task(self, ctx: TaskContext) -> None:
        """Freeze the model as expert k-1, then restart it from theta_0 for task k."""
        super().begin_task(ctx)
        if ctx.k > 0:
            self.model.load_state_dict(self.init)

    def freeze_previous(self, ctx: TaskContext) -> None:
        """The model holds expert k-1 (trained, or loaded by ``reevaluate``): freeze a copy of it;
        the previous generator is the mixture of experts 0..k-1 (no further copy)."""
        self.experts = self.experts[:ctx.k - 1] + [self.execution.frozen_copy(self.model)]
        self.previous = data_mixture(self.experts[:ctx.k], ctx.stream)

    def generator(self, ctx: TaskContext) -> nn.Module:
        """The model after task 1; the mixture of experts 0..k-1 and the model (expert k) after."""
        return self.model if ctx.k == 0 else data_mixture([*self.experts[:ctx.k], self.model], ctx.stream)

    def storage(self) -> dict[str, int]:
        """The model and the frozen experts (theta_0 is not counted: the run's seed recreates it)."""
        return {"params_stored": n_params(self.model, *self.experts), "buffer_images": 0}

    # ---- state: the experts and theta_0; the previous mixture is rebuilt from the experts -------------
    def _expert_tensors(self) -> dict[str, torch.Tensor]:
        return {f"expert.{j}.{k}": v for j, e in enumerate(self.experts) for k, v in e.state_dict().items()}

    def _load_experts(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load ``expert.{j}.*`` into experts 0..J-1, reusing the frozen copies already held (the
        previous mixture's) and copying the model for the missing ones."""
        by_index = _indexed(tensors, "expert.")
        held = self.experts[:len(by_index)]
        self.experts = held + [self.execution.frozen_copy(self.model) for _ in range(len(by_index) - len(held))]
        for j, expert in enumerate(self.experts):
            expert.load_state_dict(by_index[j])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**self._expert_tensors(), **{f"init.{k}": v for k, v in self.init.items()}}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        self.init = {k[len("init."):]: v.clone() for k, v in tensors.items() if k.startswith("init.")}
        self._load_experts(tensors)
        previous = self.experts[:ctx.k]
        self.previous = data_mixture(previous, ctx.stream) if previous else None

    def generator_tensors(self) -> dict[str, torch.Tensor]:
        """The model (expert k) and ``expert.{j}.*`` for the frozen experts 0..k-1."""
        return {**self.model.state_dict(), **self._expert_tensors()}

    def load_generator(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        own = set(self.model.state_dict())
        self.model.load_state_dict({k: v for k, v in tensors.items() if k in own})
        self._load_experts({k: v for k, v in tensors.items() if k not in own})
