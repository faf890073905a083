"""lora: the task-1 model frozen, then one low-rank adapter per task on its convolutions and linear
layers (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR; the LoRA
baseline of CLoG, Zhang et al. 2024).

Task 1 trains the whole model, as finetune. From task 2 on the model is frozen and task k trains only
adapter k (:mod:`cl_diffusion.lora`: h = W0 x + (alpha / r) B_k A_k x, B_k = 0 at the start). Expert
j is the model with adapter j active (expert 0: none), and after task k the generator is their
mixture weighted by each task's share of the data, as in ``ensemble``. Nothing is copied: the base
and adapters 0..k-1 are frozen during task k, so the previous generator is the mixture of experts
0..k-1 over the live model, and the model itself (base + all adapters) is all there is to store.

alpha defaults to the default rank (scale 1) and stays fixed when the rank changes, as in Hu et al.
2022 Sec. 4.1. Not under torchrun: DistributedDataParallel is built once, over the parameters that
exist before the adapters do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from cl_diffusion import distributed, seeding
from cl_diffusion.errors import UserError
from cl_diffusion.lora import AdapterSwitch, AdapterView, adapter_parameters, add_adapter, n_adapters, wrap
from cl_diffusion.options import opt
from cl_diffusion.mixture import data_mixture
from cl_diffusion.strategy import STRATEGIES, Strategy, TaskContext, n_params


@STRATEGIES.register("lora")
class LoRA(Strategy):
    """Task 1 trains the model; task k >= 2 a new low-rank adapter; samples from the data-weighted mixture."""

    @dataclass
    class Params(Strategy.Params):
        rank: int = opt(8, "rank r of each task's adapters (B [out, r], A [r, fan_in])", min=1)
        lora_alpha: float = opt(8.0, "alpha: the adapters are scaled by alpha / rank (Hu et al. 2022 Sec. 4.1)",
                                min=0.0, min_exclusive=True)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if distributed.world_size() > 1:
            raise UserError("strategy lora cannot run under torchrun: DistributedDataParallel is built once over "
                            "the model's parameters, before the adapters of tasks 2.. exist; run it in one process")
        self.switch = AdapterSwitch()  # which adapter the model applies: -1 (the base alone) during task 1

    def _grow(self, n: int) -> None:
        """Wrap the model (once) and give it adapters until it holds ``n`` (task k's adapter, index
        k - 1, has its A drawn from (seed, seeding.LORA_INIT, k)); activate the last one (none when n = 0)."""
        if n > 0:
            wrap(self.model, self.switch, self.params.lora_alpha / self.params.rank)
        while n_adapters(self.model) < n:
            g = seeding.generator(self.cfg.run.seed, seeding.LORA_INIT, n_adapters(self.model) + 1)
            add_adapter(self.model, self.params.rank, g)
        self.switch.active = n - 1

    def _experts(self, n: int) -> list[nn.Module]:
        """Experts 0..n-1: the model with no adapter, then with adapter j - 1 for expert j."""
        return [AdapterView(self.model, self.switch, j - 1) for j in range(n)]

    def begin_task(self, ctx: TaskContext) -> None:
        """Task k >= 1: the previous mixture over the live model, then adapter k, active."""
        super().begin_task(ctx)
        if ctx.k > 0:
            self._grow(ctx.k)

    def trainable_parameters(self, ctx: TaskContext) -> list[nn.Parameter]:
        """The active adapter's A and B (adapter k during task k >= 1); all of the model's while none
        is active (task 1). At a checkpoint between two tasks the active adapter is the last one
        trained, so the optimizer state saved with it loads."""
        j = self.switch.active
        return list(self.model.parameters()) if j < 0 else adapter_parameters(self.model, j)

    def freeze_previous(self, ctx: TaskContext) -> None:
        """Experts 0..k-1 over the live model: they are frozen during task k, so no copy is needed."""
        self.previous = data_mixture(self._experts(ctx.k), ctx.stream)

    def generator(self, ctx: TaskContext) -> nn.Module:
        return self.model if ctx.k == 0 else data_mixture(self._experts(ctx.k + 1), ctx.stream)

    def storage(self) -> dict[str, int]:
        """The model: the base and every adapter (the previous mixture holds no copy)."""
        return {"params_stored": n_params(self.model), "buffer_images": 0}

    # ---- state: the adapters' weights are in the model's state dict; only their number is extra -----
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"adapters": torch.tensor([n_adapters(self.model)])}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        """Create the saved number of adapters, so that the model's state dict loads next."""
        self._grow(int(tensors["adapters"][0]) if "adapters" in tensors else 0)
        self.previous = data_mixture(self._experts(ctx.k), ctx.stream) if ctx.k > 0 else None

    def load_generator(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        """Create the adapters present in ``tensors`` (keys ``*.lora_A.{j}``), then load them all."""
        found = [int(m.group(1)) for key in tensors if (m := re.search(r"\.lora_A\.(\d+)$", key))]
        self._grow(max(found) + 1 if found else 0)
        self.model.load_state_dict(dict(tensors))
