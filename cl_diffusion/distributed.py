"""Data-parallel plumbing for ``torchrun``: the process group, rank helpers and the few collectives
the trainer and the evaluator need.

    torchrun --nproc_per_node N -m cl_diffusion.run --strategy gd --benchmark cifar10-5

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them and joins the group (NCCL with one GPU per rank on CUDA, gloo on the CPU).
Without them (plain ``python -m cl_diffusion.run``) the world has one process and every helper
here is a no-op that returns its input unchanged, so single-process runs are untouched.

Who does what (see ``docs/scaling.md``): every rank trains on its share of each global
batch (gradients averaged by DistributedDataParallel) and generates its slice of the evaluation
samples; rank 0 alone evaluates them and writes files; the other ranks wait at a barrier.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

#: How long a rank waits at a collective before giving up. Rank 0 evaluates alone while the others
#: wait at a barrier, which at the paper's scale (10,000 samples, FID, solver training) takes a while.
TIMEOUT = timedelta(hours=4)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0, the process that writes files and logs (always True without torchrun)."""
    return rank() == 0


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the torchrun process group (idempotent) and return this rank's device.

    ``device`` is the resolved run device; on CUDA each rank takes ``cuda:LOCAL_RANK`` and NCCL,
    on the CPU gloo. Without torchrun, ``device`` is returned unchanged.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    return device


def shutdown() -> None:
    """Leave the process group (at the end of the run; a no-op without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where a tensor must be for the backend: the rank's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_path(path: Path | None) -> Path:
    """Rank 0's ``path`` on every rank (rank 0 decides the run directory)."""
    if world_size() == 1:
        assert path is not None
        return path
    box = [str(path) if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def shard_range(n: int) -> tuple[int, int]:
    """This rank's contiguous slice [lo, hi) of n items; sizes differ by at most one."""
    w, r = world_size(), rank()
    return r * n // w, (r + 1) * n // w


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous share of one global batch of indices (never empty: a batch smaller
    than the world repeats its items)."""
    if world_size() == 1:
        return idx
    lo, hi = shard_range(len(idx))
    if hi <= lo:
        return idx[rank() % len(idx):][:1]
    return idx[lo:hi]


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` [n_r, ...] along dim 0 in rank order, on every rank.

    The slices may differ in length (padded for the transfer); the result is on ``x``'s device.
    """
    if world_size() == 1:
        return x
    dev = _comm_device()
    n = torch.tensor([x.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    m = int(max(s.item() for s in sizes))
    padded = torch.zeros((m, *x.shape[1:]), dtype=x.dtype, device=dev)
    padded[: x.shape[0]] = x.to(dev)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(x.device)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Stack every rank's ``x`` (same shape on all ranks) into [world, *x.shape], on the CPU."""
    return all_gather_cat(x.detach().cpu()[None]).cpu() if world_size() > 1 else x.detach().cpu()[None]


def all_reduce(values: Sequence[float], op: str = "mean") -> list[float]:
    """Reduce a few floats over the ranks: ``op`` in mean | sum | max. Identity on one process."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    if op == "mean":
        t /= world_size()
    return t.tolist()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks, else ``model`` itself."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
