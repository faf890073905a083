"""Datasets as in-memory ``uint8`` tensors: where to find them, how to read them, how to cache them.

:func:`load_dataset` returns the train and test splits of a dataset at its native resolution
(Fashion-MNIST 1x28x28, CIFAR-10 / CIFAR-100 3x32x32) as :class:`LabeledImages`. It looks in these places,
in order, and stops at the first that holds the data:

1. ``data_root`` if given, else env ``CL_DIFFUSION_DATA``. Inside that folder ``R`` it accepts
   (first match wins; ``{a,b}`` means either name):

   - fashion-mnist, the four idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in
     ``R/FashionMNIST/raw/`` (torchvision's layout), ``R/{fashion-mnist,fashion_mnist,FashionMNIST}/``
     or ``R/`` itself;
   - cifar10, torchvision's pickled batches ``R/cifar-10-batches-py/`` or
     ``R/{cifar10,CIFAR10,cifar-10,cifar_10}/cifar-10-batches-py/``;
   - cifar-100 (CIFAR-100, fine labels), likewise ``R/cifar-100-python/`` or
     ``R/{cifar100,CIFAR100,cifar-100,cifar_100}/cifar-100-python/``;
   - either dataset, an image folder ``train/<class>/*.{png,jpg,...}`` + ``test/<class>/*`` in
     ``R/<name>/`` for the names above, or in ``R/`` itself. Images must be at native size.
2. the system folders ``/usr/share/datasets/<name>/`` (Debian's ``dataset-fashion-mnist``), then
   ``./data/<name>/`` under the current folder (where ``scripts/setup.sh`` unpacks the offline
   CIFAR-10 copy).
3. ``$CL_DIFFUSION_CACHE/data`` (default ``~/.cache/cl_diffusion/data``), where a torchvision
   download goes; a download is tried only when the mirror answers within a few seconds and
   env ``CL_DIFFUSION_NO_DOWNLOAD`` is unset.
4. otherwise a one-line :class:`~cl_diffusion.errors.UserError` naming every path tried and what
   to put where.

Decoding an image folder (60k JPEGs) is slow, so the decoded arrays are cached once in
``$CL_DIFFUSION_CACHE/decoded/<hash>.npz``, keyed by the folder's absolute path, file count and
newest mtime; later loads take about a second.

The dataset name ``"folder"`` is any image folder ``train/<class>/*`` + ``test/<class>/*`` (or
``val/<class>/*``) at ``data_root`` itself, read by :func:`load_image_folder_at`: classes from the
sub-folders, channels from the first image, images center-cropped to a square and resized.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import socket
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence
from urllib.parse import urlparse

import numpy as np
import torch

from .errors import UserError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SYSTEM_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)  # searched after data_root / CL_DIFFUSION_DATA
FOLDER = "folder"  # load_dataset name of a generic image folder at data_root (see load_image_folder_at)
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes read as 1 channel; every other mode as RGB
_CACHE_FORMAT = 1  # bump when the decoded-cache content changes


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
# What each dataset looks like on disk
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
    """What :func:`load_dataset` needs to know about one dataset."""

    name: str
    channels: int
    size: int  # native side in pixels
    class_names: tuple[str, ...]  # in the dataset's standard label order
    folders: tuple[str, ...]  # sub-folder names of a data root that may hold it
    torchvision_name: str  # torchvision.datasets class, for the download
    idx: bool  # distributed as idx files (else as torchvision's python batches)
    batches: PythonBatches = CIFAR10_BATCHES  # the python-batch layout when not idx


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", 1, 28,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        ("fashion-mnist", "fashion_mnist", "FashionMNIST"), "FashionMNIST", idx=True),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        ("cifar10", "CIFAR10", "cifar-10", "cifar_10"), "CIFAR10", idx=False),
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
        ("cifar100", "CIFAR100", "cifar-100", "cifar_100"), "CIFAR100", idx=False, batches=CIFAR100_BATCHES),
}
_IDX_FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
              ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}


def cache_dir() -> Path:
    """``$CL_DIFFUSION_CACHE``, default ``~/.cache/cl_diffusion``: downloads and decoded images."""
    return Path(os.environ.get("CL_DIFFUSION_CACHE") or Path.home() / ".cache" / "cl_diffusion")


def _candidates(info: DatasetInfo, root: Path, include_root: bool) -> list[tuple[Path, str]]:
    """Folders under ``root`` that may hold ``info``'s data, with the loader kind for each."""
    subs = [root / f for f in info.folders] + ([root] if include_root else [])
    if info.idx:
        native = [(root / "FashionMNIST" / "raw", "idx")] + [(d, "idx") for d in subs]
    else:
        native = [(d / info.batches.folder, "cifar-batches") for d in [root] + subs[:len(info.folders)]]
    return native + [(d, "image-folder") for d in subs]


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------
def load_dataset(name: str, data_root: str | os.PathLike | None = None) -> DatasetSplits:
    """Find and load dataset ``name`` (a :data:`DATASETS` name, or ``"folder"``) at native resolution.

    See the module docstring for the search order. ``data_root`` ``""``/``None`` means env
    ``CL_DIFFUSION_DATA`` (except for ``"folder"``, which needs ``data_root``). Raises
    :class:`UserError` when the data is nowhere to be found or a folder holds an incomplete copy.
    """
    if name == FOLDER:
        return load_image_folder_at(data_root or "")
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(sorted([*DATASETS, FOLDER]))}")
    info = DATASETS[name]
    root = str(data_root or "") or os.environ.get("CL_DIFFUSION_DATA", "")
    searches = [(Path(root).expanduser(), True)] if root else []
    searches += [(Path(r), False) for r in SYSTEM_ROOTS] + [(Path.cwd() / "data", False)]
    searches += [(cache_dir() / "data", False)]
    tried: list[str] = []
    for base, include_root in searches:
        found = _first_present(info, base, include_root, tried)
        if found is not None:
            return _load(info, *found)
    ok, why = _download(info, cache_dir() / "data")
    tried.append(f"download ({why})")
    if ok:
        found = _first_present(info, cache_dir() / "data", False, [])
        if found is not None:
            return _load(info, *found)
    raise UserError(f"{name} not found; tried: {', '.join(tried)}. {_how_to_fix(info, root)}")


