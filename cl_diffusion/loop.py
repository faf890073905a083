"""Shuffled-epoch minibatch loops: how many iterations, and which items each iteration takes.

Three loops train a network over shuffled epochs of a dataset of ``n_items`` items, in batches of
``batch_size`` (the last batch of an epoch is smaller when ``batch_size`` does not divide
``n_items``), for ``epochs`` epochs capped at ``cap`` iterations:

- the diffusion model (:class:`cl_diffusion.trainer.Trainer`): each epoch's order from a fresh
  generator seeded by (seed, task, epoch), resumable from any checkpointed iteration;
- the evaluation solver (:class:`cl_diffusion.evaluation.solver.Solver`): one generator per task;
- the evaluation classifier (:func:`cl_diffusion.evaluation.classifier.train_classifier`): one
  generator for the whole training, also used for augmentation between batches.

:func:`iterations` is their one iteration-count rule and :func:`epoch_batches` their one loop;
they replace the three hand-written ``while it < total: perm = ...; for lo in range(...)`` loops
(and ``Trainer.iterations_per_task``, ``Solver.iterations`` and the count in
``train_classifier``), drawing exactly what those drew, in the same order.

Shapes: a permutation is ``int64 [n_items]``; each :class:`Step`'s ``idx`` is ``int64 [b]``, a
slice of it, with ``b = batch_size`` except in an epoch's last batch (``n_items - (n_batches - 1)
* batch_size``).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple

import torch

# epoch -> permutation int64 [n_items] of that epoch, or one generator that every epoch draws from
Order = Callable[[int], torch.Tensor] | torch.Generator


def batches_per_epoch(n_items: int, batch_size: int) -> int:
    """Batches in one pass over ``n_items`` items: ``ceil(n_items / batch_size)``."""
    return math.ceil(n_items / batch_size)


def iterations(epochs: int, n_items: int, batch_size: int, cap: int = 0) -> int:
    """Iterations of ``epochs`` passes over ``n_items`` items, at most ``cap`` when ``cap > 0``.

    ``epochs * ceil(n_items / batch_size)``, then ``min(., cap)`` if ``cap > 0`` (0 or less: no cap).
    """
    total = epochs * batches_per_epoch(n_items, batch_size)
    return min(total, cap) if cap > 0 else total


class Step(NamedTuple):
    """One iteration of :func:`epoch_batches`."""

    epoch: int  # epoch of this batch, from 0
    batch: int  # index of this batch within its epoch, from 0
    iteration: int  # index of this iteration over all epochs, from 0
    idx: torch.Tensor  # int64 [b]: the items of this batch


def epoch_batches(n_items: int, batch_size: int, total: int, order: Order, start: int = 0) -> Iterator[Step]:
    """Iterations ``start .. total - 1`` over shuffled epochs of ``n_items`` items.

    Epoch ``e``'s permutation is ``order(e)`` if ``order`` is callable, else
    ``torch.randperm(n_items, generator=order)``. It is taken when the epoch's first batch is asked
    for (lazily: what the caller draws from the same generator between batches stays in place) and
    never after iteration ``total - 1``, so the generator's draws are those of the plain loop
    ``while it < total: perm = randperm(...); for each batch of perm: ... it += 1 (break at total)``.
    Batch ``b`` of an epoch is ``perm[b * batch_size:(b + 1) * batch_size]``.

    ``start`` resumes at iteration ``start`` (epoch ``start // n_batches``, batch ``start % n_batches``):
    the steps are the tail of those from 0 when ``order`` is a function of the epoch alone. A
    generator ``order`` is drawn from once for the resumed epoch, so it is only exact from 0.
    """
    n_batches = batches_per_epoch(n_items, batch_size)
    if start >= total:
        return
    if n_batches == 0:
        raise ValueError(f"{total} iterations asked over an empty dataset")
    epoch, batch = divmod(start, n_batches)
    it = start
    while it < total:
        perm = order(epoch) if callable(order) else torch.randperm(n_items, generator=order)
        while batch < n_batches and it < total:
            yield Step(epoch, batch, it, perm[batch * batch_size:(batch + 1) * batch_size])
            batch += 1
            it += 1
        epoch, batch = epoch + 1, 0
