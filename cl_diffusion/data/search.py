"""Finding a dataset on disk (or downloading it), then handing it to the right reader.

:func:`load_dataset` returns the train and test splits of a dataset at its native resolution
(Fashion-MNIST 1x28x28, CIFAR-10 / CIFAR-100 3x32x32) as :class:`~.containers.LabeledImages`. It looks in these places,
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

The readers themselves, and the cache of decoded image folders, are in :mod:`.readers`.
"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from ..errors import UserError
from .containers import DATASETS, FOLDER, DatasetInfo, DatasetSplits
from .readers import (_IDX_FILES, _idx_path, _image_folder_mismatch, _load_cifar_batches, _load_idx, cache_dir,
                      load_image_folder, load_image_folder_at)

SYSTEM_ROOTS: tuple[str, ...] = ("/usr/share/datasets",)  # searched after data_root / CL_DIFFUSION_DATA


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
