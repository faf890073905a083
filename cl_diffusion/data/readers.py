"""Reading dataset files into :class:`~cl_diffusion.data.containers.DatasetSplits`, and caching decoded images.

Three formats, each read into ``uint8`` tensors at native resolution: LeCun's idx files
(Fashion-MNIST, optionally gzipped), torchvision's pickled CIFAR-10 / CIFAR-100 python batches (read
without executing arbitrary pickle code), and image folders ``train/<class>/*`` + ``test/<class>/*``.
A truncated or corrupted file is a :class:`~cl_diffusion.errors.UserError` naming it.

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
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..errors import UserError
from .containers import FOLDER, DatasetInfo, DatasetSplits, LabeledImages

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes read as 1 channel; every other mode as RGB
_CACHE_FORMAT = 1  # bump when the decoded-cache content changes


def cache_dir() -> Path:
    """``$CL_DIFFUSION_CACHE``, default ``~/.cache/cl_diffusion``: downloads and decoded images."""
    return Path(os.environ.get("CL_DIFFUSION_CACHE") or Path.home() / ".cache" / "cl_diffusion")


# --------------------------------------------------------------------------------------------
# idx files (Fashion-MNIST)
# --------------------------------------------------------------------------------------------
_IDX_FILES = {("train", "images"): "train-images-idx3-ubyte", ("train", "labels"): "train-labels-idx1-ubyte",
              ("test", "images"): "t10k-images-idx3-ubyte", ("test", "labels"): "t10k-labels-idx1-ubyte"}
#: What to do about a truncated or corrupted dataset file.
_REFETCH = "delete it and fetch the dataset again (or put an intact copy there)"


def _idx_path(folder: Path, stem: str) -> Path | None:
    for p in (folder / f"{stem}.gz", folder / stem):
        if p.is_file():
            return p
    return None


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
