"""A class-balanced episodic memory of real training images (Chaudhry et al. 2019, "On tiny episodic
memories in continual learning", Sec. 3: ring buffer per class), and the base of the strategies
that keep one (``er``, ``agem``).

After task k the buffer holds at most ``capacity`` images of the classes seen so far, as evenly as
possible: each class gets ``capacity // C`` slots (C = classes seen), and the first
``capacity % C`` classes in ascending class id get one more; a class with fewer images keeps all of
them and the slots stay empty. A class already stored keeps the first images it had (it only
shrinks); a new class gets a random choice of its images from a generator seeded by
(run seed, :data:`~cl_diffusion.seeding.BUFFER`, k), so the contents depend on the seed alone, not
on the training RNG or on when a run was resumed.

Avalanche's ``ClassBalancedBuffer`` does the same on ``AvalancheDataset``s; the suite trains from
in-memory tensors (docs/design.md), so the buffer is kept as two tensors here, which
also makes it a checkpoint entry like any other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .data import LabeledImages, random_hflip, to_model_range
from .options import opt
from .seeding import BUFFER, generator
from .strategy import Batch, Strategy, TaskContext


class ClassBalancedBuffer:
    """``images`` uint8 [M, C, H, W] and ``labels`` int64 [M] (M <= capacity), on the CPU."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.images: torch.Tensor | None = None
        self.labels = torch.empty(0, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def quotas(self, classes: list[int]) -> dict[int, int]:
        """Slots per class for the sorted ``classes``: capacity // C each, one more for the first remainder."""
        classes = sorted(classes)
        base, extra = divmod(self.capacity, len(classes))
        return {c: base + (i < extra) for i, c in enumerate(classes)}

    def update(self, data: LabeledImages, seed: int, k: int) -> None:
        """Add task k's classes from ``data`` (its training images) and rebalance all classes."""
        new = sorted(set(data.labels.tolist()) - set(self.labels.tolist()))
        quota = self.quotas(sorted(set(self.labels.tolist()) | set(new)))
        g = generator(seed, BUFFER, k)
        keep_img, keep_lab = [], []
        for c in sorted(quota):
            if c in new:
                idx = torch.nonzero(data.labels == c).flatten()
                idx = idx[torch.randperm(len(idx), generator=g)[: quota[c]]].sort().values
                images, labels = data.images[idx], data.labels[idx]
            else:
                mine = torch.nonzero(self.labels == c).flatten()[: quota[c]]
                images, labels = self.images[mine], self.labels[mine]
            keep_img.append(images.cpu())
            keep_lab.append(labels.cpu())
        self.images, self.labels = torch.cat(keep_img), torch.cat(keep_lab)

    def sample(self, n: int, rng: torch.Generator) -> LabeledImages:
        """n stored images drawn uniformly with replacement (indices from ``rng``, on its device)."""
        idx = torch.randint(len(self), (n,), generator=rng, device=rng.device).cpu()
        return LabeledImages(self.images[idx], self.labels[idx])

    def state_tensors(self, prefix: str = "buffer.") -> dict[str, torch.Tensor]:
        """The contents, for a checkpoint (nothing while empty)."""
        if self.images is None:
            return {}
        return {f"{prefix}images": self.images, f"{prefix}labels": self.labels}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], prefix: str = "buffer.") -> None:
        if f"{prefix}images" in tensors:
            self.images = tensors[f"{prefix}images"].clone()
            self.labels = tensors[f"{prefix}labels"].clone().to(torch.int64)


class BufferStrategy(Strategy):
    """A strategy with a :class:`ClassBalancedBuffer` of ``buffer_size`` real images, filled with
    each task's images at the task's end (so it is empty during the first task)."""

    @dataclass
    class Params:
        buffer_size: int = opt(500, "real training images the buffer keeps, over all classes seen "
                                    "(class-balanced)", min=1)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = ClassBalancedBuffer(self.params.buffer_size)

    def replay_batch(self, n: int, ctx: TaskContext) -> Batch:
        """n buffer images drawn with the run's generator, in [-1, 1] on the device, flipped at
        random when the stream flips its training images."""
        drawn = self.buffer.sample(n, self.rng)
        x0 = to_model_range(drawn.images.to(self.device))
        return Batch(random_hflip(x0, self.rng) if ctx.stream.hflip else x0, drawn.labels.to(self.device))

    def end_task(self, ctx: TaskContext) -> None:
        self.buffer.update(ctx.stream.tasks[ctx.k].train, self.cfg.run.seed, ctx.k)

    def storage(self) -> dict[str, int]:
        return {**super().storage(), "buffer_images": len(self.buffer)}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().state_tensors(), **self.buffer.state_tensors()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        super().load_state_tensors(tensors, ctx)
        self.buffer.load_state_tensors(dict(tensors))
