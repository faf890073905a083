"""Datasets as in-memory ``uint8`` tensors: what they hold, where they are found, how they are read.

- :mod:`.containers`: :class:`LabeledImages`, :class:`DatasetSplits`, value ranges
  (:func:`to_model_range`, :func:`to_unit_range`), :func:`random_hflip`, and the dataset
  descriptions :class:`DatasetInfo` / :data:`DATASETS`.
- :mod:`.search`: :func:`load_dataset`, which looks for a dataset in ``data_root`` /
  ``CL_DIFFUSION_DATA``, the system folders, ``./data`` and the cache, or downloads it.
- :mod:`.readers`: idx files, CIFAR python batches and image folders, the decoded-image cache
  and :func:`cache_dir`.

The names below are re-exported for importing; to monkeypatch one, patch the module that defines it.
"""
from .containers import (CIFAR10_BATCHES, CIFAR100_BATCHES, DATASETS, FOLDER, DatasetInfo, DatasetSplits,
                         LabeledImages, PythonBatches, random_hflip, to_model_range, to_unit_range)
from .readers import (GREY_MODES, IMAGE_EXTENSIONS, cache_dir, class_order_of, load_image_folder,
                      load_image_folder_at, read_idx)
from .search import SYSTEM_ROOTS, load_dataset

__all__ = [
    "CIFAR10_BATCHES", "CIFAR100_BATCHES", "DATASETS", "FOLDER", "GREY_MODES", "IMAGE_EXTENSIONS", "SYSTEM_ROOTS",
    "DatasetInfo", "DatasetSplits", "LabeledImages", "PythonBatches", "cache_dir", "class_order_of", "load_dataset",
    "load_image_folder", "load_image_folder_at", "random_hflip", "read_idx", "to_model_range", "to_unit_range",
]
