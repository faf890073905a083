"""The strategy plugin contract.

A strategy is a class registered by name in :data:`STRATEGIES`. Its own hyperparameters are the
fields of a nested ``Params`` dataclass (declared with :func:`~cl_diffusion.options.opt`), which the
CLI, ``--set`` and ``config.json`` pick up automatically. It overrides a few hooks, each named for
when the trainer calls it:

- :meth:`Strategy.train_data` - at the start of task k: the images to train on;
- :meth:`Strategy.loss` - every iteration: the loss of one batch of clean images ``x0``;
- :meth:`Strategy.after_task` - at the end of task k (e.g. freeze the teacher);
- :meth:`Strategy.state_tensors` / :meth:`Strategy.load_state_tensors` - for checkpoints.

The class attribute ``solver_mode`` tells the evaluator how its classifier "solver" learns along
the stream: ``"replay"`` (generative replay from the frozen generator), ``"joint"`` (all data seen
so far) or ``"current"`` (current task only).

Third-party packages add strategies through the entry-point group ``cl_diffusion.strategies``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar, Mapping

import torch
from torch import nn

from .config import Config
from .data import LabeledImages
from .diffusion import NoiseSchedule, q_sample, sample_timesteps
from .registry import Registry
from .stream import TaskStream


@dataclass
class CostCounters:
    """Cumulative teacher costs: wall seconds, batched forward calls, per-image network evaluations."""

    teacher_seconds: float = 0.0
    teacher_forwards: int = 0
    teacher_image_evals: int = 0


class Strategy:
    """Base class: plain epsilon-MSE training on the current task (finetune).

    Attributes set by the trainer: ``model`` (the student eps_theta), ``schedule``, ``cfg``,
    ``params`` (this strategy's ``Params``), ``generator`` (the run's torch.Generator for
    timesteps and noise, checkpointed with the run) and ``task_index`` (k, 0-based).
    """

    @dataclass
    class Params:
        """This strategy's own options (none for the base class)."""

    solver_mode: ClassVar[str] = "current"
    #: Defaults of this strategy's params that differ from the ``Params`` field defaults, by key.
    defaults: ClassVar[Mapping[str, object]] = {}
    #: Per-benchmark paper settings of this strategy's params, applied after ``defaults``.
    paper_params: ClassVar[Mapping[str, Mapping[str, object]]] = {}

    @classmethod
    def default_params(cls) -> "Strategy.Params":
        """``Params()`` with this strategy's ``defaults`` applied."""
        from .options import set_option

        params = cls.Params()
        for key, value in cls.defaults.items():
            set_option(params, key, value)
        return params

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, cfg: Config,
                 generator: torch.Generator, device: torch.device) -> None:
        self.model = model
        self.schedule = schedule
        self.cfg = cfg
        self.params = cfg.strategy_params
        self.generator = generator
        self.device = device
        self.task_index = 0
        self.counters = CostCounters()

    # ---- hooks ------------------------------------------------------------------------------
    def train_data(self, stream: TaskStream, k: int) -> LabeledImages:
        """Images to train on during task k (uint8 [N, C, H, W]). Default: task k only."""
        return stream.tasks[k].train

    def loss(self, x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch of clean images x0 ([B, C, H, W] in [-1, 1]) and logged stats."""
        x_t, t, eps = self.noise_batch(x0)
        l_data = torch.mean((self.model(x_t, t) - eps) ** 2)
        return l_data, {"loss_data": float(l_data.detach())}

    def after_task(self, k: int) -> None:
        """Called once task k's training is over, before evaluation."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors this strategy needs after a resume (e.g. the teacher's weights)."""
        return {}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], k_done: int) -> None:
        """Restore what :meth:`state_tensors` saved; ``k_done`` tasks have finished."""

    def costs(self) -> dict[str, float]:
        """Cumulative cost counters since the start of the run (checkpointed by the trainer)."""
        return asdict(self.counters)

    # ---- helpers shared by all strategies -----------------------------------------------------
    def noise_batch(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw t ~ U{0..T-1} and eps ~ N(0, I); return (x_t, t, eps), DDPM Eq. 4.

        Shapes: x0, x_t, eps [B, C, H, W]; t int64 [B].
        """
        t = sample_timesteps(x0.shape[0], self.schedule.T, self.generator, x0.device)
        eps = torch.randn(x0.shape, generator=self.generator, device=x0.device, dtype=x0.dtype)
        return q_sample(self.schedule, x0, t, eps), t, eps


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", entry_point_group="cl_diffusion.strategies")


def load_builtin_strategies() -> None:
    """Import the bundled ``strategies/`` package so each file registers itself."""
    import cl_diffusion.strategies  # noqa: F401
