"""A mixture of per-task eps-networks, sampled one expert per trajectory.

Isolation strategies (``ensemble``, ``lora``) keep one expert per task. Their generator is the
mixture p(x) = sum_j w_j p_j(x), with w_j the share of task j's training images: sample i picks
expert j with probability w_j and keeps it along its whole reverse trajectory. The pick depends on
(seed, i) alone, through :func:`cl_diffusion.seeding.unit_uniform`, so the same sample index gets
the same expert whatever the batch size or the number of data-parallel ranks.

    with mixture.routed(seed, indices):   # indices: int64 [B], the samples' global indices
        x0 = ddim_sample(mixture, schedule, x_T, steps=...)

Samplers call ``mixture(x_t, t)`` like any eps-network; outside :meth:`Mixture.routed` it refuses.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, ContextManager, Iterator, Sequence

import torch
from torch import nn

from .seeding import unit_uniform

if TYPE_CHECKING:
    from .stream import TaskStream


class Mixture(nn.Module):
    """Experts ``experts[j]`` (eps-networks) with mixture weights ``weights[j]`` (normalised here)."""

    def __init__(self, experts: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(experts) != len(weights) or not experts:
            raise ValueError(f"{len(experts)} experts but {len(weights)} weights")
        self.experts = nn.ModuleList(experts)
        w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self._route: torch.Tensor | None = None

    def assign(self, seed: int, indices: torch.Tensor) -> torch.Tensor:
        """Expert of each sample index: int64 [B], the inverse CDF of ``weights`` at u(seed, i)."""
        u = unit_uniform(seed, indices.cpu())
        cdf = torch.cumsum(self.weights.cpu(), 0)
        return torch.searchsorted(cdf, u, right=True).clamp(max=len(self.experts) - 1)

    @contextmanager
    def routed(self, seed: int, indices: torch.Tensor) -> Iterator[None]:
        """Within this block, row b of every batch goes to expert ``assign(seed, indices)[b]``."""
        previous, self._route = self._route, self.assign(seed, indices)
        try:
            yield
        finally:
            self._route = previous

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps [B, C, H, W] of x_t [B, C, H, W] at t int64 [B], each row from its expert."""
        if self._route is None:
            raise RuntimeError("Mixture called outside routed(seed, indices): its samples have no experts")
        route = self._route.to(x_t.device)
        if route.shape[0] != x_t.shape[0]:
            raise RuntimeError(f"routed for {route.shape[0]} samples, called on {x_t.shape[0]}")
        out = torch.empty_like(x_t)
        for j in torch.unique(route).tolist():
            rows = route == j
            out[rows] = self.experts[j](x_t[rows], t[rows]).to(out.dtype)
        return out


def data_mixture(experts: Sequence[nn.Module], stream: "TaskStream") -> Mixture:
    """Expert j for task j, weighted by task j's number of training images (w_j above)."""
    return Mixture(experts, [len(stream.tasks[j].train) for j in range(len(experts))])


def routing(model: nn.Module, seed: int, indices: torch.Tensor) -> ContextManager[None]:
    """``model.routed(seed, indices)`` for a :class:`Mixture`, a no-op for any other eps-network."""
    return model.routed(seed, indices) if isinstance(model, Mixture) else nullcontext()
