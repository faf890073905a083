"""The teacher and the replay batch, shared by every replay and distillation strategy.

Masip et al. (2024), Sec. 4 and the released code. With n tasks seen (current included), the
loss on tasks after the first is

    L = (1/n) L_data + (1 - 1/n) * lambda * L_replay,        L = L_data on the first task,

where L_data is the epsilon-MSE on the B current images and L_replay is the MSE between the
student eps_theta(input, t') and a target, on B replay inputs made fresh by the frozen teacher
theta' at every iteration. Each strategy defines only :meth:`DistillationStrategy.replay_pair`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from .diffusion import ddim_sample, mse, q_sample
from .diffusion.schedule import NoiseSchedule
from .options import opt
from .strategy import Batch, Costs, Strategy, TaskContext


class Teacher:
    """The frozen previous generator theta' (:attr:`Strategy.previous`, not a copy of it) as a
    teacher, with cost counters.

    All its calls run under ``torch.no_grad()`` and are timed; ``teacher_forwards`` counts batched
    network calls and ``teacher_image_evals`` per-image network evaluations (forwards x batch size).
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, steps: int, spacing: str, clip_x0: bool,
                 costs: Costs) -> None:
        self.net, self.schedule, self.steps, self.spacing, self.clip_x0 = net, schedule, steps, spacing, clip_x0
        self.costs = costs

    def _counted(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.costs.teacher_forwards += 1
        self.costs.teacher_image_evals += x.shape[0]
        return self.net(x, t)

    def _timed(self, fn, *args, **kwargs) -> torch.Tensor:
        start = time.perf_counter()
        with torch.no_grad():
            out = fn(*args, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.costs.teacher_seconds += time.perf_counter() - start
        return out

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps_theta'(x_t, t): [B, C, H, W], t int64 [B] -> [B, C, H, W]."""
        return self._timed(self._counted, x_t, t)

    def sample(self, x_T: torch.Tensor, stop_at: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's DDIM sample (eta 0, ``steps`` steps) from noise x_T [B, C, H, W].

        With ``stop_at`` (int64 [B]) each trajectory stops at its own timestep and x_t' is returned.
        """
        return self._timed(ddim_sample, self._counted, self.schedule, x_T, steps=self.steps, eta=0.0,
                           spacing=self.spacing, clip_x0=self.clip_x0, stop_at=stop_at)


class DistillationStrategy(Strategy):
    """Base of gr, gd, lwf, gaussian and pgd: the previous generator as teacher plus a replay term.
    Subclasses implement :meth:`replay_pair` only."""

    @dataclass
    class Params:
        lambda_: float = opt(1.0, "weight lambda of the replay/distillation term", min=0.0, key="lambda")
        teacher_steps: int = opt(2, "DDIM steps the teacher uses to generate replay (eta 0)", min=1,
                                 max="num_timesteps")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._teacher: Teacher | None = None

    @property
    def teacher(self) -> Teacher | None:
        """The teacher over :attr:`previous` (None on the first task)."""
        if self.previous is None:
            return None
        if self._teacher is None or self._teacher.net is not self.previous:
            run = self.cfg.run
            self._teacher = Teacher(self.previous, self.schedule, self.params.teacher_steps, run.spacing,
                                    run.clip_x0, self.costs_)
        return self._teacher

    @classmethod
    def replay_images_per_image(cls, params: "DistillationStrategy.Params") -> float:
        """B replay images beside the B current ones."""
        return 1.0

    #: For the cost estimate: the share of the teacher's ``teacher_steps``-step trajectory run to make
    #: one replay input (1 for a whole sample, 0 when the input is not generated), and the teacher
    #: forwards beside it (the target prediction). The defaults are gd's: a sample and a target.
    trajectory_share: float = 1.0
    other_teacher_forwards: float = 1.0

    @classmethod
    def teacher_forwards_per_replay_image(cls, params: "DistillationStrategy.Params") -> float:
        return params.teacher_steps * cls.trajectory_share + cls.other_teacher_forwards

    # ---- the one hook subclasses write --------------------------------------------------------
    def replay_pair(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (replay input [B, C, H, W], its timesteps t' int64 [B], target [B, C, H, W]).

        ``x0``, ``x_t``, ``t`` are the current batch's clean images, noisy images and timesteps.
        """
        raise NotImplementedError

    # ---- shared building blocks for replay_pair -------------------------------------------------
    def noised_teacher_samples(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's DDIM sample x0~, noised forward to a random t'.

        Returns (sqrt(alpha_bar) x0~ + sqrt(1 - alpha_bar) eps', t', eps'), DDPM Eq. 4.
        """
        assert self.teacher is not None
        x0_tilde = self.teacher.sample(self.randn_like(like))
        t_r = self.random_t(like.shape[0])
        eps_r = self.randn_like(like)
        return q_sample(self.schedule, x0_tilde, t_r, eps_r), t_r, eps_r

    # ---- the loss ---------------------------------------------------------------------------
    def loss(self, batch: Batch, ctx: TaskContext) -> tuple[torch.Tensor, dict[str, float]]:
        """L = (1/n) L_data + (1 - 1/n) lambda L_replay (Masip et al. 2024, Sec. 4).

        The current batch and the replay batch go through the student in one forward pass.
        """
        if self.teacher is None:
            return super().loss(batch, ctx)
        x0 = batch.x0
        x_t, t, eps = self.noise_batch(x0)
        x_r, t_r, target = self.replay_pair(x0, x_t, t)
        out = ctx.student(torch.cat([x_t, x_r]), torch.cat([t, t_r]))
        B = x0.shape[0]
        l_data, l_replay = mse(out[:B], eps), mse(out[B:], target)
        n = ctx.n_seen
        loss = l_data / n + (1.0 - 1.0 / n) * self.params.lambda_ * l_replay
        return loss, {"loss_data": float(l_data.detach()), "loss_replay": float(l_replay.detach())}
