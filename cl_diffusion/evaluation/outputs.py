"""What one evaluation writes into the run directory: the class histogram and sample grid PNGs,
``eval_info.json``, and the optional TensorBoard and offline W&B logs (both through Avalanche's
loggers: :mod:`.tblog`, :mod:`.wandblog`)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import to_model_range
from ..io import atomic_write_json
from ..sampling import save_grid
from .plots import save_class_histogram

if TYPE_CHECKING:
    from ..config import Config


class EvaluationWriter:
    """Files and logs of the evaluations of one run, in ``run_dir``."""

    def __init__(self, cfg: "Config", class_names: list[str], run_dir: Path) -> None:
        self.cfg, self.class_names, self.run_dir = cfg, class_names, Path(run_dir)
        self._tb: Any = None
        self._wb: Any = None  # the offline W&B logger (option wandb), made at the first log

    def pngs(self, k: int, samples: torch.Tensor, p_true: torch.Tensor, p_gen: torch.Tensor,
             row: dict[str, float]) -> None:
        """``class_hist_task{k+1}.png`` and, unless the trainer drew it already, the sample grid
        (samples uint8 [N, C, H, W]; histograms float64 [K])."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        title = f"{self.cfg.run.strategy} after task {k + 1}: KLD {row['kld']:.3f}, ARD {row['ard']:.3f}"
        save_class_histogram(p_true, p_gen, self.class_names, self.run_dir / f"class_hist_task{k + 1}.png", title)
        grid = self.run_dir / f"samples_task{k + 1}.png"
        if not grid.exists():
            save_grid(to_model_range(samples[: self.cfg.run.grid_samples]), grid)

    def log(self, k: int, row: dict[str, float], per_task: list[dict[str, Any]]) -> None:
        """The task's metrics to TensorBoard and W&B, as the options ask."""
        ev = self.cfg.eval
        if ev.tensorboard:
            if self._tb is None:
                from .tblog import MetricsLogger

                self._tb = MetricsLogger(self.run_dir / "tensorboard")
            self._tb.log(k + 1, row, per_task)
        if ev.wandb:
            if self._wb is None:
                from .wandblog import WandbMetricsLogger

                self._wb = WandbMetricsLogger(self.run_dir, self.cfg.to_dict())
            self._wb.log(k + 1, row, per_task)

    def info(self, k: int, info: dict[str, Any]) -> None:
        """``eval_info.json``: what the metrics after task k mean, and which loggers wrote them."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        info = {**info, "tensorboard": self._tb.backend if self._tb is not None else None,
                "wandb": self._wb.backend if self._wb is not None else None}
        atomic_write_json(self.run_dir / "eval_info.json", {"after_task": k + 1, **info})

    def close(self) -> None:
        """Close the TensorBoard and W&B loggers, if any (their files are complete afterwards)."""
        for logger in (self._tb, self._wb):
            if logger is not None:
                logger.close()
        self._tb = self._wb = None
