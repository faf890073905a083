"""Task streams: a dataset split into class-incremental tasks, and the registry of benchmarks.

A :class:`BenchmarkSpec` (one file each in ``benchmarks/``) names a dataset, a number of tasks
and the paper's protocol for it; ``spec.build(run_cfg)`` loads the data, resizes it once to
``run_cfg.image_size``, keeps ``run_cfg.train_subset`` images per class, and splits the classes
into tasks in the ``run_cfg.class_order``. Labels stay the dataset's global class ids.

Training reads plain in-memory ``uint8`` tensors. Avalanche is used only to reproduce its
seeded class order: an ``AvalancheDataset`` applies a per-item transform pipeline, far too slow
to feed a diffusion model thousands of batches per task.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F

from .data import DatasetSplits, LabeledImages, load_dataset
from .errors import UserError
from .registry import Registry

if TYPE_CHECKING:
    from .config import RunConfig


@dataclass
class Task:
    """One task: its classes and their images at the run's image size (labels are global ids)."""

    index: int
    classes: list[int]
    train: LabeledImages
    test: LabeledImages


@dataclass
class TaskStream:
    """The tasks of one run, in training order.

    Attributes:
        name: benchmark name, e.g. ``"fmnist-5"``.
        tasks: ``tasks[k]`` is task ``k``.
        class_names: ``class_names[y]`` names global class id ``y``.
        num_classes: number of classes over all tasks.
        channels, image_size: every image is ``uint8 [channels, image_size, image_size]``.
        hflip: the trainer flips training batches horizontally at random (CIFAR-10).
        dataset_id: identifies the exact images and split (dataset, size, order, subset and a
            content fingerprint); safe as a cache key, e.g. for FID reference statistics.
    """

    name: str
    tasks: list[Task]
    class_names: list[str]
    num_classes: int
    channels: int
    image_size: int
    hflip: bool
    dataset_id: str

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def min_task_train_size(self) -> int:
        """Training images in the smallest task: a batch size above it cannot fill one batch."""
        return min(len(t.train) for t in self.tasks)

    def seen_train(self, k: int) -> LabeledImages:
        """Training images of tasks ``0..k``, in task order."""
        return LabeledImages.cat([t.train for t in self.tasks[: k + 1]])

    def seen_test(self, k: int) -> LabeledImages:
        """Test images of tasks ``0..k``, in task order."""
        return LabeledImages.cat([t.test for t in self.tasks[: k + 1]])


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered task stream.

    Attributes:
        name: registry name, e.g. ``"cifar10-5"``.
        dataset: a :data:`cl_diffusion.data.DATASETS` name.
        n_tasks: tasks the classes are split into (equally).
        image_size: the paper protocol's image side; ``build`` resizes to ``run_cfg.image_size``.
        hflip: random horizontal flips of training batches.
        description: one line for ``--list``.
        paper: the paper protocol's option overrides for this benchmark (option key -> value);
            a private copy of the dict given, to be treated as read-only.
        profiles: per scaled-down profile, overrides applied after that profile's own
            (profile name -> option key -> value), e.g. a longer-trained evaluation classifier
            where the profile's default is too weak for this dataset.
    """

    name: str
    dataset: str
    n_tasks: int
    image_size: int = 32
    hflip: bool = False
    description: str = ""
    paper: Mapping[str, Any] = field(default_factory=dict)
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paper", dict(self.paper))
        object.__setattr__(self, "profiles", {k: dict(v) for k, v in self.profiles.items()})

    def load(self, run_cfg: "RunConfig") -> DatasetSplits:
        """The dataset's splits (any resolution; :meth:`build` resizes). Subclasses may override."""
        return load_dataset(self.dataset, run_cfg.data_root)

    def task_count(self, run_cfg: "RunConfig") -> int:
        """Number of tasks of this run: ``n_tasks``; the option ``n_tasks`` may only repeat it.
        Subclasses whose task count is an option (the ``folder`` stream) override this."""
        asked = run_cfg.n_tasks
        if asked and asked != self.n_tasks:
            raise UserError(f"bad value {asked} for n_tasks: benchmark {self.name!r} has a fixed {self.n_tasks} "
                            f"tasks; n_tasks applies to the 'folder' benchmark (or leave it at 0)")
        return self.n_tasks

    def build(self, run_cfg: "RunConfig") -> TaskStream:
        """Load the data and split it into tasks as ``run_cfg`` says (``data_root``,
        ``class_order``, ``seed``, ``train_subset``, ``test_subset``, ``image_size``)."""
        splits = self.load(run_cfg)
        num_classes = len(splits.class_names)
        split = task_classes(run_cfg.class_order, num_classes, self.task_count(run_cfg), run_cfg.seed)
        train = resize(first_per_class(splits.train, run_cfg.train_subset), run_cfg.image_size)
        test = resize(first_per_class(splits.test, run_cfg.test_subset), run_cfg.image_size)
        tasks = []
        for k, classes in enumerate(split):
            ids = torch.tensor(classes)
            tasks.append(Task(k, classes, train.subset(torch.isin(train.labels, ids)),
                              test.subset(torch.isin(test.labels, ids))))
            if len(tasks[-1].train) == 0:
                raise UserError(f"{self.name}: task {k} (classes {classes}) has no training images")
        order = run_cfg.class_order + (str(run_cfg.seed) if run_cfg.class_order == "seeded" else "")
        test_tag = f"-t{run_cfg.test_subset}" if run_cfg.test_subset else ""
        dataset_id = (f"{self.dataset}-{run_cfg.image_size}px-{order}-n{run_cfg.train_subset or 'all'}{test_tag}"
                      f"-{_fingerprint(tasks)}")
        return TaskStream(self.name, tasks, list(splits.class_names), num_classes, int(train.images.shape[1]),
                          run_cfg.image_size, self.hflip, dataset_id)


