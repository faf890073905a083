"""In-memory data and dataset descriptions: image containers, value ranges, and what each dataset is.

:class:`LabeledImages` and :class:`DatasetSplits` hold images as ``uint8`` tensors on the CPU;
:func:`to_model_range`, :func:`to_unit_range` and :func:`random_hflip` convert and augment them.
:class:`DatasetInfo` describes one dataset (size, classes, split sizes, how it lies on disk), and
:data:`DATASETS` declares the datasets that :func:`~cl_diffusion.data.load_dataset` knows by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

FOLDER = "folder"  # load_dataset name of a generic image folder at data_root (see load_image_folder_at)


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------
@dataclass
class LabeledImages:
    """Images with integer class labels, kept in memory on the CPU.

    Attributes:
        images: ``uint8 [N, C, H, W]``, values 0..255.
        labels: ``int64 [N]``, the dataset's global class ids.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor | Sequence[int] | slice) -> "LabeledImages":
        """The items picked by a boolean mask ``[N]``, an index tensor/list, or a slice."""
        if not isinstance(index, (torch.Tensor, slice)):  # list/array of ints or bools
            index = torch.as_tensor(index) if len(index) else torch.zeros(0, dtype=torch.int64)
        return LabeledImages(self.images[index], self.labels[index])

    @staticmethod
    def cat(parts: Sequence["LabeledImages"]) -> "LabeledImages":
        """Concatenate along N, keeping the order of ``parts``."""
        if not parts:
            raise ValueError("LabeledImages.cat needs at least one part")
        return LabeledImages(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


@dataclass
class DatasetSplits:
    """A dataset's standard splits at native resolution, and where they were read from."""

    train: LabeledImages
    test: LabeledImages
    class_names: list[str]
    source: str = ""  # the folder (or file set) the data came from


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """``uint8 [..]`` in 0..255 -> ``float32`` in [-1, 1] (on ``u8``'s device)."""
    return u8.to(torch.float32) / 127.5 - 1.0


def random_hflip(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Each image of x [B, C, H, W] mirrored left-right with probability 1/2 (one draw of ``rng`` per image)."""
    flip = torch.rand(x.shape[0], generator=rng, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] -> [0, 1], clamped."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# What each dataset is and how it looks on disk
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PythonBatches:
    """torchvision's pickled python batches of a CIFAR dataset."""

    folder: str  # the folder torchvision unpacks, e.g. "cifar-10-batches-py"
    train: tuple[str, ...]  # batch file names of the training split
    test: tuple[str, ...]  # batch file names of the test split
    label_key: str  # the labels' key in each batch dict: "labels" or "fine_labels"
    title: str  # for messages, e.g. "CIFAR-10"


CIFAR10_BATCHES = PythonBatches("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                                ("test_batch",), "labels", "CIFAR-10")
CIFAR100_BATCHES = PythonBatches("cifar-100-python", ("train",), ("test",), "fine_labels", "CIFAR-100")


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`~cl_diffusion.data.load_dataset` needs to know about one dataset."""

    name: str
    channels: int
    size: int  # native side in pixels
    class_names: tuple[str, ...]  # in the dataset's standard label order
    folders: tuple[str, ...]  # sub-folder names of a data root that may hold it
    torchvision_name: str  # torchvision.datasets class, for the download
    idx: bool  # distributed as idx files (else as torchvision's python batches)
    batches: PythonBatches = CIFAR10_BATCHES  # the python-batch layout when not idx
    #: (training, test) images per class in the standard splits, so that memory and cost are
    #: known before the data is loaded (preflight); None where only loading tells.
    split_per_class: tuple[int, int] | None = None


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 1, 28,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ("fashion-mnist", "fashion_mnist", "FashionMNIST"), "FashionMNIST", idx=True,
        split_per_class=(6000, 1000)),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        ("cifar10", "CIFAR10", "cifar-10", "cifar_10"), "CIFAR10", idx=False, split_per_class=(5000, 1000)),
    # CIFAR-100 with its 100 fine labels (the 20 coarse superclass labels are not read)
    "cifar-100": DatasetInfo(
        "cifar-100", 3, 32,
        ("apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
         "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
         "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
         "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
         "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle",
         "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
         "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon",
         "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
         "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
         "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
         "willow_tree", "wolf", "woman", "worm"),
        ("cifar100", "CIFAR100", "cifar-100", "cifar_100"), "CIFAR100", idx=False, batches=CIFAR100_BATCHES,
        split_per_class=(500, 100)),
}
