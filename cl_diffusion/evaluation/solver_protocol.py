"""The solver protocol behind ACC and forgetting (GD, Masip et al. 2024, Sec. 5): one classifier
(:class:`.solver.Solver`) trained along the stream on what the strategy says
(``Strategy.solver_training``: real images, and replay from the previous generator), tested on every
seen task after each one.

``acc_matrix[k, j]`` is its accuracy on task j after task k; forgetting after task k is the mean over
j < k of max_{j <= l < k} acc[l, j] - acc[k, j] (Chaudhry et al. 2018), 0 after the first task.
The replayed samples' noise (and a mixture's expert of each) comes from generators seeded by
(run seed, k), fresh for every batch (the paper) or from a pool of ``solver_replay_pool`` samples.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .. import seeding
from ..diffusion import SAMPLERS
from ..execution import Execution
from ..mixture import routing
from .solver import Solver

if TYPE_CHECKING:
    from ..config import Config
    from ..diffusion import NoiseSchedule
    from ..strategy import SolverTraining
    from ..stream import TaskStream

NAN = float("nan")


class SolverProtocol:
    """The solver (None when ``solver_epochs`` is 0), its accuracy matrix and its replay."""

    def __init__(self, cfg: "Config", stream: "TaskStream", schedule: "NoiseSchedule", device: torch.device,
                 execution: Execution) -> None:
        self.cfg, self.ev, self.stream, self.device = cfg, cfg.eval, stream, device
        self.schedule, self.execution = schedule, execution
        self.shape = (stream.channels, stream.image_size, stream.image_size)
        ev = self.ev
        self.solver = Solver(stream.channels, stream.num_classes, seed=cfg.run.seed, epochs=ev.solver_epochs,
                             iters_per_task=ev.solver_iters_per_task, lr=ev.solver_lr,
                             batch_size=ev.solver_batch_size, kd_temperature=ev.kd_temperature,
                             kd_variant=ev.kd_variant, device=device) if ev.solver_epochs > 0 else None
        n = stream.n_tasks
        self.acc_matrix = torch.full((n, n), NAN, dtype=torch.float64)  # [k, j]: solver acc on j after k
        self.replays: bool | None = None  # whether the last task's solver replayed (eval_info.json)

    def after_task(self, k: int, plan: "SolverTraining", per_task: list[dict[str, Any]]) -> dict[str, float]:
        """Train the solver on task k (as ``plan`` says), then ACC, forgetting and per-task accuracy."""
        if self.solver is None:
            for r in per_task:
                r["acc"] = NAN
            return {"acc": NAN, "forgetting": NAN}
        start = time.perf_counter()
        self.replays = plan.replay is not None and k > 0
        replay = self._replay(k, plan.replay) if self.replays else None
        stats = self.solver.train_task(k, plan.data, n_seen=k + 1, replay=replay, progress=self.cfg.run.progress)
        stats["solver_seconds"] = time.perf_counter() - start  # including the replay pool, if any
        hits = total = 0
        for j, r in enumerate(per_task):
            h, n = self.solver.correct(self.stream.tasks[j].test, self.ev.eval_batch_size)
            hits, total = hits + h, total + n
            self.acc_matrix[k, j] = r["acc"] = h / max(n, 1)
        return {"acc": hits / max(total, 1), "forgetting": self.forgetting(k), **stats}

    def forgetting(self, k: int) -> float:
        """Mean over j < k of max_{j <= l < k} acc[l, j] - acc[k, j]; 0 after the first task."""
        if k == 0:
            return 0.0
        drops = [float(self.acc_matrix[j:k, j].max() - self.acc_matrix[k, j]) for j in range(k)]
        return sum(drops) / len(drops)

    def _replay(self, k: int, gen: nn.Module) -> Callable[[int], torch.Tensor]:
        """replay(m): m samples in [-1, 1] of the generator ``gen`` frozen after task k-1 (DDIM, eval_steps).

        Fresh samples for every call, or (``solver_replay_pool`` > 0) draws from a pool sampled once;
        all noise (and a mixture's expert of each replayed sample) from generators seeded by (seed, k).
        """
        run, sampler = self.cfg.run, SAMPLERS["ddim"]
        g_noise = seeding.generator(run.seed, seeding.SOLVER_REPLAY, k)
        g_eta = seeding.generator(run.seed, seeding.SOLVER_REPLAY, k, 1, device=self.device)
        route_seed, drawn = seeding.derive_seed(run.seed, seeding.SOLVER_REPLAY, k, 3), [0]

        def fresh(m: int) -> torch.Tensor:
            x_T = torch.randn((m, *self.shape), generator=g_noise).to(self.device)
            indices = torch.arange(drawn[0], drawn[0] + m)
            drawn[0] += m
            with torch.no_grad(), self.execution.autocast(), routing(gen, route_seed, indices):
                x = sampler(gen, self.schedule, x_T, steps=self.ev.eval_steps, eta=run.eta, spacing=run.spacing,
                            clip_x0=run.clip_x0, generator=g_eta)
            return x.float().clamp(-1.0, 1.0)

        size, bs = self.ev.solver_replay_pool, self.ev.eval_batch_size
        if size == 0:
            return fresh
        pool = torch.cat([fresh(min(bs, size - lo)) for lo in range(0, size, bs)])
        g_pick = seeding.generator(run.seed, seeding.SOLVER_REPLAY, k, 2)
        return lambda m: pool[torch.randint(size, (m,), generator=g_pick).to(pool.device)]

    def info(self) -> dict[str, Any]:
        """How the solver ran (part of ``eval_info.json``)."""
        ev = self.ev
        return {"acc": "solver accuracy on the seen tasks' test sets, argmax over all classes",
                "forgetting": "mean over old tasks j of (best acc on j after an earlier task) - (acc on j now); "
                              "0 first",
                "solver": {"replays_generator": self.replays, "enabled": self.solver is not None,
                           "n_params": sum(p.numel() for p in self.solver.net.parameters()) if self.solver else 0,
                           "kd_variant": ev.kd_variant, "kd_temperature": ev.kd_temperature,
                           "replay": (f"a pool of {ev.solver_replay_pool} samples per task" if ev.solver_replay_pool
                                      else "fresh samples for every batch")}}

    # ---- resume ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Solver weights and the accuracy matrix (CPU copies). The solver's teacher for task k+1 is
        the solver after task k, and the replay generator is the strategy's, so neither is stored twice."""
        sd: dict[str, torch.Tensor] = {"acc_matrix": self.acc_matrix.clone()}
        if self.solver is not None:
            sd.update({f"solver.{n}": v.detach().cpu().clone() for n, v in self.solver.net.state_dict().items()})
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.acc_matrix = sd["acc_matrix"].to(torch.float64).clone()
        solver = {n[len("solver."):]: v for n, v in sd.items() if n.startswith("solver.")}
        if self.solver is not None and solver:
            self.solver.net.load_state_dict(solver)
