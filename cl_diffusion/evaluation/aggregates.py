"""Continual-learning aggregates of a per-task matrix (CLoG, Zhang et al. 2024, arXiv 2406.04584).

``a [T, T]`` holds a per-task metric: ``a[k, j]`` is measured after training task k on task j
(0-based here; only j <= k is defined, the rest is NaN). With T tasks:

    AIQ = 1/T sum_k ( 1/(k+1) sum_{j<=k} a[k, j] )      average incremental quality
    AFQ = 1/T sum_j a[T-1, j]                            average final quality
    FR  = 1/(T-1) sum_{j<T-1} ( a[T-1, j] - a[j, j] )    forgetting rate

Sign convention: FR is always "final minus just-learned", never flipped. So for a
lower-is-better metric (FID_clf, KID) a positive FR means forgetting (quality got worse), and for a
higher-is-better one (the solver's accuracy, precision, recall) a negative FR does; lower FR is
better exactly when the metric itself is lower-is-better. AIQ and AFQ read like the metric.

NaN-aware: every mean skips NaN entries (e.g. the per-task FID_clf of a task that fewer than 2
samples were routed to) and is NaN only when nothing is left. Note what that means: a task the
model no longer generates at all drops out of the FID/KID aggregates instead of counting as
infinitely bad, so read them beside ``share`` (the fraction of samples routed to each task).
FR with T = 1 is NaN (no old task).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

KINDS = ("aiq", "afq", "fr")  # the aggregates, in the order of the module docstring


def _nanmean(x: np.ndarray) -> float:
    """Mean of the finite entries of ``x``; NaN when there are none (no numpy warning)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _check(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"need a square per-task matrix [T, T] with T >= 1, got shape {a.shape}")
    return a


def aiq(a: np.ndarray) -> float:
    """Average incremental quality: mean over k of the mean over j <= k of ``a[k, j]``."""
    a = _check(a)
    return _nanmean(np.array([_nanmean(a[k, : k + 1]) for k in range(a.shape[0])]))


def afq(a: np.ndarray) -> float:
    """Average final quality: mean over j of ``a[T-1, j]`` (the last row)."""
    return _nanmean(_check(a)[-1])


def fr(a: np.ndarray) -> float:
    """Forgetting rate: mean over j < T-1 of ``a[T-1, j] - a[j, j]`` (final minus just learned)."""
    a = _check(a)
    t = a.shape[0]
    return _nanmean(a[t - 1, : t - 1] - np.diagonal(a)[: t - 1])


def aggregates(a: np.ndarray) -> dict[str, float]:
    """``{"aiq": ..., "afq": ..., "fr": ...}`` of the matrix ``a [T, T]``."""
    return {"aiq": aiq(a), "afq": afq(a), "fr": fr(a)}


def matrix(task_after: Iterable[int], task_j: Iterable[int], values: Iterable[float], n_tasks: int) -> np.ndarray:
    """The matrix ``a [n_tasks, n_tasks]`` from per-task rows (1-based ``task_after``, ``task_j``, as
    in ``per_task.csv``); entries without a row, and blank values, are NaN."""
    a = np.full((n_tasks, n_tasks), np.nan)
    for k, j, v in zip(task_after, task_j, values):
        if not (1 <= int(j) <= int(k) <= n_tasks):
            raise ValueError(f"per-task row (task_after={k}, task_j={j}) is outside 1 <= task_j <= task_after "
                             f"<= {n_tasks}")
        a[int(k) - 1, int(j) - 1] = np.nan if v is None else float(v)
    return a
