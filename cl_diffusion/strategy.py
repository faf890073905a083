"""The strategy contract: everything a continual-learning strategy may do, in one class.

A strategy is a class registered by name in :data:`STRATEGIES`. Its hyperparameters are the fields
of a nested ``Params`` dataclass (declared with :func:`~cl_diffusion.options.opt`); their defaults
are the field defaults, and a subclass that needs another default re-declares the field with
:func:`~cl_diffusion.options.redefault`. The CLI, ``--set``, ``--list`` and ``config.json`` read
``Params`` alone.

The trainer calls the hooks below and passes what they need as arguments: a :class:`TaskContext`
(task index k, the stream, and the student to call for training forwards, which under torchrun is
the DistributedDataParallel wrapper of :attr:`Strategy.model`) and, every iteration, the
:class:`Batch` with its labels. Nothing outside the strategy assigns its attributes.

=========================================  ===================================================  ======================
when                                       hook                                                 default
=========================================  ===================================================  ======================
start of task k (not on a resume in it)    :meth:`begin_task`                                   freeze the previous
                                                                                                generator (k > 0)
start of task k                            :meth:`train_data` -> ``LabeledImages``              task k's images
start of task k (and on a resume)          :meth:`trainable_parameters` -> parameters           all of the model's
every iteration                            :meth:`loss` -> ``(loss, stats)``                    eps-MSE on the batch
after ``backward``, before the step        :meth:`after_backward` (may change the gradients)    nothing
after the optimizer step                   :meth:`after_step`                                   nothing
end of task k's training, before eval      :meth:`end_task`                                     nothing
evaluation after task k                    :meth:`generator` -> eps-network to sample from      the model
                                           :meth:`solver_training` -> :class:`SolverTraining`   task k + replay
checkpoints                                :meth:`state_tensors` / :meth:`load_state_tensors`   the previous generator
saved weights ``model_task{k}``            :meth:`generator_tensors` / :meth:`load_generator`   the model's
=========================================  ===================================================  ======================

The frozen previous generator :attr:`Strategy.previous` (the model as it was at the end of task
k-1) exists once: it is the distillation teacher of replay strategies and the source of the
evaluation solver's replay, and it is checkpointed once, under ``previous.``.

Third-party packages add strategies through the entry-point group ``cl_diffusion.strategies``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Mapping, Sequence

import torch
from torch import nn

from .config import Config
from .data import LabeledImages
from .diffusion import NoiseSchedule, mse, q_sample, sample_timesteps
from .execution import Execution
from .registry import Registry
from .stream import TaskStream


@dataclass(frozen=True)
class TaskContext:
    """What every hook may need: the task index ``k`` (0-based), the ``stream``, and the ``student``
    to call for training forwards (the DDP wrapper of the model under torchrun, else the model)."""

    k: int
    stream: TaskStream
    student: nn.Module

    @property
    def n_seen(self) -> int:
        """n, the number of tasks seen including the current one."""
        return self.k + 1


@dataclass(frozen=True)
class Batch:
    """One training batch: clean images ``x0`` [B, C, H, W] in [-1, 1] and global labels int64 [B],
    both on the run's device."""

    x0: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class SolverTraining:
    """What the evaluation solver trains on during task k: real images ``data`` and, from the second
    task on, samples of the generator ``replay`` (None: no replay)."""

    data: LabeledImages
    replay: nn.Module | None


@dataclass
class Costs:
    """Cumulative costs since the start of the run; the trainer writes each task's increase.

    ``teacher_*``: wall seconds, batched forward calls and per-image evaluations of the frozen
    previous generator. ``extra_forwards`` / ``extra_backwards``: batched network passes beyond the
    student's one forward and one backward per iteration (A-GEM's reference gradient, importance
    estimation at a task's end), written per iteration (``*_per_iter``).
    """

    teacher_seconds: float = 0.0
    teacher_forwards: int = 0
    teacher_image_evals: int = 0
    extra_forwards: int = 0
    extra_backwards: int = 0

    PER_ITERATION: ClassVar[tuple[str, ...]] = ("extra_forwards", "extra_backwards")


def n_params(*modules: nn.Module | None) -> int:
    """Parameters and buffers held by ``modules``, each tensor counted once (shared ones too)."""
    seen: dict[int, int] = {}
    for m in modules:
        if m is not None:
            for t in [*m.parameters(), *m.buffers()]:
                seen[id(t)] = t.numel()
    return sum(seen.values())