def _first_present(info: DatasetInfo, base: Path, include_root: bool, tried: list[str]) -> tuple[Path, str] | None:
    """The first candidate folder under ``base`` that holds the data; appends the others to ``tried``."""
    for folder, kind in _candidates(info, base, include_root):
        why = _absent_reason(info, folder, kind)
        if why is None:
            return folder, kind
        entry = f"{folder}{'' if why == '' else f' ({why})'}"
        if entry not in tried:
            tried.append(entry)
    return None


def _absent_reason(info: DatasetInfo, folder: Path, kind: str) -> str | None:
    """``None`` if ``folder`` holds the data, else why not ('' = nothing there). Raises on a partial copy."""
    if not folder.is_dir():
        return ""
    if kind == "idx":
        have = {k: _idx_path(folder, stem) for k, stem in _IDX_FILES.items()}
        if not any(have.values()):
            return ""
        missing = [stem for k, stem in _IDX_FILES.items() if have[k] is None]
        if missing:
            raise UserError(f"{folder} holds only part of {info.name}: missing {', '.join(missing)}[.gz]; "
                            f"it needs {', '.join(f'{s}.gz' for s in _IDX_FILES.values())}")
        return None
    if kind == "cifar-batches":
        b = info.batches
        missing = [n for n in b.train + b.test if not (folder / n).is_file()]
        if missing:
            raise UserError(f"{folder} holds only part of torchvision's {b.title}: missing {', '.join(missing)}")
        return None
    if not (folder / "train").is_dir() and not (folder / "test").is_dir():
        return ""
    return _image_folder_mismatch(info, folder)


def _idx_path(folder: Path, stem: str) -> Path | None:
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


