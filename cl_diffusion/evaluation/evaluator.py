"""The evaluation after each task (GD, Masip et al. 2024, Sec. 5), in one object the trainer calls.

After task k (0-based) :meth:`Evaluator.after_task` draws ``eval_samples`` samples with DDIM
(``eval_steps`` steps, the run's eta/spacing/clip), sample i from x_T seeded by (run seed, i) only,
and computes:

- ``fid``: Inception FID against the test images of tasks 0..k (torch-fidelity's InceptionV3,
  2048-d pool3); blank when no Inception weights are available.
- ``fid_clf``: the Fréchet distance in the penultimate-layer features of the suite's own
  evaluation classifier (:mod:`.classifier`): always computed, NOT comparable to Inception FID.
- ``kld``, ``ard``: KL(p_true || p_gen) and 0.5 * L1 between the label histogram of the seen test
  sets and the classifier's labels of the samples, over all classes (:mod:`.histogram`).
- ``acc``, ``forgetting``: the generative-replay solver (:mod:`.solver`) trained along the stream:
  accuracy on the seen tasks' test sets (argmax over all classes), and the mean over old tasks
  j < k of (best accuracy on j after an earlier task l in j..k-1) - (accuracy on j now), 0 at k = 0
  (Chaudhry et al. 2018).
- per-task rows (1-based ``task_after``, ``task_j``): FID_clf/FID of the samples the classifier
  routes to task j's classes against task j's test images (blank below 2 routed samples), the
  share routed there (``share``; ``share_true`` is task j's share of the seen test set) and the
  solver's accuracy on task j.

It writes ``class_hist_task{k+1}.png``, ``samples_task{k+1}.png`` (unless the trainer already drew
it, from the same noise), ``eval_info.json`` and, if asked, TensorBoard scalars into ``run_dir``.
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
from tqdm import tqdm

from .. import distributed
from ..data import to_model_range, to_unit_range
from ..diffusion import SAMPLERS
from ..execution import Execution
from ..io import atomic_write_json
from ..sampling import generate, save_grid
from . import seeding
from .classifier import EvalClassifier, classify, get_classifier
from .frechet import fid_from_features
from .histogram import ard, class_histogram, kld
from .inception import FEATURE, InceptionWeights, inception_features, load_inception, resolve_inception_weights
from .inception import resolve_user_weights
from .plots import save_class_histogram
from .solver import SOLVER_MODES, Solver

if TYPE_CHECKING:
    from ..config import Config
    from ..diffusion import NoiseSchedule
    from ..stream import TaskStream

NAN = float("nan")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] -> ``uint8`` in 0..255 (rounded), as stored data."""
    return (to_unit_range(x) * 255.0).round().to(torch.uint8)