class _BenchmarkRegistry(Registry):
    """The benchmark registry; the first lookup imports ``cl_diffusion.benchmarks`` (``benchmarks/``),
    whose files register themselves. Importing lazily avoids an import cycle with those files."""

    _builtins_loaded = False

    def _load_plugins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            importlib.import_module("cl_diffusion.benchmarks")
        super()._load_plugins()


BENCHMARKS: Registry[BenchmarkSpec] = _BenchmarkRegistry("benchmark")


# --------------------------------------------------------------------------------------------
# Class orders
# --------------------------------------------------------------------------------------------
def task_classes(class_order: str, num_classes: int, n_tasks: int, seed: int) -> list[list[int]]:
    """Classes of each task: ``"fixed"`` -> (0,1),(2,3),...; ``"seeded"`` -> Avalanche's order."""
    if n_tasks < 1 or num_classes % n_tasks:
        valid = ", ".join(str(n) for n in range(1, num_classes + 1) if num_classes % n == 0)
        raise UserError(f"cannot split {num_classes} classes into {n_tasks} equal tasks; "
                        f"valid task counts: {valid}")
    if class_order == "fixed":
        per = num_classes // n_tasks
        return [list(range(k * per, (k + 1) * per)) for k in range(n_tasks)]
    if class_order == "seeded":
        return avalanche_class_split(num_classes, n_tasks, seed)
    raise UserError(f"unknown class_order {class_order!r}; valid choices: fixed, seeded")


class _TargetsOnly(torch.utils.data.Dataset):
    """A stand-in dataset with one dummy item per class; all Avalanche reads is ``targets``."""

    def __init__(self, num_classes: int) -> None:
        self.targets = list(range(num_classes))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(1), self.targets[i]


def avalanche_class_split(num_classes: int, n_tasks: int, seed: int) -> list[list[int]]:
    """The class split of Avalanche's ``nc_benchmark(n_experiences=n_tasks, seed=seed,
    task_labels=False)``, the generator behind ``SplitFMNIST(n_experiences=5, seed=seed)``.

    Each experience's ``classes_in_this_experience``, sorted. Torch's global RNG, which
    ``nc_benchmark`` reseeds, is restored afterwards.
    """
    try:
        from avalanche.benchmarks import nc_benchmark
    except ImportError:  # avalanche-lib < 0.5
        from avalanche.benchmarks.generators import nc_benchmark
    with torch.random.fork_rng(devices=[]):
        bench = nc_benchmark(_TargetsOnly(num_classes), _TargetsOnly(num_classes), n_experiences=n_tasks,
                             task_labels=False, seed=seed, shuffle=True)
    return [sorted(int(c) for c in exp.classes_in_this_experience) for exp in bench.train_stream]


# --------------------------------------------------------------------------------------------
# Image preparation
# --------------------------------------------------------------------------------------------
def first_per_class(data: LabeledImages, n: int) -> LabeledImages:
    """The first ``n`` images of each class, in the original order; ``n = 0`` keeps all."""
    if n <= 0:
        return data
    keep = torch.zeros(len(data), dtype=torch.bool)
    for c in data.labels.unique():
        keep[(data.labels == c).nonzero().flatten()[:n]] = True
    return data.subset(keep)


def resize(data: LabeledImages, size: int, chunk: int = 8192) -> LabeledImages:
    """Resize ``uint8 [N, C, H, W]`` images to ``[N, C, size, size]``: bilinear, antialiased when
    shrinking, rounded back to ``uint8`` (28 -> 32 matches PIL's bilinear resize within 1 level)."""
    if data.images.shape[-2:] == (size, size):
        return data
    out = torch.empty((len(data), data.images.shape[1], size, size), dtype=torch.uint8)
    for lo in range(0, len(data), chunk):
        x = data.images[lo: lo + chunk].float()
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[lo: lo + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return LabeledImages(out, data.labels)


def _fingerprint(tasks: list[Task]) -> str:
    """A short hash of the task split and a strided sample of the images (cheap, content-sensitive)."""
    h = hashlib.blake2b(digest_size=5)
    for t in tasks:
        for part in (t.train, t.test):
            step = max(1, len(part) // 512)
            h.update(repr((t.index, t.classes, len(part))).encode())
            h.update(part.labels.numpy().tobytes())
            h.update(part.images[::step].contiguous().numpy().tobytes())
    return h.hexdigest()