def _how_to_fix(info: DatasetInfo, root: str) -> str:
    d = root or "DIR"
    where = f"pass --data-root {d} (or set CL_DIFFUSION_DATA={d})"
    if info.idx:
        files = ", ".join(f"{s}.gz" for s in _IDX_FILES.values())
        return (f"Put {files} into {d}/{info.folders[0]}/ and {where}; or apt-get install "
                f"dataset-fashion-mnist, which is found in /usr/share/datasets without options")
    names = info.class_names
    classes = " ".join(names) if len(names) <= 20 else f"the {len(names)} classes {names[0]} ... {names[-1]}"
    return (f"Put the image folders train/<class>/*.png|jpg and test/<class>/*.png|jpg ({classes}) into "
            f"{d}/{info.folders[0]}/, or torchvision's {info.batches.folder}/ into {d}/, and {where}")


def _load(info: DatasetInfo, folder: Path, kind: str) -> DatasetSplits:
    if kind == "idx":
        return _load_idx(info, folder)
    if kind == "cifar-batches":
        return _load_cifar_batches(info, folder)
    return load_image_folder(info, folder)


# --------------------------------------------------------------------------------------------
# idx files (Fashion-MNIST)
# --------------------------------------------------------------------------------------------
#: What to do about a truncated or corrupted dataset file.
_REFETCH = "delete it and fetch the dataset again (or put an intact copy there)"


def read_idx(path: Path) -> np.ndarray:
    """One idx file (LeCun's MNIST format, optionally gzipped) as a ``uint8`` array."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # a truncated or damaged download
            raise UserError(f"{path} is truncated or corrupted ({err}); {_REFETCH}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not a uint8 idx file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated: header says {shape}, found {data.size} bytes; {_REFETCH}")
    return data.reshape(shape)


def _load_idx(info: DatasetInfo, folder: Path) -> DatasetSplits:
    splits = {}
    for split in ("train", "test"):
        images = read_idx(_idx_path(folder, _IDX_FILES[(split, "images")]))
        labels = read_idx(_idx_path(folder, _IDX_FILES[(split, "labels")]))
        if images.shape[1:] != (info.size, info.size) or len(images) != len(labels):
            raise UserError(f"{folder}: {split} idx files hold images {images.shape} and labels {labels.shape}, "
                            f"expected [N,{info.size},{info.size}] and [N]")
        splits[split] = LabeledImages(torch.from_numpy(images.copy()).unsqueeze(1),
                                      torch.from_numpy(labels.astype(np.int64)))
    return DatasetSplits(splits["train"], splits["test"], list(info.class_names), str(folder))


# --------------------------------------------------------------------------------------------
# torchvision's CIFAR-10 / CIFAR-100 python batches, read without executing arbitrary pickle code
# --------------------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays, and refuses every other global."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: py3 protocol-2 bytes

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        try:
            d = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as err:
            raise UserError(f"{path} is not a readable CIFAR batch, truncated or corrupted ({err}); "
                            f"{_REFETCH}") from None
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise UserError(f"{path} is not a CIFAR batch with 'data' and {label_key!r} (keys: {sorted(d)})")
    return np.asarray(d["data"], dtype=np.uint8), np.asarray(d[label_key], dtype=np.int64)


def _load_cifar_batches(info: DatasetInfo, folder: Path) -> DatasetSplits:
    splits = {}
    for split, names in (("train", info.batches.train), ("test", info.batches.test)):
        parts = [_read_cifar_batch(folder / n, info.batches.label_key) for n in names]
        data = np.concatenate([p[0] for p in parts]).reshape(-1, info.channels, info.size, info.size)
        labels = np.concatenate([p[1] for p in parts])
        splits[split] = LabeledImages(torch.from_numpy(data), torch.from_numpy(labels))
    return DatasetSplits(splits["train"], splits["test"], list(info.class_names), str(folder))


# --------------------------------------------------------------------------------------------
# Image folders: train/<class>/* and test/<class>/*, decoded once and cached
# --------------------------------------------------------------------------------------------
def _list_split(folder: Path, split: str) -> dict[str, list[os.DirEntry]]:
    """``{class folder name: sorted image entries}`` of ``folder/split``; UserError if missing or empty."""
    layout = f"expected {folder}/train/<class>/*.png|jpg and {folder}/test/<class>/*.png|jpg"
    d = folder / split
    if not d.is_dir():
        raise UserError(f"image folder {folder} has no {split}/ split; {layout}")
    classes: dict[str, list[os.DirEntry]] = {}
    for sub in sorted((e for e in os.scandir(d) if e.is_dir()), key=lambda e: e.name):
        files = [e for e in os.scandir(sub.path) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
        files.sort(key=lambda e: e.name)
        if files:
            classes[sub.name] = files
    if not classes:
        raise UserError(f"image folder {d} holds no class sub-folders with images; {layout}")
    return classes


def class_order_of(info: DatasetInfo, folder_names: Sequence[str]) -> list[str]:
    """Folder names in label order: the dataset's standard order when the names match it
    (ignoring case and punctuation), numeric order for numeric names, else sorted order."""
    def norm(s: str) -> str:
        return "".join(ch for ch in s.lower() if ch.isalnum())
    standard = {norm(c): i for i, c in enumerate(info.class_names)}
    if sorted(norm(n) for n in folder_names) == sorted(standard):
        return sorted(folder_names, key=lambda n: standard[norm(n)])
    if all(n.isdigit() for n in folder_names):
        return sorted(folder_names, key=int)
    return sorted(folder_names)


def _first_image(folder: Path) -> str:
    """Path of the first image in ``folder/train/<class>/``; UserError describing the layout if none."""
    train = folder / "train"
    subs = sorted(e.path for e in os.scandir(train) if e.is_dir()) if train.is_dir() else []
    first = next((e.path for d in subs for e in sorted(os.scandir(d), key=lambda e: e.name)
                  if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)), None)
    if first is None:
        _list_split(folder, "train")  # raises the UserError that describes the expected layout
    assert first is not None
    return first


def _image_folder_mismatch(info: DatasetInfo, folder: Path) -> str | None:
    """``None`` if the first training image has ``info``'s native size, else why it is not this dataset."""
    from PIL import Image

    with Image.open(_first_image(folder)) as im:
        if im.size != (info.size, info.size):
            return f"images are {im.size[0]}x{im.size[1]}, {info.name} needs {info.size}x{info.size}"
    return None


