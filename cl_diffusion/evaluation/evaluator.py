"""The evaluation after each task (GD, Masip et al. 2024, Sec. 5), in one object the trainer calls.

After task k (0-based) :meth:`Evaluator.after_task` draws ``eval_samples`` samples with DDIM
(``eval_steps`` steps, the run's eta/spacing/clip), sample i from x_T seeded by (run seed, i) only,
and computes the metrics row (FID and FID_clf, KLD/ARD, KID and precision/recall in the
classifier's and Inception's features, the solver's ACC and forgetting) and one per-task row per
seen task j (the samples the evaluation classifier routes to task j's classes, and the solver's
accuracy on j). Every column is defined once, in ``docs/evaluation.md``; ``eval_info.json`` says
how each was made in a run.

Three parts do the work: :mod:`.sample_metrics` (the samples and their metrics), :mod:`.solver_protocol`
(ACC and forgetting) and :mod:`.outputs` (``class_hist_task{k+1}.png``, ``samples_task{k+1}.png``
unless the trainer already drew it from the same noise, ``eval_info.json``, TensorBoard and W&B).

Under torchrun each rank draws a contiguous slice of the sample indices (same per-index noise, so
the samples do not depend on the number of ranks at eta 0) and rank 0 gathers them; everything
after that runs on rank 0 while the other ranks wait at a barrier and get empty results.

All randomness in ``after_task(k)`` comes from generators seeded by (run seed, k), so it gives the
same numbers when re-run after :meth:`load_state_dict` of the state saved before it (calling it
twice on one instance trains the solver twice). The solver's replayed samples are fresh for every
batch (the paper), or drawn from a pool of ``solver_replay_pool`` samples made once per task.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .. import distributed
from ..execution import Execution
from ..sampling import Sampling
from .outputs import EvaluationWriter
from .sample_metrics import NAN, SampleMetrics
from .solver_protocol import SolverProtocol

if TYPE_CHECKING:
    from ..config import Config
    from ..diffusion import NoiseSchedule
    from ..strategy import SolverTraining
    from ..stream import TaskStream


class Evaluator:
    """Evaluation after each task; see the module docstring. ``execution``: the run's (autocast)."""

    def __init__(self, cfg: "Config", stream: "TaskStream", schedule: "NoiseSchedule", device: torch.device,
                 run_dir: Path, execution: Execution | None = None, log: Callable[[str], None] = print) -> None:
        self.cfg, self.ev, self.device = cfg, cfg.eval, torch.device(device)
        schedule = schedule.to(self.device) if hasattr(schedule, "to") else schedule
        execution = execution or Execution.resolve(cfg.run, self.device)
        self.samples = SampleMetrics(cfg, stream, schedule, self.device, Sampling.of(cfg, execution), log)
        self.solver_protocol = SolverProtocol(cfg, stream, schedule, self.device, execution)
        self.writer = EvaluationWriter(cfg, stream.class_names, run_dir)

    @property
    def solver(self):  # noqa: ANN201
        """The solver (:class:`.solver.Solver`), or None when ``solver_epochs`` is 0."""
        return self.solver_protocol.solver

    @property
    def acc_matrix(self) -> torch.Tensor:
        """float64 [T, T]: the solver's accuracy on task j after task k (NaN above the diagonal)."""
        return self.solver_protocol.acc_matrix

    def forgetting(self, k: int) -> float:
        return self.solver_protocol.forgetting(k)

    def prepare(self) -> None:
        """Load (or train) the evaluation classifier and the Inception network; idempotent."""
        self.samples.prepare()

    def after_task(self, k: int, model: nn.Module, solver: "SolverTraining") -> tuple[dict[str, float], list[dict]]:
        """Evaluate the generator ``model`` (``model(x_t, t) -> eps``, e.g. a Mixture) after task ``k``
        (0-based); the solver trains on what the strategy's ``solver`` plan says.

        Returns the metrics-row additions and the per-task rows (one per seen task); on data-parallel
        ranks other than 0, which only help with the sampling, ``({}, [])``.
        """
        if not distributed.is_main():
            if self.ev.eval_samples > 0:
                self.samples.generate(model)
            distributed.barrier()  # while rank 0 evaluates
            return {}, []
        start = time.perf_counter()
        self.prepare()
        assert self.samples.clf is not None
        per_task: list[dict[str, Any]] = [{"task_after": k + 1, "task_j": j + 1} for j in range(k + 1)]
        row: dict[str, float] = {"fid": NAN, "fid_clf": NAN, "kld": NAN, "ard": NAN}
        if self.ev.eval_samples > 0:
            t0 = time.perf_counter()
            samples = self.samples.generate(model)
            row["eval_sample_seconds"] = time.perf_counter() - t0
            metrics, p_true, p_gen = self.samples.compute(k, samples, per_task)
            row.update(metrics)
            self.writer.pngs(k, samples, p_true, p_gen, row)
        row.update(self.solver_protocol.after_task(k, solver, per_task))
        row.update({"eval_samples": float(self.ev.eval_samples), "clf_test_acc": self.samples.clf.test_acc,
                    "eval_seconds": time.perf_counter() - start})
        self.writer.log(k, row, per_task)
        self.writer.info(k, self.info())
        distributed.barrier()
        return row, per_task

    def info(self) -> dict[str, Any]:
        """What the metrics mean and how they were made (written to ``eval_info.json``)."""
        return {**self.samples.info(), **self.solver_protocol.info()}

    def close(self) -> None:
        """Close the TensorBoard and W&B loggers, if any."""
        self.writer.close()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What a resume needs: the solver's weights and accuracy matrix (CPU copies)."""
        return self.solver_protocol.state_dict()

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.solver_protocol.load_state_dict(sd)
