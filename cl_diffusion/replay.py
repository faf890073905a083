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
from typing import ClassVar, Mapping

import torch
from torch import nn

from .diffusion import ddim_sample, q_sample, sample_timesteps
from .diffusion.schedule import NoiseSchedule
from .execution import Execution
from .options import opt
from .strategy import CostCounters, Strategy


class Teacher:
    """A frozen copy theta' of the model, with cost counters.

    It shares no parameters, buffers or optimizer state with the student. All its calls run
    under ``torch.no_grad()`` and are timed; ``forwards`` counts batched network calls and
    ``image_evals`` counts per-image network evaluations (forwards x batch size).
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, steps: int, spacing: str, clip_x0: bool,
                 counters: CostCounters, execution: Execution | None = None) -> None:
        self.net = (execution or Execution()).frozen_copy(model)
        self.schedule, self.steps, self.spacing, self.clip_x0 = schedule, steps, spacing, clip_x0
        self.counters = counters

    def _counted(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.counters.teacher_forwards += 1
        self.counters.teacher_image_evals += x.shape[0]
        return self.net(x, t)

    def _timed(self, fn, *args, **kwargs) -> torch.Tensor:
        start = time.perf_counter()
        with torch.no_grad():
            out = fn(*args, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.counters.teacher_seconds += time.perf_counter() - start
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
    """Base of gr, gd, lwf, gaussian and pgd: a teacher frozen at each task boundary plus a
    replay term. Subclasses implement :meth:`replay_pair` only."""

    @dataclass
    class Params:
        lambda_: float = opt(1.0, "weight lambda of the replay/distillation term", min=0.0, key="lambda")
        teacher_steps: int = opt(2, "DDIM steps the teacher uses to generate replay (eta 0)", min=1)

    solver_mode: ClassVar[str] = "replay"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher: Teacher | None = None

    # ---- the one hook subclasses write --------------------------------------------------------
    def replay_pair(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (replay input [B, C, H, W], its timesteps t' int64 [B], target [B, C, H, W]).

        ``x0``, ``x_t``, ``t`` are the current batch's clean images, noisy images and timesteps.
        """
        raise NotImplementedError

    # ---- shared building blocks for replay_pair -------------------------------------------------
    def random_t(self, n: int) -> torch.Tensor:
        """t' ~ U{0..T-1}, int64 [n]."""
        return sample_timesteps(n, self.schedule.T, self.generator, self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)

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
    def loss(self, x0: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """L = (1/n) L_data + (1 - 1/n) lambda L_replay (Masip et al. 2024, Sec. 4).

        The current batch and the replay batch go through the student in one forward pass.
        """
        x_t, t, eps = self.noise_batch(x0)
        if self.teacher is None:
            l_data = torch.mean((self.model(x_t, t) - eps) ** 2)
            return l_data, {"loss_data": float(l_data.detach())}
        x_r, t_r, target = self.replay_pair(x0, x_t, t)
        out = self.model(torch.cat([x_t, x_r]), torch.cat([t, t_r]))
        B = x0.shape[0]
        l_data = torch.mean((out[:B] - eps) ** 2)
        l_replay = torch.mean((out[B:] - target) ** 2)
        n = self.task_index + 1
        loss = l_data / n + (1.0 - 1.0 / n) * self.params.lambda_ * l_replay
        return loss, {"loss_data": float(l_data.detach()), "loss_replay": float(l_replay.detach())}

    # ---- teacher lifecycle ----------------------------------------------------------------------
    def _new_teacher(self) -> Teacher:
        run = self.cfg.run
        return Teacher(self.model, self.schedule, self.params.teacher_steps, run.spacing, run.clip_x0, self.counters,
                       Execution.resolve(run, self.device))

    def after_task(self, k: int) -> None:
        """Freeze the model into the next task's teacher theta'."""
        self.teacher = self._new_teacher()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            return {}
        return {f"teacher.{k}": v for k, v in self.teacher.net.state_dict().items()}

    def load_state_tensors(self, tensors: Mapping[str, torch.Tensor], k_done: int) -> None:
        own = {k[len("teacher."):]: v for k, v in tensors.items() if k.startswith("teacher.")}
        if own:
            self.teacher = self._new_teacher()
            self.teacher.net.load_state_dict(own)