def load_image_folder(info: DatasetInfo, folder: Path, fit: bool = False, test_split: str = "test") -> DatasetSplits:
    """Decode ``folder/{train,<test_split>}/<class>/*`` (or read the decode cache) into :class:`DatasetSplits`.

    ``fit``: images of another size are center-cropped to a square and resized to ``info.size``
    (else they are an error).
    """
    listing = {"train": _list_split(folder, "train"), "test": _list_split(folder, test_split)}
    if set(listing["train"]) != set(listing["test"]):
        raise UserError(f"image folder {folder}: train/ and test/ have different class folders "
                        f"({sorted(listing['train'])} vs {sorted(listing['test'])})")
    names = class_order_of(info, list(listing["train"]))
    files = {s: [(e, names.index(c)) for c in names for e in listing[s][c]] for s in listing}
    cache = cache_dir() / "decoded" / f"{_cache_key(info, folder, names, files)}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return _splits_from_arrays(arrays, names, folder)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below
    arrays = {}
    for split, items in files.items():
        arrays[f"{split}_images"] = _decode(info, [e.path for e, _ in items], f"decoding {folder.name}/{split}", fit)
        arrays[f"{split}_labels"] = np.array([y for _, y in items], dtype=np.int64)
    _save_atomic(cache, arrays)
    return _splits_from_arrays(arrays, names, folder)


