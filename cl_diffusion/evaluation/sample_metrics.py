"""The sample metrics of one evaluation: generate the samples, then FID, FID_clf, KLD/ARD, KID and
precision/recall, overall and per routed task (definitions: ``docs/evaluation.md``).

Sample i's x_T is seeded by (run seed, i) alone (:func:`cl_diffusion.seeding.per_index_noise`), and
KID's subsets and precision/recall's equal-size subset by (run seed, task[, task_j]), so the numbers
do not depend on the batch size, the number of data-parallel ranks or a resume.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from .. import distributed, seeding
from ..data import to_unit_range
from ..sampling import Sampling, generate
from .classifier import EvalClassifier, classify, get_classifier
from .frechet import fid_from_features
from .histogram import ard, class_histogram, kld
from .inception import FEATURE, InceptionWeights, inception_features, load_inception, resolve_inception_weights
from .inception import resolve_user_weights

if TYPE_CHECKING:
    from ..config import Config
    from ..diffusion import NoiseSchedule
    from ..stream import TaskStream

NAN = float("nan")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] -> ``uint8`` in 0..255 (rounded), as stored data."""
    return (to_unit_range(x) * 255.0).round().to(torch.uint8)


class SampleMetrics:
    """The evaluation classifier, the Inception network (when its weights exist) and the test
    features of every task (cached), and the metrics of a set of samples."""

    def __init__(self, cfg: "Config", stream: "TaskStream", schedule: "NoiseSchedule", device: torch.device,
                 sampling: Sampling, log: Callable[[str], None] = print) -> None:
        self.cfg, self.ev, self.stream, self.device, self.log = cfg, cfg.eval, stream, device, log
        self.schedule, self.sampling = schedule, sampling
        self.shape = (stream.channels, stream.image_size, stream.image_size)
        if self.ev.fid_inception and self.ev.eval_samples > 0:
            resolve_user_weights(self.ev.inception_weights)  # a missing user-given file fails now, not later
        self.clf: EvalClassifier | None = None
        self.inception: nn.Module | None = None
        self.inception_weights: InceptionWeights | None = None
        self._test_feats: dict[tuple[str, int], torch.Tensor] = {}  # ("clf"|"inception", task) -> features

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

    # ---- samples ---------------------------------------------------------------------------------------
    def generate(self, model: nn.Module) -> torch.Tensor:
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

    # ---- metrics ---------------------------------------------------------------------------------------
    def compute(self, k: int, samples: torch.Tensor,
                per_task: list[dict[str, Any]]) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
        """fid, fid_clf, kld, ard, KID and precision/recall of ``samples`` (uint8) after task k, and per
        task the routed samples' FIDs, KIDs, precision/recall and shares (into ``per_task``).
        Also returns the label histograms p_true, p_gen (float64 [K])."""
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

    def info(self) -> dict[str, Any]:
        """What the sample metrics mean and how they were made (part of ``eval_info.json``)."""
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
        }
