"""The generative-replay solver behind ACC and forgetting (GD, Masip et al. 2024, Sec. 5).

A small CNN classifier is trained along the stream, one task at a time, with Adam (``solver_lr``,
a fresh optimizer per task) for ``solver_epochs`` epochs (capped at ``solver_iters_per_task``
iterations). Each batch holds ``solver_batch_size`` real images of the current task and, from the
second task on in ``"replay"`` mode, as many samples from the generator frozen after the previous
task, soft-labelled by the solver frozen after the previous task (the teacher):

    loss = (1/n) CE(student(x_real), y) + (1 - 1/n) KD(student(x_replay), teacher(x_replay)),

with ``n`` the number of tasks seen including the current one (first task: CE only). Which real
images and which generator (if any) it learns from is the strategy's choice
(``Strategy.solver_training``: replay for generative strategies, all data seen so far for joint,
the current task alone for finetune). The evaluator supplies the replayed samples (fresh per
batch, or from a per-task pool: ``solver_replay_pool``).
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import LabeledImages, to_model_range
from .. import loop, seeding

KD_VARIANTS = ("standard", "paper-code")

# replay(m) -> m replayed samples [m, C, H, W] in [-1, 1] on the solver's device
Replay = Callable[[int], torch.Tensor]


class SolverNet(nn.Module):
    """3 x (conv3x3 + ReLU + max-pool) with 32, 64, 64 channels -> 4x4 average pool -> fc 64 -> fc K.

    About 122k parameters for 1-channel input and 10 classes, whatever the image size.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((channels, 32), (32, 64), (64, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 64), nn.ReLU(),
                                 nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of images ``x [B, C, H, W]`` in [-1, 1]."""
        return self.net(x)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float,
            variant: str = "standard") -> torch.Tensor:
    """Distillation loss at temperature ``T``, scaled by ``T^2`` (Hinton et al. 2015), batch mean.

    - ``"standard"``: ``T^2 KL(p_teacher || p_student) = T^2 sum p_t (log p_t - log p_s)``: the
      teacher's softened probabilities are the targets (Hinton et al.; LwF).
    - ``"paper-code"``: ``T^2 sum p_s (log p_s - log p_t) = T^2 KL(p_student || p_teacher)``: the
      paper's code puts the student's probabilities outside the log, i.e. the reverse KL, which is
      mode-seeking (the student may drop classes the teacher finds unlikely) instead of covering
      the teacher's whole distribution. Both are 0 iff the two distributions agree.

    ``p = softmax(logits / T)``; logits ``[B, K]``.
    """
    log_ps = F.log_softmax(student_logits / T, dim=1)
    log_pt = F.log_softmax(teacher_logits / T, dim=1)
    if variant == "standard":
        kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    elif variant == "paper-code":
        kl = (log_ps.exp() * (log_ps - log_pt)).sum(1)
    else:
        raise ValueError(f"unknown KD variant {variant!r}; valid: {', '.join(KD_VARIANTS)}")
    return T * T * kl.mean()


def solver_loss(real_logits: torch.Tensor, labels: torch.Tensor, n_seen: int,
                replay_student: torch.Tensor | None = None, replay_teacher: torch.Tensor | None = None,
                T: float = 2.0, variant: str = "standard") -> tuple[torch.Tensor, dict[str, float]]:
    """``(1/n) CE(real) + (1 - 1/n) KD(replay)``; plain CE when there is no replay. Returns (loss, stats)."""
    ce = F.cross_entropy(real_logits, labels)
    if replay_student is None:
        return ce, {"ce": float(ce.detach())}
    kd = kd_loss(replay_student, replay_teacher, T, variant)
    w = 1.0 / n_seen
    return w * ce + (1.0 - w) * kd, {"ce": float(ce.detach()), "kd": float(kd.detach())}


class Solver:
    """The solver network, its training on one task at a time, and its per-task test accuracy."""

    def __init__(self, channels: int, num_classes: int, *, seed: int, epochs: int, iters_per_task: int,
                 lr: float, batch_size: int, kd_temperature: float, kd_variant: str, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.derive_seed(seed, seeding.SOLVER_INIT))
            self.net = SolverNet(channels, num_classes)
        self.net.to(device)
        self.seed, self.epochs, self.iters_per_task, self.lr = seed, epochs, iters_per_task, lr
        self.batch_size, self.T, self.variant, self.device = batch_size, kd_temperature, kd_variant, device

    def iterations(self, n_images: int) -> int:
        return loop.iterations(self.epochs, n_images, self.batch_size, self.iters_per_task)

    def train_task(self, k: int, data: LabeledImages, n_seen: int, replay: Replay | None = None,
                   progress: bool = False) -> dict[str, float]:
        """Train on task ``k``'s ``data`` (+ replay); batch order from (seed, k). Returns mean losses."""
        teacher = copy.deepcopy(self.net).eval().requires_grad_(False) if replay is not None else None
        g = seeding.generator(self.seed, seeding.SOLVER_DATA, k)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        total, sums, start = self.iterations(len(data)), {"ce": 0.0, "kd": 0.0}, time.perf_counter()
        bar = tqdm(total=total, desc=f"solver task {k + 1}", disable=not progress, leave=False)
        self.net.train()
        for step in loop.epoch_batches(len(data), self.batch_size, total, g):  # each epoch: randperm from g
            x = to_model_range(data.images[step.idx].to(self.device))
            y = data.labels[step.idx].to(self.device)
            loss, stats = self._loss(x, y, n_seen, teacher, replay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for key, v in stats.items():
                sums[key] += v
            bar.update(1)
        bar.close()
        self.net.eval()
        n = max(total, 1)  # epoch_batches yields exactly ``total`` steps
        return {"solver_iters": float(total), "solver_ce": sums["ce"] / n,
                "solver_kd": sums["kd"] / n if replay is not None else float("nan"),
                "solver_seconds": time.perf_counter() - start}

    def _loss(self, x: torch.Tensor, y: torch.Tensor, n_seen: int, teacher: nn.Module | None,
              replay: Replay | None) -> tuple[torch.Tensor, dict[str, float]]:
        if replay is None or teacher is None:
            return solver_loss(self.net(x), y, n_seen)
        x_replay = replay(x.shape[0])
        with torch.no_grad():
            t_logits = teacher(x_replay)
        logits = self.net(torch.cat([x, x_replay]))
        return solver_loss(logits[: x.shape[0]], y, n_seen, logits[x.shape[0]:], t_logits, self.T, self.variant)

    @torch.inference_mode()
    def correct(self, data: LabeledImages, batch_size: int) -> tuple[int, int]:
        """(correctly classified, total) on ``data``: argmax over all classes (class-incremental)."""
        self.net.eval()
        hits = 0
        for lo in range(0, len(data), batch_size):
            x = to_model_range(data.images[lo:lo + batch_size].to(self.device))
            hits += int((self.net(x).argmax(1).cpu() == data.labels[lo:lo + batch_size]).sum())
        return hits, len(data)
