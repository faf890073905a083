"""TensorBoard logging of the evaluation metrics, through Avalanche's ``TensorboardLogger``.

Avalanche's logger owns a ``SummaryWriter``; its ``log_single_metric(name, value, x_plot)`` writes
a scalar. If Avalanche cannot be imported, a plain ``torch.utils.tensorboard.SummaryWriter`` is
used instead (same event files) and the reason is returned for the run's eval_info.json.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Mapping


def scalars(row: Mapping[str, float], per_task: list[Mapping[str, float]]) -> Iterator[tuple[str, float]]:
    """The logged names and values of one evaluation: ``eval/<name>`` for the metrics row and
    ``per_task/<name>/task<j>`` for each per-task row; blank (None or NaN) values are skipped.
    Shared by the TensorBoard and the W&B (:mod:`.wandblog`) loggers."""
    named = [(f"eval/{key}", v) for key, v in row.items()]
    named += [(f"per_task/{key}/task{r['task_j']}", v) for r in per_task for key, v in r.items()
              if key not in ("task_after", "task_j")]
    for name, v in named:
        if v is None or (isinstance(v, float) and math.isnan(v)) or isinstance(v, str):
            continue
        yield name, float(v)


class MetricsLogger:
    """Scalars ``eval/<name>`` and ``per_task/<name>/task<j>`` against the 1-based task number."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from avalanche.logging import TensorboardLogger

            self._avl = TensorboardLogger(tb_log_dir=str(log_dir))
            self.writer = self._avl.writer
            self.backend = "avalanche.logging.TensorboardLogger"
        except Exception as e:  # noqa: BLE001 - any import problem: fall back to torch's writer
            from torch.utils.tensorboard import SummaryWriter

            self._avl = None
            self.writer = SummaryWriter(str(log_dir))
            self.backend = f"torch.utils.tensorboard.SummaryWriter (Avalanche unavailable: {type(e).__name__}: {e})"

    def scalar(self, name: str, value: float, step: int) -> None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        if self._avl is not None:
            self._avl.log_single_metric(name, float(value), step)
        else:
            self.writer.add_scalar(name, float(value), step)

    def log(self, step: int, row: Mapping[str, float], per_task: list[Mapping[str, float]]) -> None:
        for name, v in scalars(row, per_task):
            self.scalar(name, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