def _square_resize(img: Image.Image, size: int) -> Image.Image:
    """Center-crop a PIL image to a square, then resize it to ``size x size`` (bilinear, antialiased)."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)


def load_image_folder_at(root: str | os.PathLike, size: int | None = None) -> DatasetSplits:
    """Any image folder ``root/train/<class>/*`` + ``root/test/<class>/*`` (or ``root/val/<class>/*``).

    Labels follow the class folders (numeric order for numeric names, else sorted); the channels
    follow the first training image's mode (grey modes -> 1, everything else -> RGB, alpha dropped);
    every image is center-cropped to a square and resized to ``size`` (``None``: the first training
    image's side), so mixed sizes are fine. Decoded once and cached like the other image folders.
    Raises :class:`UserError` when ``root`` is empty or does not hold this layout.
    """
    from PIL import Image

    layout = "train/<class>/*.png|jpg and test/<class>/*.png|jpg"
    if not str(root):
        raise UserError(f"the {FOLDER!r} dataset needs --data-root DIR, a folder with {layout}")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise UserError(f"--data-root {folder} is not a folder; the {FOLDER!r} dataset needs {layout} in it")
    with Image.open(_first_image(folder)) as im:
        channels = 1 if im.mode in GREY_MODES else 3
        side = size or min(im.size)
    test_split = "test" if (folder / "test").is_dir() or not (folder / "val").is_dir() else "val"
    # the name keys the decode cache, so it names what the arrays hold
    info = DatasetInfo(f"{FOLDER}-{side}px-c{channels}", channels, side, (), (), "", idx=False)
    return load_image_folder(info, folder, fit=True, test_split=test_split)


def _cache_key(info: DatasetInfo, folder: Path, names: list[str],
               files: dict[str, list[tuple[os.DirEntry, int]]]) -> str:
    """Hash of the folder's absolute path, file count, newest mtime, class order and decode format."""
    entries = [e for items in files.values() for e, _ in items]
    newest = max(e.stat().st_mtime_ns for e in entries)
    key = f"{_CACHE_FORMAT}|{info.name}|{folder.resolve()}|{len(entries)}|{newest}|{names}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _decode(info: DatasetInfo, paths: list[str], desc: str, fit: bool = False) -> np.ndarray:
    """Decode image files with PIL on a thread pool -> ``uint8 [N, C, H, W]``; ``fit``: see
    :func:`load_image_folder`."""
    from PIL import Image
    from tqdm.auto import tqdm

    mode = "L" if info.channels == 1 else "RGB"
    out = np.empty((len(paths), info.size, info.size, info.channels), dtype=np.uint8)

    def work(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            try:
                with Image.open(paths[i]) as im:
                    if im.size != (info.size, info.size) and not fit:
                        raise UserError(f"{paths[i]} is {im.size[0]}x{im.size[1]}; {info.name} images must be "
                                        f"{info.size}x{info.size}")
                    img = im.convert(mode)
            except (OSError, ValueError, SyntaxError) as err:  # PIL: unidentified, truncated, bad header
                raise UserError(f"{paths[i]} cannot be decoded, truncated or corrupted ({err}); "
                                "replace it with an intact copy or remove it") from None
            if img.size != (info.size, info.size):
                img = _square_resize(img, info.size)
            out[i] = np.asarray(img).reshape(info.size, info.size, info.channels)
        return hi - lo

    chunk = 1024
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", mininterval=1.0) as bar:
        for n in pool.map(lambda lo: work(lo, min(lo + chunk, len(paths))), range(0, len(paths), chunk)):
            bar.update(n)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` through a temp file and ``os.replace``; a failure only warns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:  # a read-only cache only costs speed
        import warnings
        warnings.warn(f"could not write the decode cache {path}: {err}", stacklevel=2)


def _splits_from_arrays(a: dict[str, np.ndarray], names: list[str], folder: Path) -> DatasetSplits:
    def split(s: str) -> LabeledImages:
        return LabeledImages(torch.from_numpy(a[f"{s}_images"]), torch.from_numpy(a[f"{s}_labels"]))
    return DatasetSplits(split("train"), split("test"), list(names), str(folder))


# --------------------------------------------------------------------------------------------
# Download (only when a network exists)
# --------------------------------------------------------------------------------------------
def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host:443`` accepts a TCP connection within ``timeout`` seconds (DNS included)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _download(info: DatasetInfo, root: Path) -> tuple[bool, str]:
    """Try torchvision's download into ``root``; ``(ok, what happened)``. Never raises."""
    if os.environ.get("CL_DIFFUSION_NO_DOWNLOAD"):
        return False, "disabled by CL_DIFFUSION_NO_DOWNLOAD"
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, info.torchvision_name)
        url = cls.mirrors[0] if hasattr(cls, "mirrors") else cls.url
        host = urlparse(url).hostname or ""
        if not _reachable(host):
            return False, f"no network: {host} unreachable"
        for train in (True, False):
            cls(str(root), train=train, download=True)
        return True, "done"
    except Exception as err:  # noqa: BLE001 - any failure just means "not available"
        return False, f"failed: {type(err).__name__}: {err}".replace("\n", " ")