class Evaluator:
    """Evaluation after each task; see the module docstring. ``solver_mode``: the strategy's."""

    def __init__(self, cfg: "Config", stream: "TaskStream", schedule: "NoiseSchedule", device: torch.device,
                 run_dir: Path, solver_mode: str, log: Callable[[str], None] = print) -> None:
        if solver_mode not in SOLVER_MODES:
            raise ValueError(f"unknown solver_mode {solver_mode!r}; valid: {', '.join(SOLVER_MODES)}")
        self.cfg, self.ev, self.stream, self.device = cfg, cfg.eval, stream, torch.device(device)
        self.schedule = schedule.to(self.device) if hasattr(schedule, "to") else schedule
        self.run_dir, self.solver_mode, self.log = Path(run_dir), solver_mode, log
        self.shape = (stream.channels, stream.image_size, stream.image_size)
        if self.ev.fid_inception and self.ev.eval_samples > 0:
            resolve_user_weights(self.ev.inception_weights)  # a missing user-given file fails now, not later
        self.clf: EvalClassifier | None = None
        self.inception: nn.Module | None = None
        self.inception_weights: InceptionWeights | None = None
        self._test_feats: dict[tuple[str, int], torch.Tensor] = {}  # ("clf"|"inception", task) -> features
        self.solver = self._new_solver() if self.ev.solver_epochs > 0 else None
        self.prev_generator: nn.Module | None = None  # the model frozen after the previous task
        self._pending_generator: dict[str, torch.Tensor] | None = None  # its weights, after a resume
        n = stream.n_tasks
        self.acc_matrix = torch.full((n, n), NAN, dtype=torch.float64)  # [k, j]: solver acc on j after k
        self._tb: Any = None

    def _new_solver(self) -> Solver:
        ev = self.ev
        return Solver(self.stream.channels, self.stream.num_classes, seed=self.cfg.run.seed,
                      epochs=ev.solver_epochs, iters_per_task=ev.solver_iters_per_task, lr=ev.solver_lr,
                      batch_size=ev.solver_batch_size, kd_temperature=ev.kd_temperature,
                      kd_variant=ev.kd_variant, device=self.device)

    # ---- set-up ----------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Load (or train) the evaluation classifier and the Inception network; idempotent."""
        if self.clf is None:
            self.clf = get_classifier(self.ev, self.stream, self.device, self.cfg.run.progress, self.log)
        if self.inception_weights is None:
            if not (self.ev.fid_inception and self.ev.eval_samples > 0):
                self.inception_weights = InceptionWeights(None, "off (fid_inception=false or eval_samples=0)")
                return
            self.inception_weights = resolve_inception_weights(self.ev.inception_weights)
            if self.inception_weights.path is None:
                self.log(f"warning: Inception FID ('fid') is left blank: {self.inception_weights.source}. "
                         f"'fid_clf' (evaluation-classifier features) is still computed.")
            else:
                self.inception = load_inception(self.inception_weights.path, self.device)

    # ---- the entry point ---------------------------------------------------------------------------
    def after_task(self, k: int, model: nn.Module) -> tuple[dict[str, float], list[dict]]:
        """Evaluate ``model`` (``model(x_t, t) -> eps``) after task ``k`` (0-based).

        Returns the metrics-row additions and the per-task rows (one per seen task); on data-parallel
        ranks other than 0, which only help with the sampling, ``({}, [])``.
        """
        if not distributed.is_main():
            if self.ev.eval_samples > 0:
                self._generate(model)
            distributed.barrier()  # while rank 0 evaluates
            return {}, []
        start = time.perf_counter()
        self.prepare()
        assert self.clf is not None
        per_task: list[dict[str, Any]] = [{"task_after": k + 1, "task_j": j + 1} for j in range(k + 1)]
        row: dict[str, float] = {"fid": NAN, "fid_clf": NAN, "kld": NAN, "ard": NAN}
        if self.ev.eval_samples > 0:
            t0 = time.perf_counter()
            samples = self._generate(model)
            row["eval_sample_seconds"] = time.perf_counter() - t0
            metrics, p_true, p_gen = self._sample_metrics(k, samples, per_task)
            row.update(metrics)
            self._write_pngs(k, samples, p_true, p_gen, row)
        row.update(self._solver_metrics(k, model, per_task))
        self._keep_generator(k, model)
        row.update({"eval_samples": float(self.ev.eval_samples), "clf_test_acc": self.clf.test_acc,
                    "eval_seconds": time.perf_counter() - start})
        self._write_info(k)
        if self.ev.tensorboard:
            self._tensorboard().log(k + 1, row, per_task)
        distributed.barrier()
        return row, per_task

    # ---- samples ---------------------------------------------------------------------------------------
    def _generate(self, model: nn.Module) -> torch.Tensor:
        """``eval_samples`` samples as ``uint8 [N, C, H, W]`` (CPU); sample i from x_T seeded by (seed, i).

        Under torchrun each rank makes its slice of the indices and every rank gets all N in order.
        """
        first, end = distributed.shard_range(self.ev.eval_samples)
        bs = self.ev.eval_batch_size
        chunks = [torch.empty((0, *self.shape), dtype=torch.uint8)]
        with torch.inference_mode():
            for lo in tqdm(range(first, end, bs), desc="evaluation samples", disable=not self.cfg.run.progress,
                           leave=False):
                x = generate(model, self.schedule, self.cfg, self.shape, min(bs, end - lo), self.device,
                             steps=self.ev.eval_steps, start=lo, batch_size=bs)
                chunks.append(to_uint8(x))
        return distributed.all_gather_cat(torch.cat(chunks))

    def _test_features(self, kind: str, j: int) -> torch.Tensor:
        """Features of task j's test images: ``kind`` = "clf" (classifier) or "inception"; cached."""
        if (kind, j) not in self._test_feats:
            images = self.stream.tasks[j].test.images
            self._test_feats[kind, j] = self._features(kind, images)
        return self._test_feats[kind, j]

    def _features(self, kind: str, images: torch.Tensor) -> torch.Tensor:
        bs = self.ev.eval_batch_size
        if kind == "clf":
            assert self.clf is not None
            return classify(self.clf.model, images, bs, self.device)[0]
        assert self.inception is not None
        return inception_features(self.inception, images, bs, self.device)

    def _sample_metrics(self, k: int, samples: torch.Tensor,
                        per_task: list[dict[str, Any]]) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """fid, fid_clf, kld, ard of ``samples`` (uint8) and the per-task routed FIDs and shares."""
        assert self.clf is not None
        feats, logits = classify(self.clf.model, samples, self.ev.eval_batch_size, self.device)
        pred = logits.argmax(1)
        K = self.stream.num_classes
        test_labels = self.stream.seen_test(k).labels
        p_true, p_gen = class_histogram(test_labels, K), class_histogram(pred, K)
        kinds = ["clf"] + (["inception"] if self.inception is not None else [])
        sample_feats = {"clf": feats}
        if self.inception is not None:
            sample_feats["inception"] = self._features("inception", samples)
        out = {"kld": kld(p_true, p_gen), "ard": ard(p_true, p_gen)}
        for kind in kinds:
            ref = torch.cat([self._test_features(kind, j) for j in range(k + 1)])
            out["fid_clf" if kind == "clf" else "fid"] = fid_from_features(sample_feats[kind], ref)
        for j, r in enumerate(per_task):
            mask = torch.isin(pred, torch.tensor(self.stream.tasks[j].classes))
            r.update({"n_routed": int(mask.sum()), "share": float(mask.to(torch.float64).mean()),
                      "share_true": len(self.stream.tasks[j].test) / max(len(test_labels), 1),
                      "fid_clf": NAN, "fid": NAN})
            for kind in kinds:
                r["fid_clf" if kind == "clf" else "fid"] = fid_from_features(sample_feats[kind][mask],
                                                                             self._test_features(kind, j))
        return out, p_true, p_gen

    # ---- solver ------------------------------------------------------------------------------------------
    def _solver_metrics(self, k: int, model: nn.Module, per_task: list[dict[str, Any]]) -> dict[str, float]:
        """Train the solver on task k (its mode), then ACC, forgetting and per-task accuracy."""
        if self.solver is None:
            for r in per_task:
                r["acc"] = NAN
            return {"acc": NAN, "forgetting": NAN}
        start = time.perf_counter()
        data = self.stream.seen_train(k) if self.solver_mode == "joint" else self.stream.tasks[k].train
        replay = self._replay(k, model) if self.solver_mode == "replay" and k > 0 else None
        stats = self.solver.train_task(k, data, n_seen=k + 1, replay=replay, progress=self.cfg.run.progress)
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

    def _replay(self, k: int, model: nn.Module) -> Callable[[int], torch.Tensor]:
        """replay(m): m samples in [-1, 1] of the generator frozen after task k-1 (DDIM, eval_steps).

        Fresh samples for every call, or (``solver_replay_pool`` > 0) draws from a pool sampled once;
        all noise from generators seeded by (seed, k).
        """
        gen = self._previous_generator(model)
        run, sampler = self.cfg.run, SAMPLERS["ddim"]
        g_noise = seeding.generator(run.seed, seeding.SOLVER_REPLAY, k)
        g_eta = seeding.generator(run.seed, seeding.SOLVER_REPLAY, k, 1, device=self.device)

        def fresh(m: int) -> torch.Tensor:
            x_T = torch.randn((m, *self.shape), generator=g_noise).to(self.device)
            with torch.no_grad(), self._execution().autocast():
                x = sampler(gen, self.schedule, x_T, steps=self.ev.eval_steps, eta=run.eta, spacing=run.spacing,
                            clip_x0=run.clip_x0, generator=g_eta)
            return x.float().clamp(-1.0, 1.0)

        size, bs = self.ev.solver_replay_pool, self.ev.eval_batch_size
        if size == 0:
            return fresh
        pool = torch.cat([fresh(min(bs, size - lo)) for lo in range(0, size, bs)])
        g_pick = seeding.generator(run.seed, seeding.SOLVER_REPLAY, k, 2)
        return lambda m: pool[torch.randint(size, (m,), generator=g_pick).to(pool.device)]

    def _previous_generator(self, model: nn.Module) -> nn.Module:
        if self.prev_generator is None and self._pending_generator is not None:
            gen = self._execution().frozen_copy(model)
            gen.load_state_dict(self._pending_generator)
            self.prev_generator, self._pending_generator = gen, None
        if self.prev_generator is None:
            raise RuntimeError("replay solver: no generator from the previous task (after_task was not called "
                               "for it, and no evaluator state was loaded)")
        return self.prev_generator

    def _keep_generator(self, k: int, model: nn.Module) -> None:
        """Freeze a copy of ``model``: the replay generator of task k+1's solver training."""
        if self.solver is None or self.solver_mode != "replay" or k + 1 >= self.stream.n_tasks:
            self.prev_generator = self._pending_generator = None
            return
        self.prev_generator = self._execution().frozen_copy(model)
        self._pending_generator = None

    def _execution(self) -> Execution:
        return Execution.resolve(self.cfg.run, self.device)

    # ---- outputs ---------------------------------------------------------------------------------------
    def _write_pngs(self, k: int, samples: torch.Tensor, p_true: torch.Tensor, p_gen: torch.Tensor,
                    row: dict[str, float]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        title = (f"{self.cfg.run.strategy} after task {k + 1}: KLD {row['kld']:.3f}, ARD {row['ard']:.3f}")
        save_class_histogram(p_true, p_gen, self.stream.class_names, self.run_dir / f"class_hist_task{k + 1}.png",
                             title)
        grid = self.run_dir / f"samples_task{k + 1}.png"
        if not grid.exists():
            save_grid(to_model_range(samples[: self.cfg.run.grid_samples]), grid)

    def _tensorboard(self) -> Any:
        if self._tb is None:
            from .tblog import MetricsLogger

            self._tb = MetricsLogger(self.run_dir / "tensorboard")
        return self._tb

    def info(self) -> dict[str, Any]:
        """What the metrics mean and how they were made (written to ``eval_info.json``)."""
        assert self.clf is not None and self.inception_weights is not None
        run, ev, clf = self.cfg.run, self.ev, self.clf.info
        w = self.inception_weights
        return {
            "fid": (f"Inception FID: torch-fidelity InceptionV3 pool3 ('{FEATURE}'-d), uint8 input, grey repeated "
                    f"to RGB, vs the test images of the seen tasks" if w.path else f"blank: {w.source}"),
            "fid_clf": (f"Frechet distance in the {clf['feature_dim']}-d penultimate-layer features of the suite's "
                        f"own '{clf['arch']}' evaluation classifier (test accuracy {clf['test_acc']:.4f}); "
                        f"NOT comparable to Inception FID"),
            "kld": "KL(p_true || p_gen), 1e-8 added to both; p_gen = classifier argmax histogram of the samples",
            "ard": "0.5 * sum |p_true - p_gen|",
            "acc": f"solver ({self.solver_mode} mode) accuracy on the seen tasks' test sets, argmax over all classes",
            "forgetting": "mean over old tasks j of (best acc on j after an earlier task) - (acc on j now); 0 first",
            "inception": {"available": w.path is not None, "weights": w.path, "source": w.source},
            "classifier": clf, "clf_test_acc": clf["test_acc"],
            "samples": {"n": ev.eval_samples, "sampler": "ddim", "steps": ev.eval_steps, "eta": run.eta,
                        "spacing": run.spacing, "clip_x0": run.clip_x0,
                        "noise": "x_T of sample i from torch.Generator seeded by (run seed, i) only"},
            "solver": {"mode": self.solver_mode, "enabled": self.solver is not None,
                       "n_params": sum(p.numel() for p in self.solver.net.parameters()) if self.solver else 0,
                       "kd_variant": ev.kd_variant, "kd_temperature": ev.kd_temperature,
                       "replay": (f"a pool of {ev.solver_replay_pool} samples per task" if ev.solver_replay_pool
                                  else "fresh samples for every batch")},
            "tensorboard": self._tb.backend if self._tb is not None else None,
        }

    def _write_info(self, k: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "eval_info.json", {"after_task": k + 1, **self.info()})

    # ---- resume ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Solver weights, the previous-task generator's weights, the accuracy matrix (CPU copies).

        The solver's teacher for task k+1 is the solver after task k, so it is not stored twice.
        """
        sd: dict[str, torch.Tensor] = {"acc_matrix": self.acc_matrix.clone()}
        if self.solver is not None:
            sd.update({f"solver.{n}": v.detach().cpu().clone() for n, v in self.solver.net.state_dict().items()})
        gen = self.prev_generator.state_dict() if self.prev_generator is not None else self._pending_generator
        if gen is not None:
            sd.update({f"generator.{n}": v.detach().cpu().clone() for n, v in gen.items()})
        return sd

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (the generator is rebuilt at the next replay)."""
        self.acc_matrix = sd["acc_matrix"].to(torch.float64).clone()
        solver = {n[len("solver."):]: v for n, v in sd.items() if n.startswith("solver.")}
        if self.solver is not None and solver:
            self.solver.net.load_state_dict(solver)
        gen = {n[len("generator."):]: v.clone() for n, v in sd.items() if n.startswith("generator.")}
        self.prev_generator, self._pending_generator = None, gen or None
