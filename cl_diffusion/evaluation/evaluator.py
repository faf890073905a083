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
- ``kid_clf`` (``kid_clf_std``), ``kid`` (``kid_std``): KID (Bińkowski et al. 2018; :mod:`.kid`,
  torch-fidelity's estimator), unbiased at small sample counts, and its std over
  ``kid_subsets`` subsets of ``kid_subset_size`` (capped at the sample count), in the classifier's
  and Inception's features (the latter blank like ``fid``).
- ``precision_clf``/``recall_clf``, ``precision``/``recall``: improved precision and recall
  (Kynkäänniemi et al. 2019; :mod:`.precision_recall`, k = ``pr_k``) in the same two spaces, on
  equally many sample and test features (a seeded random subset of the larger set).
- per-task rows (1-based ``task_after``, ``task_j``): FID_clf/FID of the samples the classifier
  routes to task j's classes against task j's test images (blank below 2 routed samples), the
  share routed there (``share``; ``share_true`` is task j's share of the seen test set), the
  same KID and precision/recall columns for those routed samples (KID blank below 2, precision/
  recall below ``pr_k`` + 1 routed samples) and the solver's accuracy on task j. AIQ/AFQ/FR over
  this matrix are computed from ``per_task.csv`` by :mod:`.aggregates`, not here.

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
from ..mixture import routing
from ..sampling import Sampling, generate, save_grid
from .. import seeding
from .classifier import EvalClassifier, classify, get_classifier
from .frechet import fid_from_features
from .histogram import ard, class_histogram, kld
from .inception import FEATURE, InceptionWeights, inception_features, load_inception, resolve_inception_weights
from .inception import resolve_user_weights
from .plots import save_class_histogram
from .solver import Solver

if TYPE_CHECKING:
    from ..config import Config
    from ..diffusion import NoiseSchedule
    from ..strategy import SolverTraining
    from ..stream import TaskStream

NAN = float("nan")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] -> ``uint8`` in 0..255 (rounded), as stored data."""
    return (to_unit_range(x) * 255.0).round().to(torch.uint8)


class Evaluator:
    """Evaluation after each task; see the module docstring. ``execution``: the run's (autocast)."""

    def __init__(self, cfg: "Config", stream: "TaskStream", schedule: "NoiseSchedule", device: torch.device,
                 run_dir: Path, execution: Execution | None = None, log: Callable[[str], None] = print) -> None:
        self.cfg, self.ev, self.stream, self.device = cfg, cfg.eval, stream, torch.device(device)
        self.schedule = schedule.to(self.device) if hasattr(schedule, "to") else schedule
        self.run_dir, self.log = Path(run_dir), log
        self.execution = execution or Execution.resolve(cfg.run, self.device)
        self.sampling = Sampling.of(cfg, self.execution)
        self.solver_replays: bool | None = None  # whether the last task's solver replayed (eval_info.json)
        self.shape = (stream.channels, stream.image_size, stream.image_size)
        if self.ev.fid_inception and self.ev.eval_samples > 0:
            resolve_user_weights(self.ev.inception_weights)  # a missing user-given file fails now, not later
        self.clf: EvalClassifier | None = None
        self.inception: nn.Module | None = None
        self.inception_weights: InceptionWeights | None = None
        self._test_feats: dict[tuple[str, int], torch.Tensor] = {}  # ("clf"|"inception", task) -> features
        self.solver = self._new_solver() if self.ev.solver_epochs > 0 else None
        n = stream.n_tasks
        self.acc_matrix = torch.full((n, n), NAN, dtype=torch.float64)  # [k, j]: solver acc on j after k
        self._tb: Any = None
        self._wb: Any = None  # the offline W&B logger (option wandb), made at the first log

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
    def after_task(self, k: int, model: nn.Module, solver: "SolverTraining") -> tuple[dict[str, float], list[dict]]:
        """Evaluate the generator ``model`` (``model(x_t, t) -> eps``, e.g. a Mixture) after task ``k``
        (0-based); the solver trains on what the strategy's ``solver`` plan says.

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
        row.update(self._solver_metrics(k, solver, per_task))
        row.update({"eval_samples": float(self.ev.eval_samples), "clf_test_acc": self.clf.test_acc,
                    "eval_seconds": time.perf_counter() - start})
        self._write_info(k)
        if self.ev.tensorboard:
            self._tensorboard().log(k + 1, row, per_task)
        if self.ev.wandb:
            self._wandb().log(k + 1, row, per_task)
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
                x = generate(model, self.schedule, self.sampling, self.shape, min(bs, end - lo), self.device,
                             start=lo, batch_size=bs)
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
        """fid, fid_clf, kld, ard, KID and precision/recall of ``samples`` (uint8), and per task the routed
        samples' FIDs, KIDs, precision/recall and shares."""
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
        out = {"kld": kld(p_true, p_gen), "ard": ard(p_true, p_gen), **self._kid_pr("clf"), **self._kid_pr("inception")}
        for kind in kinds:
            ref = torch.cat([self._test_features(kind, j) for j in range(k + 1)])
            out["fid_clf" if kind == "clf" else "fid"] = fid_from_features(sample_feats[kind], ref)
            out.update(self._kid_pr(kind, sample_feats[kind], ref, (k,)))
        for j, r in enumerate(per_task):
            mask = torch.isin(pred, torch.tensor(self.stream.tasks[j].classes))
            r.update({"n_routed": int(mask.sum()), "share": float(mask.to(torch.float64).mean()),
                      "share_true": len(self.stream.tasks[j].test) / max(len(test_labels), 1),
                      "fid_clf": NAN, "fid": NAN, **self._kid_pr("clf"), **self._kid_pr("inception")})
            for kind in kinds:
                r["fid_clf" if kind == "clf" else "fid"] = fid_from_features(sample_feats[kind][mask],
                                                                             self._test_features(kind, j))
                r.update(self._kid_pr(kind, sample_feats[kind][mask], self._test_features(kind, j), (k, j + 1)))
        return out, p_true, p_gen

    def _kid_pr(self, kind: str, f_gen: torch.Tensor | None = None, f_real: torch.Tensor | None = None,
                seed_parts: tuple[int, ...] = ()) -> dict[str, float]:
        """KID, its std over subsets, precision and recall of features ``f_gen [N1, D]`` against
        ``f_real [N2, D]`` in feature space ``kind``: columns ``kid_clf, kid_clf_std, precision_clf,
        recall_clf`` ("clf") or ``kid, kid_std, precision, recall`` ("inception"); all blank without
        features. KID's subsets and precision/recall's equal-size subset of the larger set come from
        their own generators seeded by (run seed, ``seeding.KID`` / ``seeding.PR``, ``*seed_parts``), so
        no global RNG moves and both feature spaces use the same subsets."""
        from .kid import kid_from_features
        from .precision_recall import precision_recall

        s = "_clf" if kind == "clf" else ""
        kid = prc = (NAN, NAN)
        if f_gen is not None and f_real is not None:
            ev = self.ev
            kid = kid_from_features(f_gen, f_real, subsets=ev.kid_subsets, subset_size=ev.kid_subset_size,
                                    seed=seeding.derive_seed(self.cfg.run.seed, seeding.KID, *seed_parts))
            prc = precision_recall(f_gen, f_real, ev.pr_k,
                                   balance_seed=seeding.derive_seed(self.cfg.run.seed, seeding.PR, *seed_parts))
        return {f"kid{s}": kid[0], f"kid{s}_std": kid[1], f"precision{s}": prc[0], f"recall{s}": prc[1]}

    # ---- solver ------------------------------------------------------------------------------------------
    def _solver_metrics(self, k: int, plan: "SolverTraining", per_task: list[dict[str, Any]]) -> dict[str, float]:
        """Train the solver on task k (as ``plan`` says), then ACC, forgetting and per-task accuracy."""
        if self.solver is None:
            for r in per_task:
                r["acc"] = NAN
            return {"acc": NAN, "forgetting": NAN}
        start = time.perf_counter()
        self.solver_replays = plan.replay is not None and k > 0
        replay = self._replay(k, plan.replay) if self.solver_replays else None
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

    def _wandb(self) -> Any:
        """The offline W&B run in ``run_dir/wandb``; W&B finishes it at exit (or when the next one starts)."""
        if self._wb is None:
            from .wandblog import WandbMetricsLogger

            self._wb = WandbMetricsLogger(self.run_dir, self.cfg.to_dict())
        return self._wb

    def close(self) -> None:
        """Close the TensorBoard and W&B loggers, if any (their files are complete afterwards)."""
        for logger in (self._tb, self._wb):
            if logger is not None:
                logger.close()
        self._tb = self._wb = None

    def info(self) -> dict[str, Any]:
        """What the metrics mean and how they were made (written to ``eval_info.json``)."""
        assert self.clf is not None and self.inception_weights is not None
        run, ev, clf = self.cfg.run, self.ev, self.clf.info
        w = self.inception_weights
        kid_how = (f"KID (unbiased MMD^2, kernel (x.y/d + 1)^3; torch-fidelity) vs the seen tasks' test images: mean "
                   f"(kid*) and std (kid*_std) over {ev.kid_subsets} subsets of min({ev.kid_subset_size}, N_samples, "
                   f"N_test), drawn by a RandomState seeded by (run seed, task[, task_j])")
        pr_how = (f"improved precision/recall (k-NN manifolds, k = {ev.pr_k}; torch-fidelity) of the samples vs the "
                  f"seen tasks' test images, the larger set cut to the smaller's size by a random subset seeded by "
                  f"(run seed, task[, task_j]); recall* likewise")
        return {
            "fid": (f"Inception FID: torch-fidelity InceptionV3 pool3 ('{FEATURE}'-d), uint8 input, grey repeated "
                    f"to RGB, vs the test images of the seen tasks" if w.path else f"blank: {w.source}"),
            "fid_clf": (f"Frechet distance in the {clf['feature_dim']}-d penultimate-layer features of the suite's "
                        f"own '{clf['arch']}' evaluation classifier (test accuracy {clf['test_acc']:.4f}); "
                        f"NOT comparable to Inception FID"),
            "kld": "KL(p_true || p_gen), 1e-8 added to both; p_gen = classifier argmax histogram of the samples",
            "ard": "0.5 * sum |p_true - p_gen|",
            "acc": "solver accuracy on the seen tasks' test sets, argmax over all classes",
            "forgetting": "mean over old tasks j of (best acc on j after an earlier task) - (acc on j now); 0 first",
            "kid": f"{kid_how} in the Inception pool3 features" if self.inception is not None else f"blank: {w.source}",
            "kid_clf": f"{kid_how} in the evaluation classifier's {clf['feature_dim']}-d features (same subsets)",
            "precision": (f"{pr_how} in the Inception pool3 features" if self.inception is not None
                          else f"blank: {w.source}"),
            "precision_clf": f"{pr_how} in the evaluation classifier's features (same subsets)",
            "per_task_small_sample_metrics": (f"kid_clf, precision_clf, recall_clf (and the Inception ones) of the "
                                              f"samples routed to task j vs task j's test images; KID blank below 2, "
                                              f"precision/recall below {ev.pr_k + 1} routed samples"),
            "inception": {"available": w.path is not None, "weights": w.path, "source": w.source},
            "classifier": clf, "clf_test_acc": clf["test_acc"],
            "samples": {"n": ev.eval_samples, "sampler": "ddim", "steps": ev.eval_steps, "eta": run.eta,
                        "spacing": run.spacing, "clip_x0": run.clip_x0,
                        "noise": "x_T of sample i from torch.Generator seeded by (run seed, i) only"},
            "solver": {"replays_generator": self.solver_replays, "enabled": self.solver is not None,
                       "n_params": sum(p.numel() for p in self.solver.net.parameters()) if self.solver else 0,
                       "kd_variant": ev.kd_variant, "kd_temperature": ev.kd_temperature,
                       "replay": (f"a pool of {ev.solver_replay_pool} samples per task" if ev.solver_replay_pool
                                  else "fresh samples for every batch")},
            "tensorboard": self._tb.backend if self._tb is not None else None,
            "wandb": self._wb.backend if self._wb is not None else None,
        }

    def _write_info(self, k: int) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "eval_info.json", {"after_task": k + 1, **self.info()})

    # ---- resume ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Solver weights and the accuracy matrix (CPU copies). The solver's teacher for task k+1 is
        the solver after task k, and the replay generator is the strategy's, so neither is stored twice.
        """
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
