"""The shared minibatch loop (:mod:`cl_diffusion.loop`) and the RNG capture of checkpoints
(:func:`cl_diffusion.checkpoint.rng_state` / :func:`~cl_diffusion.checkpoint.restore_rng`)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from cl_diffusion.checkpoint import load_checkpoint, restore_rng, rng_state, save_checkpoint
from cl_diffusion.loop import batches_per_epoch, epoch_batches, iterations


@pytest.mark.parametrize("epochs, n, batch, cap, expected", [
    (3, 10, 4, 0, 9),  # 3 batches per epoch (4, 4, 2), no cap
    (3, 10, 4, 5, 5),  # capped mid-epoch
    (3, 10, 4, 100, 9),  # a cap above the total changes nothing
    (3, 10, 4, -1, 9),  # a negative cap is no cap
    (2, 8, 4, 0, 4),  # the batch size divides n
    (1, 1, 64, 0, 1),  # one partial batch
    (5, 0, 4, 0, 0),  # no data
    (0, 10, 4, 3, 0),  # no epochs
    (20, 1800, 64, 500, 500),  # the 'cnn' evaluation classifier on the synthetic training set
])
def test_iterations(epochs, n, batch, cap, expected):
    assert iterations(epochs, n, batch, cap) == expected
    assert batches_per_epoch(n, batch) == -(-n // batch)


PERMS = {0: [4, 2, 0, 1, 3], 1: [1, 3, 4, 0, 2], 2: [2, 0, 1, 4, 3], 3: [0, 1, 2, 3, 4]}


def _steps(start: int = 0, total: int = 7) -> tuple[list[tuple[int, int, int, list[int]]], list[int]]:
    """Steps of 5 items in batches of 2 with the fixed PERMS, and the epochs whose order was taken."""
    asked: list[int] = []

    def order(epoch: int) -> torch.Tensor:
        asked.append(epoch)
        return torch.tensor(PERMS[epoch])

    steps = [(s.epoch, s.batch, s.iteration, s.idx.tolist()) for s in epoch_batches(5, 2, total, order, start)]
    return steps, asked


def test_epoch_batches_by_hand():
    steps, asked = _steps()
    assert steps == [(0, 0, 0, [4, 2]), (0, 1, 1, [0, 1]), (0, 2, 2, [3]),
                     (1, 0, 3, [1, 3]), (1, 1, 4, [4, 0]), (1, 2, 5, [2]),
                     (2, 0, 6, [2, 0])]
    assert asked == [0, 1, 2]  # epoch 2's order once, epoch 3's never


@pytest.mark.parametrize("start", range(8))
def test_resume_gives_the_tail(start):
    full, _ = _steps()
    tail, asked = _steps(start)
    assert tail == full[start:]
    assert asked == ([] if start == 7 else list(range(start // 3, 3)))  # from the resumed epoch on


def test_generator_order_matches_the_plain_loop():
    """One running generator, also drawn from between batches (as the classifier's augmentation is):
    the same batches and the same draws as the loop the helper replaced."""
    n, batch, total = 7, 3, 8

    def plain() -> tuple[list[list[int]], list[float], torch.Tensor]:
        g, out, extra, it = torch.Generator().manual_seed(5), [], [], 0
        while it < total:
            perm = torch.randperm(n, generator=g)
            for lo in range(0, n, batch):
                if it >= total:
                    break
                out.append(perm[lo:lo + batch].tolist())
                extra.append(float(torch.rand(1, generator=g)))
                it += 1
        return out, extra, g.get_state()

    g, out, extra = torch.Generator().manual_seed(5), [], []
    for step in epoch_batches(n, batch, total, g):
        out.append(step.idx.tolist())
        extra.append(float(torch.rand(1, generator=g)))
    expected = plain()
    assert (out, extra) == expected[:2] and torch.equal(g.get_state(), expected[2])
    assert len(out) == total and [len(b) for b in out[:3]] == [3, 3, 1]
    first = torch.randperm(n, generator=torch.Generator().manual_seed(5)).tolist()
    assert sum(out[:3], []) == first  # epoch 0 is the permutation itself


def test_empty_or_done():
    assert list(epoch_batches(0, 4, 0, lambda e: torch.arange(0))) == []
    assert list(epoch_batches(5, 2, 3, lambda e: torch.arange(5), start=3)) == []
    with pytest.raises(ValueError):
        list(epoch_batches(0, 4, 2, lambda e: torch.arange(0)))


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    """These tests draw from and set the global RNGs: leave them as they were for other tests."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


def _draws(g: torch.Generator) -> list[float]:
    return [float(torch.rand(1, generator=g)), float(torch.rand(1)), float(np.random.rand()), random.random(),
            float(np.random.randn()), random.gauss(0, 1)]


def _old_rng_state(g: torch.Generator) -> dict:
    """The ``"rng"`` entry as the trainer built it by hand before :func:`rng_state` existed."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    np_state = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"generator": g.get_state(), "torch": torch.get_rng_state(), "cuda": list(cuda),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [version, list(internal), gauss]}


def test_rng_round_trip_through_a_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    state = rng_state(g)
    old = _old_rng_state(g)
    assert list(state) == list(old) == ["generator", "torch", "cuda", "numpy", "python"]
    for key in ("generator", "torch", "cuda", "numpy"):
        for a, b in zip(state[key], old[key]) if isinstance(old[key], list) else [(state[key], old[key])]:
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert state["python"] == old["python"]
    first = _draws(g)
    loaded = load_checkpoint(save_checkpoint(tmp_path, {"rng": state}))["rng"]
    restore_rng(loaded, g)
    assert _draws(g) == first
    restore_rng(load_checkpoint(save_checkpoint(tmp_path, {"rng": old}))["rng"], g)  # an older checkpoint
    assert _draws(g) == first


def test_rank_rng_round_trip():
    """One rank's row: tensors only, gathered along a new first dimension, then restored from a copy of the row."""
    g, device = torch.Generator().manual_seed(4), torch.device("cpu")
    state = rng_state(g, device)
    assert list(state) == ["generator", "torch"] and all(isinstance(v, torch.Tensor) for v in state.values())
    first = _draws(g)[:2]
    rows = {key: torch.stack([v, v]) for key, v in state.items()}
    restore_rng({key: v[1].clone() for key, v in rows.items()} | {"counters": torch.zeros(1, 2)}, g, device)
    assert _draws(g)[:2] == first
