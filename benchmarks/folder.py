"""folder: any image folder ``train/<class>/*`` + ``test/<class>/*`` (or ``val/<class>/*``) as a
class-incremental stream: Tiny-ImageNet or ImageNet-32 exports, or a user's own data.

The folder is ``--data-root`` itself (required); the number of tasks is the option ``n_tasks``
(0 = 5 tasks) and must divide the class count; classes (their count and order) come from the
sub-folders and the channels from the first image (grey or RGB). Images are center-cropped to a
square and resized to ``image_size`` once, when decoded. No flips: a user's classes may not be
mirror-symmetric. The "paper" settings are those of cifar10-5.

    python -m cl_diffusion.run --strategy gd --benchmark folder --data-root ~/tiny-imagenet \\
        --set n_tasks=10 --set image_size=32
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cl_diffusion.benchmarks.cifar10_5 import SPEC as CIFAR10_5
from cl_diffusion.data import FOLDER, DatasetSplits, load_image_folder_at
from cl_diffusion.errors import UserError
from cl_diffusion.stream import BENCHMARKS, BenchmarkSpec

if TYPE_CHECKING:
    from cl_diffusion.config import RunConfig


@dataclass(frozen=True)
class FolderBenchmark(BenchmarkSpec):
    """A :class:`BenchmarkSpec` whose data, class count and task count come from the run's options."""

    def task_count(self, run_cfg: "RunConfig") -> int:
        """The option ``n_tasks`` if set (> 0), else this spec's default."""
        return int(run_cfg.n_tasks or self.n_tasks)

    def load(self, run_cfg: "RunConfig") -> DatasetSplits:
        """The image folder at ``data_root``, decoded at ``image_size``; UserError if the task count
        does not divide its classes."""
        splits = load_image_folder_at(run_cfg.data_root, run_cfg.image_size)
        n_classes, n_tasks = len(splits.class_names), self.task_count(run_cfg)
        if n_tasks < 1 or n_classes % n_tasks:
            valid = ", ".join(str(n) for n in range(1, n_classes + 1) if n_classes % n == 0)
            raise UserError(f"benchmark {self.name!r}: {splits.source} has {n_classes} classes, which do not split "
                            f"into {n_tasks} equal tasks; set n_tasks to one of {valid} (--set n_tasks=N)")
        return splits


SPEC = FolderBenchmark(
    name="folder", dataset=FOLDER, n_tasks=5, image_size=32, hflip=False,
    description="the image folder --data-root DIR (train/<class>/*, test/<class>/*), n_tasks tasks (default 5)",
    paper=CIFAR10_5.paper,
)
BENCHMARKS.add(SPEC.name, SPEC)
