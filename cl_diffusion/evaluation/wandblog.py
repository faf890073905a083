"""Weights & Biases logging of the evaluation metrics, offline, through Avalanche's ``WandBLogger``.

The option ``wandb`` (default off) logs the same scalars as the TensorBoard option
(:func:`.tblog.scalars`: ``eval/<name>`` and ``per_task/<name>/task<j>``, against the 1-based task
number) into a W&B run that is always offline: ``WANDB_MODE=offline`` and ``mode="offline"``, so
it never opens a network connection, and its folder is ``<run_dir>/wandb/offline-run-*``. Upload it
later, if wanted, with ``wandb sync <run_dir>/wandb/offline-run-*``. W&B's console capture and
code saving are off, so the run's stdout (whose last line is the run directory) is untouched.

``wandb`` is an optional extra (``pip install 'cl_diffusion[wandb]'``): :func:`require_wandb`
raises a :class:`~cl_diffusion.errors.UserError` with the install hint when it is missing, which
``EvalConfig.check`` calls when the config is validated, before anything trains.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Mapping

from ..errors import UserError
from .tblog import scalars

INSTALL_HINT = "pip install 'cl_diffusion[wandb]' (or: pip install 'wandb>=0.15')"
PROJECT = "cl_diffusion"  # the W&B project name of every run


def require_wandb() -> Any:
    """The ``wandb`` module, or a UserError naming the install command when it cannot be imported."""
    try:
        import wandb
    except ImportError as e:
        raise UserError(f"bad value True for wandb: the 'wandb' package is not installed ({e}); "
                        f"install it with: {INSTALL_HINT}") from None
    return wandb


def _avalanche_logger_class() -> type:
    """Avalanche's ``WandBLogger`` with its scalar logging made independent of the wandb release.

    Avalanche 0.6's ``log_single_metric`` checks value types against ``wandb.viz.CustomChart`` and its
    ``before_run`` calls ``wandb.util.generate_id`` when no run id is given; newer wandb releases
    (0.31 here) have neither. The run id is given (so ``generate_id`` is never needed), and scalars,
    the only values logged here, go to ``wandb.log`` exactly as Avalanche's own float branch does.
    """
    from avalanche.logging import WandBLogger

    class ScalarWandBLogger(WandBLogger):
        def log_single_metric(self, name: str, value: float, x_plot: int) -> None:
            self.step = x_plot
            self.wandb.log({name: float(value)}, step=self.step)

    return ScalarWandBLogger


class WandbMetricsLogger:
    """An offline W&B run in ``run_dir/wandb``, named after ``run_dir``; ``config``: the run's
    resolved config (stored as the W&B run config)."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any] | None = None) -> None:
        wandb = require_wandb()
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_MODE"] = "offline"
        settings = wandb.Settings(console="off", silent=True, disable_git=True, disable_code=True,
                                  x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
                                  x_save_requirements=False)
        params = {"mode": "offline", "settings": settings, "reinit": "finish_previous",
                  "id": secrets.token_hex(4)}  # a unique id from the OS, not from any seeded RNG
        self._avl = _avalanche_logger_class()(project_name=PROJECT, run_name=run_dir.name, save_code=False,
                                              config=dict(config or {}), dir=str(run_dir), params=params)
        self.run = self._avl.wandb.run
        self.run_folder = Path(self.run.dir).parent  # <run_dir>/wandb/offline-run-<time>-<id>
        self.backend = f"avalanche.logging.WandBLogger, offline, {self.run_folder}"

    def log(self, step: int, row: Mapping[str, float], per_task: list[Mapping[str, float]]) -> None:
        """Log one evaluation's scalars at ``step`` (the 1-based task number)."""
        for name, value in scalars(row, per_task):
            self._avl.log_single_metric(name, value, step)

    def close(self) -> None:
        """Finish the W&B run: its history is complete on disk afterwards."""
        self.run.finish()
