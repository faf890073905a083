"""The one training loop: tasks -> epochs -> batches, with checkpoints and evaluation.

For each task k the :class:`Trainer` calls the strategy's hooks (:mod:`cl_diffusion.strategy`):
``begin_task``, ``train_data`` and ``trainable_parameters``; then for ``epochs`` (capped by
``iters_per_task``) ``loss``, backward, ``after_backward``, gradient-norm clipping, an Adam step and
``after_step``; then ``end_task``. It draws a sample grid from the strategy's ``generator``, runs the
evaluator and appends one row to ``metrics.csv``. All randomness comes from explicit generators
(:mod:`cl_diffusion.seeding`) whose states are checkpointed, so a run killed at any point and
resumed from its last checkpoint ends with the same metrics (wall-clock ``*_seconds`` aside).
Checkpoints come at task ends, every ``checkpoint_every`` iterations and every ``checkpoint_minutes``
of wall clock; SIGTERM (or ``stop_signal``) ends the run after the current iteration with one more
(:mod:`.preemption`).

Under torchrun (:mod:`.distributed`) every rank takes its share of each global batch and the
strategy gets the DistributedDataParallel wrapper as its student (``TaskContext.student``);
losses are averaged over the ranks, so every rank holds the same :class:`Position`. Rank 0 writes the files; each rank's RNG
states and cost counters go into the checkpoint, so a resume is exact there too.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import distributed
from .checkpoint import load_latest, restore_rng, rng_state, save_checkpoint, save_weights
from .config import Config
from .data import LabeledImages, random_hflip, to_model_range
from .errors import NumericalError
from .execution import Execution
from .io import require_folder, write_csv
from .loop import batches_per_epoch, epoch_batches, iterations
from .preemption import Preempted, StopRequest
from .sampling import Sampling, sample_grid
from .seeding import order_generator
from .strategy import Batch, Costs, Strategy, TaskContext
from .stream import TaskStream


@dataclass
class Position:
    """Where the run is, plus per-task accumulators; JSON-serialisable, checkpointed."""

    task: int = 0
    phase: str = "train"  # "train" (task `task` is being trained) or "eval" (trained, not evaluated)
    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    iters: int = 0  # iterations done in this task
    loss_sum: float = 0.0
    stat_sums: dict[str, float] = field(default_factory=dict)
    nan_skipped: int = 0
    train_seconds: float = 0.0  # wall clock of the training steps
    # CPU time of this process over the same steps (all threads: core-seconds), which sharing the
    # machine does not inflate; None when the task was resumed from a checkpoint that predates it
    train_cpu_seconds: float | None = 0.0
    costs_at_start: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_task_rows: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Runs one configured stream from its current :class:`Position` to the end."""

    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, stream: TaskStream, strategy: Strategy,
                 evaluator: Any, execution: Execution, log: Callable[[str], None] = print) -> None:
        self.cfg, self.run_dir, self.device, self.stream = cfg, run_dir, device, stream
        self.strategy, self.evaluator, self.execution, self.log = strategy, evaluator, execution, log
        self.model, self.rng = strategy.model, strategy.rng
        self.pos = Position()
        self.params: list[nn.Parameter] = []  # what the optimizer updates in this task
        self.optimizer: torch.optim.Optimizer | None = None
        self.ddp = distributed.wrap(self.model, device)  # ``model`` itself on a single process
        self.stop = StopRequest(cfg.run.stop_signal)  # SIGTERM / stop_signal: checkpoint, then exit
        self.last_checkpoint = time.monotonic()  # wall clock of the newest checkpoint (checkpoint_minutes)
        self.saved_at = (0, 0)  # (task, iteration) of the newest checkpoint, for the stop message

    def context(self, k: int) -> TaskContext:
        """What the strategy's hooks get during task k; the student is the DDP wrapper under torchrun."""
        return TaskContext(k, self.stream, self.ddp)

    def _train_parameters(self, ctx: TaskContext, new_optimizer: bool) -> None:
        """Freeze all but the strategy's trainable parameters; a new Adam over them if asked, or if
        the trainable set changed."""
        self.params = self.strategy.trainable_parameters(ctx)
        chosen = {id(p) for p in self.params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in chosen)
        current = [p for g in self.optimizer.param_groups for p in g["params"]] if self.optimizer else []
        if new_optimizer or [id(p) for p in current] != [id(p) for p in self.params]:
            self.optimizer = torch.optim.Adam(self.params, lr=self.cfg.run.lr)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            with self.stop:
                while self.pos.task < self.stream.n_tasks:
                    k = self.pos.task
                    if self.pos.phase == "train":
                        self.train_task(k)
                        self.pos.phase = "eval"
                        self.checkpoint()
                        self._stop_if_asked()
                    self.finish_task(k)
                    self._stop_if_asked()
        except Preempted as stop:
            if distributed.is_main():
                task, it = self.saved_at
                print(f"stopped by {stop.name} at task {task + 1}, iteration {it}; resume with --resume "
                      f"{self.run_dir}", file=sys.stderr, flush=True)
            raise
        finally:
            if self.evaluator is not None:
                self.evaluator.close()

    def iterations_per_task(self, n_images: int) -> int:
        run = self.cfg.run
        return iterations(run.epochs, n_images, run.batch_size, run.iters_per_task)

    def train_task(self, k: int) -> None:
        run, pos, ctx = self.cfg.run, self.pos, self.context(k)
        if pos.iters == 0:
            self.strategy.begin_task(ctx)
            pos.costs_at_start = self.strategy.costs()
        data = self.strategy.train_data(ctx)
        n_iters = self.iterations_per_task(len(data))
        self._train_parameters(ctx, new_optimizer=pos.iters == 0 and (run.reset_optimizer or k == 0))
        bar = self._bar(total=n_iters, initial=pos.iters, desc=f"task {k + 1}/{self.stream.n_tasks}")
        self.ddp.train()
        n, n_batches = len(data), batches_per_epoch(len(data), run.batch_size)
        # resumes at pos.iters (== pos.epoch * n_batches + pos.batch): each epoch's order is its own
        for step in epoch_batches(n, run.batch_size, n_iters, lambda epoch: self._epoch_order(k, epoch, n),
                                  start=pos.iters):
            pos.epoch, pos.batch = step.epoch, step.batch
            start, cpu_start = time.perf_counter(), time.process_time()
            self._step(self._batch(data, distributed.shard(step.idx)), ctx)  # this rank's share
            pos.batch += 1  # == n_batches after an epoch's last batch (a resume there starts the next)
            pos.iters += 1
            pos.train_seconds += time.perf_counter() - start
            if pos.train_cpu_seconds is not None:
                pos.train_cpu_seconds += time.process_time() - cpu_start
            bar.update(1)
            stop, due = self.stop.poll(self._checkpoint_due())  # agreed by every rank
            every = run.checkpoint_every and pos.iters % run.checkpoint_every == 0
            if pos.iters < n_iters and (stop or due or every):  # the last one: run() checkpoints
                self.checkpoint()
                if stop:
                    raise self.stop.stop()
        if n_batches:  # the position after the task: a finished epoch moves to the next one
            pos.epoch, pos.batch = divmod(pos.iters, n_batches)
        bar.close()
        self.strategy.end_task(ctx)

    def _epoch_order(self, k: int, epoch: int, n: int) -> torch.Tensor:
        """The data order of one epoch, from a generator seeded by (seed, task, epoch)."""
        return torch.randperm(n, generator=order_generator(self.cfg.run.seed, k, epoch))

    def _batch(self, data: LabeledImages, idx: torch.Tensor) -> Batch:
        """The batch ``idx`` of ``data`` on the device: x0 in [-1, 1], flipped at random if the stream asks."""
        x0 = to_model_range(data.images[idx].to(self.device, non_blocking=True))
        return Batch(random_hflip(x0, self.rng) if self.stream.hflip else x0, data.labels[idx].to(self.device))

    def _step(self, batch: Batch, ctx: TaskContext) -> None:
        pos, run, k = self.pos, self.cfg.run, ctx.k
        with self.execution.autocast():  # the backward pass runs outside, as autocast asks
            loss, stats = self.strategy.loss(batch, ctx)
        value, stats = _mean_over_ranks(loss, stats)  # the same on every rank: all skip, or none
        if not math.isfinite(value):
            where = f"task {k + 1}, epoch {pos.epoch + 1}, iteration {pos.iters + 1}"
            if run.nan_policy == "skip":
                pos.nan_skipped += 1
                self.log(f"warning: non-finite loss at {where}; batch skipped (nan_policy=skip)")
                self.optimizer.zero_grad(set_to_none=True)
                return
            raise NumericalError(f"non-finite loss ({value}) at {where}; the last good checkpoint is kept "
                                 f"in {self.run_dir / 'ckpt'} (set nan_policy=skip to skip such batches)")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.strategy.after_backward(ctx)
        if run.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, run.grad_clip)
        self.optimizer.step()
        self.strategy.after_step(ctx)
        pos.loss_sum += value
        for key, v in stats.items():
            pos.stat_sums[key] = pos.stat_sums.get(key, 0.0) + v

    # ---- end of task ----------------------------------------------------------------------------
    def finish_task(self, k: int) -> None:
        """Sample grid, evaluation, metrics row, weights and checkpoint; then move to task k+1."""
        # a signal now stops a single process at once: the phase-"eval" checkpoint is its resume point
        with self.stop.urgency(distributed.world_size() == 1):
            self._evaluate_and_save(k)
        self.log(_summary(self.pos.rows[-1]))

    def _evaluate_and_save(self, k: int) -> None:
        pos, main, ctx = self.pos, distributed.is_main(), self.context(k)
        generator = self.strategy.generator(ctx)
        start = time.perf_counter()
        if main:
            shape = (self.stream.channels, self.stream.image_size, self.stream.image_size)
            sample_grid(generator, self.strategy.schedule, Sampling.of(self.cfg, self.execution), shape,
                        self.cfg.run.grid_samples, self.device, self.run_dir / f"samples_task{k + 1}.png",
                        batch_size=self.cfg.eval.eval_batch_size)
        sample_seconds = time.perf_counter() - start
        row = self._train_row(k, sample_seconds)
        if self.evaluator is not None:  # every rank: it shards the sampling; rank 0 gets the metrics
            eval_row, per_task = self.evaluator.after_task(k, generator, self.strategy.solver_training(ctx))
            row.update(eval_row)
            pos.per_task_rows.extend({"strategy": self.cfg.run.strategy, **r} for r in per_task)
        pos.rows.append(row)
        if main:
            self.write_metrics()
            save_weights(self.run_dir / f"model_task{k + 1}.safetensors", self.strategy.generator_tensors(),
                         {"task": str(k + 1), "strategy": self.cfg.run.strategy})
        self.pos = Position(task=k + 1, rows=pos.rows, per_task_rows=pos.per_task_rows)
        self.checkpoint()

    def _train_row(self, k: int, sample_seconds: float) -> dict[str, Any]:
        pos = self.pos
        n = max(pos.iters - pos.nan_skipped, 1)
        costs = {key: v - pos.costs_at_start.get(key, 0) for key, v in self.strategy.costs().items()}
        costs = _costs_over_ranks(costs)
        for key in Costs.PER_ITERATION:
            costs[f"{key}_per_iter"] = costs.pop(key) / max(pos.iters, 1)
        row: dict[str, Any] = {"task": k + 1, "classes": " ".join(map(str, self.stream.tasks[k].classes)),
                               "train_loss": pos.loss_sum / n, "train_iters": pos.iters}
        row.update({key: v / n for key, v in sorted(pos.stat_sums.items())})
        row.update({"nan_skipped": pos.nan_skipped, "train_seconds": pos.train_seconds,
                    "train_cpu_seconds": pos.train_cpu_seconds, "sample_seconds": sample_seconds})
        row.update(costs)
        row.update(self.strategy.storage())
        return row

    def write_metrics(self) -> None:
        write_csv(self.run_dir / "metrics.csv", self.pos.rows)
        if self.pos.per_task_rows:
            write_csv(self.run_dir / "per_task.csv", self.pos.per_task_rows)

    # ---- checkpoints ---------------------------------------------------------------------------
    def state(self, ranks: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
        """Everything a resume needs; ``ranks``: every rank's :meth:`rank_state`, stacked (torchrun only)."""
        state = {
            "position": asdict(self.pos),
            "counters": self.strategy.costs(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "strategy": self.strategy.state_tensors(),
            "evaluator": self.evaluator.state_dict() if self.evaluator is not None else {},
            "rng": rng_state(self.rng),
        }
        if ranks is not None:
            state["ranks"] = ranks
        return state

    def rank_state(self) -> dict[str, torch.Tensor]:
        """What differs between data-parallel ranks: RNG states, and the teacher cost counters with
        their values at the start of the task ([n_counters, 2]); CPU tensors."""
        counters = [[v, self.pos.costs_at_start.get(key, 0)] for key, v in self.strategy.costs().items()]
        return {**rng_state(self.rng, self.device), "counters": torch.tensor(counters, dtype=torch.float64)}

    def checkpoint(self) -> Path | None:
        """Save a checkpoint (rank 0 writes it; under torchrun every rank must call this)."""
        ranks = None
        if distributed.world_size() > 1:
            ranks = {key: distributed.all_gather_rows(v) for key, v in self.rank_state().items()}
        self.last_checkpoint = time.monotonic()
        if not distributed.is_main():
            return None
        require_folder(self.run_dir, "run directory")  # never recreate a deleted run in an empty folder
        with self.stop.urgency(False):  # a signal waits for the checkpoint being written
            path = save_checkpoint(self.run_dir / "ckpt", self.state(ranks))
            self.saved_at = (self.pos.task, self.pos.iters)
        if self.stop.urgent and self.stop.signum and self.pos.task < self.stream.n_tasks:
            raise self.stop.stop()
        return path

    def _checkpoint_due(self) -> bool:
        """True when ``checkpoint_minutes`` of wall clock have passed since the last checkpoint."""
        minutes = self.cfg.run.checkpoint_minutes
        return minutes > 0 and time.monotonic() - self.last_checkpoint >= 60 * minutes

    def _stop_if_asked(self) -> None:
        """Between phases (a checkpoint was just written): end the run if a stop signal came."""
        stop, _ = self.stop.poll()
        if stop and self.pos.task < self.stream.n_tasks:
            raise self.stop.stop()

    def restore(self, warn: Callable[[str], None] = print) -> Path:
        """Load the newest good checkpoint of this run directory; returns its path."""
        state, path = load_latest(self.run_dir / "ckpt", warn=warn)
        self.pos = Position(**{"train_cpu_seconds": None, **state["position"]})  # older checkpoints lack it
        self.saved_at = (self.pos.task, self.pos.iters)
        self.strategy.restore_costs(state["counters"])
        ctx = self.context(min(self.pos.task, self.stream.n_tasks - 1))
        self.strategy.load_state_tensors(state["strategy"], ctx)  # first: it may add modules to the model
        self.model.load_state_dict(state["model"])
        if state["optimizer"]:
            self._train_parameters(ctx, new_optimizer=True)
            self.optimizer.load_state_dict(state["optimizer"])
        if self.evaluator is not None and state["evaluator"]:
            self.evaluator.load_state_dict(state["evaluator"])
        restore_rng(state["rng"], self.rng)
        if distributed.world_size() > 1:
            self._restore_rank_state(state.get("ranks", {}), warn)
        return path

    def _restore_rank_state(self, ranks: dict[str, torch.Tensor], warn: Callable[[str], None]) -> None:
        """Take this rank's row of the checkpoint's per-rank states (rank 0's is also in ``rng``)."""
        r, saved = distributed.rank(), len(ranks.get("generator", ()))
        if saved != distributed.world_size():
            warn(f"warning: the checkpoint was written by {saved or 1} process(es), this run has "
                 f"{distributed.world_size()}; it continues, but will not match an uninterrupted run")
        if r >= saved:
            return  # keeps the fresh per-rank seeds of build_components
        mine = {key: v[r].clone() for key, v in ranks.items()}  # set_state misreads a row view: copy it
        restore_rng(mine, self.rng, self.device)
        costs = self.strategy.costs()
        rows = dict(zip(costs, mine["counters"].tolist()))
        self.strategy.restore_costs({key: now for key, (now, _) in rows.items()})
        self.pos.costs_at_start.update({key: type(costs[key])(at_start) for key, (_, at_start) in rows.items()})

    def _bar(self, **kwargs: Any):
        from tqdm.auto import tqdm

        return tqdm(disable=not self.cfg.run.progress, leave=False, unit="it", **kwargs)


def _mean_over_ranks(loss: torch.Tensor, stats: dict[str, float]) -> tuple[float, dict[str, float]]:
    """The loss and logged stats as floats, averaged over the data-parallel ranks (one all-reduce)."""
    value = float(loss.detach())
    if distributed.world_size() == 1:
        return value, stats
    keys = sorted(stats)
    mean = distributed.all_reduce([value, *(stats[key] for key in keys)], "mean")
    return mean[0], dict(zip(keys, mean[1:]))


def _costs_over_ranks(costs: dict[str, float]) -> dict[str, float]:
    """Per-task teacher costs of the whole data-parallel job: image evaluations summed over the
    ranks (the work done), seconds and batched forwards their maximum (ranks run side by side)."""
    if distributed.world_size() == 1:
        return costs
    total = distributed.all_reduce(list(costs.values()), "sum")
    peak = distributed.all_reduce(list(costs.values()), "max")
    return {key: type(v)(total[i] if key.endswith("_image_evals") else peak[i]) for i, (key, v) in
            enumerate(costs.items())}


def _summary(row: dict[str, Any]) -> str:
    keys = ("train_loss", "fid", "fid_clf", "kld", "acc", "train_seconds", "teacher_seconds")
    parts = [f"{k}={row[k]:.4g}" for k in keys if isinstance(row.get(k), (int, float)) and row[k] == row[k]]
    return f"task {row['task']} done: " + " ".join(parts)