class Strategy:
    """Base class: plain epsilon-MSE training on the current task, as finetune.

    Attributes: ``model`` (the student eps_theta, a plain module), ``schedule``, ``cfg``,
    ``params`` (this strategy's ``Params``), ``rng`` (the run's torch.Generator for timesteps and
    noise, checkpointed by the trainer), ``device``, ``execution``, ``costs_`` (:class:`Costs`) and
    ``previous`` (the frozen generator of the previous task, or None).
    """

    @dataclass
    class Params:
        """This strategy's own options (none for the base class)."""

    #: Whether this strategy keeps the frozen previous generator (distillation teacher, solver replay).
    keeps_previous: ClassVar[bool] = True

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, cfg: Config, rng: torch.Generator,
                 device: torch.device, execution: Execution | None = None) -> None:
        self.model = model
        self.schedule = schedule
        self.cfg = cfg
        self.params = cfg.strategy_params
        self.rng = rng
        self.device = device
        self.execution = execution or Execution()
        self.costs_ = Costs()
        self.previous: nn.Module | None = None

    # ---- training hooks ------------------------------------------------------------------------
    def begin_task(self, ctx: TaskContext) -> None:
        """Before task k trains (not called again when a run resumes inside task k)."""
        if ctx.k > 0 and self.keeps_previous:
            self.freeze_previous(ctx)

    def train_data(self, ctx: TaskContext) -> LabeledImages:
        """Images to train on during task k (uint8 [N, C, H, W]). Default: task k only."""
        return ctx.stream.tasks[ctx.k].train

    def trainable_parameters(self, ctx: TaskContext) -> list[nn.Parameter]:
        """The parameters the optimizer updates during task k (the others are frozen). Default: all."""
        return list(self.model.parameters())

    def loss(self, batch: Batch, ctx: TaskContext) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch and the stats to log: here the eps-MSE of DDPM Eq. 14."""
        x_t, t, eps = self.noise_batch(batch.x0)
        l_data = mse(ctx.student(x_t, t), eps)
        return l_data, {"loss_data": float(l_data.detach())}

    def after_backward(self, ctx: TaskContext) -> None:
        """The gradients of the loss are in ``.grad``; a strategy may change them (before clipping)."""

    def after_step(self, ctx: TaskContext) -> None:
        """The optimizer has updated the parameters."""

    def end_task(self, ctx: TaskContext) -> None:
        """Task k's training is over; evaluation follows."""

    # ---- evaluation hooks ------------------------------------------------------------------------
    def generator(self, ctx: TaskContext) -> nn.Module:
        """The eps-network the evaluation samples from after task k (a :class:`~.mixture.Mixture`
        routes each sample to one expert). Default: the model."""
        return self.model

    def freeze_previous(self, ctx: TaskContext) -> None:
        """Freeze the generator as it is now, at the end of task k-1, into :attr:`previous`."""
        self.previous = self.execution.frozen_copy(self.generator(replace(ctx, k=ctx.k - 1)))

    def solver_training(self, ctx: TaskContext) -> SolverTraining:
        """What the evaluation solver trains on during task k. Default: task k's images plus
        generative replay from the previous generator (GD, Masip et al. 2024, Sec. 5)."""
        return SolverTraining(ctx.stream.tasks[ctx.k].train, self.previous)

    # ---- costs -----------------------------------------------------------------------------------
    # Declared per class, for the cost estimate printed before a run (:mod:`cl_diffusion.preflight`).
    @classmethod
    def replay_images_per_image(cls, params: "Strategy.Params") -> float:
        """Extra images the student trains on (forward + backward) per current image, from task 2."""
        return 0.0

    @classmethod
    def teacher_forwards_per_replay_image(cls, params: "Strategy.Params") -> float:
        """Forwards of the frozen previous generator per extra image."""
        return 0.0

    @classmethod
    def trained_tasks(cls, k: int) -> Sequence[int]:
        """The tasks whose training images :meth:`train_data` returns during task k."""
        return (k,)

    def costs(self) -> dict[str, float]:
        """Cumulative cost counters since the start of the run (checkpointed by the trainer)."""
        return asdict(self.costs_)

    def restore_costs(self, values: Mapping[str, float]) -> None:
        """Set the counters from :meth:`costs` output (a resume)."""
        kinds = self.costs()
        self.costs_ = Costs(**{k: type(kinds[k])(v) for k, v in values.items() if k in kinds})

    def storage(self) -> dict[str, int]:
        """What the strategy holds at the end of a task: network parameters (model, frozen copies,
        per-parameter importances) and real images kept in a buffer."""
        return {"params_stored": n_params(self.model, self.previous), "buffer_images": 0}

    # ---- state -------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors a resume needs besides the model and optimizer: the previous generator."""
        if self.previous is None:
            return {}
        return {f"previous.{k}": v for k, v in self.previous.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        """Restore what :meth:`state_tensors` saved; ``ctx.k`` is the task the run resumes in.
        (Checkpoints written before the contract named it ``teacher.`` load too.)"""
        own = _strip(tensors, "previous.") or _strip(tensors, "teacher.")
        if own:
            self.previous = self.execution.frozen_copy(self.generator(replace(ctx, k=ctx.k - 1)))
            self.previous.load_state_dict(own)

    def generator_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors saved as ``model_task{k}.safetensors``: what :meth:`load_generator` needs to
        sample after task k. Default: the model's state dict."""
        return dict(self.model.state_dict())

    def load_generator(self, tensors: Mapping[str, torch.Tensor], ctx: TaskContext) -> None:
        """Inverse of :meth:`generator_tensors` (``cl_diffusion.reevaluate``)."""
        self.model.load_state_dict(dict(tensors))

    # ---- helpers shared by all strategies -----------------------------------------------------
    def noise_batch(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw t ~ U{0..T-1} and eps ~ N(0, I); return (x_t, t, eps), DDPM Eq. 4.

        Shapes: x0, x_t, eps [B, C, H, W]; t int64 [B].
        """
        t = sample_timesteps(x0.shape[0], self.schedule.T, self.rng, x0.device)
        eps = self.randn_like(x0)
        return q_sample(self.schedule, x0, t, eps), t, eps

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """N(0, I) noise shaped like ``x``, from the run's generator."""
        return torch.randn(x.shape, generator=self.rng, device=x.device, dtype=x.dtype)

    def random_t(self, n: int) -> torch.Tensor:
        """t' ~ U{0..T-1}, int64 [n], from the run's generator."""
        return sample_timesteps(n, self.schedule.T, self.rng, self.device)


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", entry_point_group="cl_diffusion.strategies")
