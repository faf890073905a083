"""Dataset resolution and loading (cl_diffusion.data) and task streams (cl_diffusion.stream).

Most tests use tiny synthetic datasets written to ``tmp_path``; the real Fashion-MNIST files of
Debian's ``dataset-fashion-mnist`` are used when present (skipped otherwise).
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_diffusion import data as D
from cl_diffusion.data import readers, search
from cl_diffusion.config import RunConfig
from cl_diffusion.errors import UserError
from cl_diffusion.stream import BENCHMARKS, BenchmarkSpec, avalanche_class_split, task_classes

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL_FMNIST = (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file()
IDX_STEMS = list(readers._IDX_FILES.values())


pytestmark = pytest.mark.usefixtures("no_local_data")


# --------------------------------------------------------------------------------------------
# Synthetic datasets
# --------------------------------------------------------------------------------------------
def write_idx(path: Path, arr: np.ndarray) -> None:
    raw = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def synthetic_fmnist(n_train: int = 6, n_test: int = 2, classes: int = 10) -> dict[str, np.ndarray]:
    """Pixel (0,0) = 20 * label, pixel (0,1) = index in the split; labels cycle 0..classes-1."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n * classes) % classes).astype(np.uint8)
        images = np.full((n * classes, 28, 28), 100, dtype=np.uint8)
        images[:, 0, 0] = labels * 20
        images[:, 0, 1] = np.arange(n * classes) % 256
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    return out


def write_fmnist_idx(folder: Path, gz: bool = True, **kw) -> dict[str, np.ndarray]:
    arrays = synthetic_fmnist(**kw)
    for (split, what), stem in readers._IDX_FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[f"{split}_{what}"])
    return arrays


def write_image_folder(folder: Path, names: list[str], n_train: int = 3, n_test: int = 2,
                       size: int = 32, mode: str = "RGB") -> None:
    """PNG image folder; every pixel of an image of folder ``names[i]`` is ``10 * i``."""
    for split, n in (("train", n_train), ("test", n_test)):
        for i, name in enumerate(names):
            d = folder / split / name
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                Image.new(mode, (size, size), (10 * i,) * len(mode)).save(d / f"{j:04d}.png")


def run_cfg(root: Path | str, **kw) -> RunConfig:
    return RunConfig(data_root=str(root), **kw)


# --------------------------------------------------------------------------------------------
# Containers and ranges
# --------------------------------------------------------------------------------------------
def test_labeled_images_subset_and_cat():
    x = D.LabeledImages(torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2).clone(),
                        torch.tensor([0, 1, 0, 1, 2]))
    assert len(x.subset(x.labels == 1)) == 2
    assert x.subset([4, 0]).labels.tolist() == [2, 0]
    assert x.subset([True, False, False, False, True]).labels.tolist() == [0, 2] and len(x.subset([])) == 0
    both = D.LabeledImages.cat([x.subset(slice(0, 2)), x.subset(slice(2, 5))])
    assert torch.equal(both.images, x.images) and torch.equal(both.labels, x.labels)
    with pytest.raises(ValueError):
        D.LabeledImages(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))  # float images


def test_value_ranges():
    u8 = torch.tensor([0, 128, 255], dtype=torch.uint8)
    x = D.to_model_range(u8)
    assert x.dtype == torch.float32 and x[0] == -1 and x[2] == 1
    assert torch.allclose(D.to_unit_range(x) * 255, u8.float())
    assert D.to_unit_range(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------
def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(UserError, match="cifar10, fashion-mnist"):
        D.load_dataset("mnist", tmp_path)


def test_resolution_order_explicit_then_env_then_system(tmp_path, monkeypatch):
    explicit, env, system = tmp_path / "explicit", tmp_path / "env", tmp_path / "system"
    write_fmnist_idx(explicit / "FashionMNIST" / "raw", gz=False, n_train=1)  # torchvision layout
    write_fmnist_idx(env / "fashion-mnist", n_train=2)  # Debian file names in a sub-folder
    write_fmnist_idx(system / "fashion-mnist", n_train=3)
    monkeypatch.setenv("CL_DIFFUSION_DATA", str(env))
    got = D.load_dataset("fashion-mnist", str(explicit))
    assert got.source == str(explicit / "FashionMNIST" / "raw") and len(got.train) == 10
    got = D.load_dataset("fashion-mnist", "")
    assert got.source == str(env / "fashion-mnist") and len(got.train) == 20
    monkeypatch.delenv("CL_DIFFUSION_DATA")
    got = D.load_dataset("fashion-mnist", None)
    assert got.source == str(system / "fashion-mnist") and len(got.train) == 30
    assert got.train.images.shape == (30, 1, 28, 28) and got.train.labels.dtype == torch.int64
    assert got.class_names[0] == "T-shirt/top" and len(got.test) == 20


def test_idx_files_directly_in_root(tmp_path):
    arrays = write_fmnist_idx(tmp_path / "flat")
    got = D.load_dataset("fashion-mnist", tmp_path / "flat")
    assert np.array_equal(got.train.images[:, 0].numpy(), arrays["train_images"])
    assert got.train.labels.tolist() == arrays["train_labels"].tolist()


@pytest.mark.parametrize("name,expect", [
    ("fashion-mnist", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "fashion-mnist/"]),
    ("cifar10", ["train/<class>/", "cifar-10-batches-py", "airplane", "cifar10/"]),
])
def test_missing_data_error_names_paths_and_fix(tmp_path, name, expect):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(UserError) as err:
        D.load_dataset(name, root)
    msg = str(err.value)
    assert "\n" not in msg and "--data-root" in msg and "download (disabled" in msg
    info = D.DATASETS[name]
    tried = [str(p) for p, _ in search._candidates(info, root, True)]
    tried += [str(p) for r in search.SYSTEM_ROOTS for p, _ in search._candidates(info, Path(r), False)]
    tried += [str(p) for p, _ in search._candidates(info, D.cache_dir() / "data", False)]
    for piece in tried + expect:
        assert piece in msg, piece


def test_download_is_tried_last_and_used(tmp_path, monkeypatch):
    calls = []

    def fake_download(info, root):
        calls.append(root)
        write_fmnist_idx(root / "FashionMNIST" / "raw", gz=False)
        return True, "done"

    monkeypatch.setattr(search, "_download", fake_download)
    got = D.load_dataset("fashion-mnist", tmp_path / "nothing")
    assert calls == [D.cache_dir() / "data"] and len(got.train) == 60
    D.load_dataset("fashion-mnist", tmp_path / "nothing")  # now found in the cache, no new download
    assert len(calls) == 1


def test_partial_idx_set_is_an_error(tmp_path):
    write_fmnist_idx(tmp_path / "fashion-mnist")
    (tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="missing t10k-labels-idx1-ubyte"):
        D.load_dataset("fashion-mnist", tmp_path)


def test_cifar_python_batches_load_and_refuse_foreign_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    got = D.load_dataset("cifar10", tmp_path)
    assert got.train.images.shape == (20, 3, 32, 32) and len(got.test) == 3
    first = pickle.loads((folder / "data_batch_1").read_bytes())["data"][0]
    assert np.array_equal(got.train.images[0].numpy().reshape(-1), first)  # channel-major rows
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Path("x"), "labels": []}))
    with pytest.raises(UserError, match="refusing"):
        D.load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------
def test_image_folder_uses_standard_label_order(tmp_path):
    cifar = list(D.DATASETS["cifar10"].class_names)
    write_image_folder(tmp_path / "CIFAR10", [c.upper() for c in reversed(cifar)])
    got = D.load_dataset("cifar10", tmp_path)
    assert got.class_names == [c.upper() for c in cifar]
    # folder reversed(cifar)[i] holds pixel value 10*i, and is CIFAR class 9-i
    assert all(int(got.train.images[got.train.labels == y].float().mean()) == 10 * (9 - y) for y in range(10))
    fm_names = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                "Ankle boot"]
    write_image_folder(tmp_path / "fm", fm_names, size=28, mode="L")
    got = D.load_dataset("fashion-mnist", tmp_path / "fm")  # train/ test/ directly in the root
    assert got.class_names == fm_names and got.train.images.shape == (30, 1, 28, 28)


def test_image_folder_other_names_sorted(tmp_path):
    assert D.class_order_of(D.DATASETS["cifar10"], ["10", "9", "1"]) == ["1", "9", "10"]
    write_image_folder(tmp_path / "cifar-10", ["zebra", "apple", "mango"], n_train=2, n_test=1)
    got = D.load_dataset("cifar10", tmp_path)
    assert got.class_names == ["apple", "mango", "zebra"]
    assert got.train.labels.tolist() == [0, 0, 1, 1, 2, 2] and got.test.labels.tolist() == [0, 1, 2]
    assert got.train.images[0].float().mean() == 10  # 'apple' was written second


def test_image_folder_decode_cache_reused_and_invalidated(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "cifar10", ["a", "b"])
    first = D.load_dataset("cifar10", tmp_path)
    cached = list((D.cache_dir() / "decoded").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # no temp file left behind

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(readers, "_decode", no_decode)
    again = D.load_dataset("cifar10", tmp_path)
    assert torch.equal(first.train.images, again.train.images) and torch.equal(first.test.labels, again.test.labels)
    Image.new("RGB", (32, 32)).save(tmp_path / "cifar10" / "train" / "a" / "extra.png")
    with pytest.raises(AssertionError, match="decoded again"):
        D.load_dataset("cifar10", tmp_path)


def test_image_folder_missing_split_is_an_error(tmp_path):
    write_image_folder(tmp_path / "cifar10", ["a", "b"])
    for f in (tmp_path / "cifar10" / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(UserError, match=r"cifar10/test holds no class sub-folders.*train/<class>/"):
        D.load_dataset("cifar10", tmp_path)


def test_image_folder_of_the_wrong_size_is_skipped(tmp_path):
    write_image_folder(tmp_path, ["a", "b"], size=32)  # CIFAR-sized, directly in the root
    with pytest.raises(UserError, match="images are 32x32, fashion-mnist needs 28x28"):
        D.load_dataset("fashion-mnist", tmp_path)


# --------------------------------------------------------------------------------------------
# Task streams
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fm_root(tmp_path) -> Path:
    write_fmnist_idx(tmp_path / "fm" / "fashion-mnist", n_train=6, n_test=2)
    return tmp_path / "fm"


def test_registered_benchmarks():
    assert {"fmnist-5", "cifar10-5"} <= set(BENCHMARKS.names())
    fm, cf = BENCHMARKS.get("fmnist-5"), BENCHMARKS.get("cifar10-5")
    assert (fm.dataset, fm.n_tasks, fm.hflip, fm.paper["epochs"], fm.paper["batch_size"]) == \
        ("fashion-mnist", 5, False, 100, 128)
    assert (cf.dataset, cf.n_tasks, cf.hflip, cf.paper["epochs"], cf.paper["model"]) == \
        ("cifar10", 5, True, 200, "paper-cifar10")
    with pytest.raises(UserError, match="valid choices"):
        BENCHMARKS.get("nope")


def test_fixed_order_disjoint_tasks_and_sizes(fm_root):
    stream = BENCHMARKS.get("fmnist-5").build(run_cfg(fm_root))
    assert stream.n_tasks == 5 and [t.classes for t in stream.tasks] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert (stream.channels, stream.image_size, stream.hflip, stream.num_classes) == (1, 32, False, 10)
    for t in stream.tasks:
        assert set(t.train.labels.tolist()) == set(t.classes) == set(t.test.labels.tolist())
        assert (len(t.train), len(t.test)) == (12, 4) and t.train.images.shape[1:] == (1, 32, 32)
    assert stream.min_task_train_size == 12
    assert len(stream.seen_train(2)) == 36 and set(stream.seen_test(1).labels.tolist()) == {0, 1, 2, 3}
    assert stream.dataset_id.startswith("fashion-mnist-32px-fixed-nall-")


def test_seeded_order_is_avalanches(fm_root):
    from avalanche.benchmarks import nc_benchmark

    class Stub(torch.utils.data.Dataset):  # many items per class, in a scrambled order
        targets = [int(c) for c in torch.randperm(10, generator=torch.Generator().manual_seed(9)).repeat(3)]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return torch.zeros(1), self.targets[i]

    orders = {}
    for seed in (0, 1, 2):
        bench = nc_benchmark(Stub(), Stub(), n_experiences=5, task_labels=False, seed=seed)
        expected = [sorted(e.classes_in_this_experience) for e in bench.train_stream]
        before = torch.random.get_rng_state()
        orders[seed] = task_classes("seeded", 10, 5, seed)
        assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is left alone
        assert orders[seed] == expected
    assert len({str(o) for o in orders.values()}) == 3
    stream = BENCHMARKS.get("fmnist-5").build(run_cfg(fm_root, class_order="seeded", seed=1))
    assert [t.classes for t in stream.tasks] == orders[1] and "seeded1" in stream.dataset_id


def test_train_subset_keeps_first_per_class_and_resizes(fm_root):
    stream = BENCHMARKS.get("fmnist-5").build(run_cfg(fm_root, train_subset=2, image_size=16))
    t = stream.tasks[1]
    assert len(t.train) == 4 and len(t.test) == 4  # test sets are never subset
    assert t.train.images.shape == (4, 1, 16, 16) and stream.image_size == 16
    # synthetic images are constant 100 except two pixels; the resize keeps the flat area
    assert int(t.train.images[0, 0, 8, 8]) == 100
    full = BENCHMARKS.get("fmnist-5").build(run_cfg(fm_root, image_size=28))
    kept = full.tasks[1].train.images[:, 0, 0, 1].tolist()  # index pixel, native size untouched
    assert kept == [2, 3, 12, 13, 22, 23, 32, 33, 42, 43, 52, 53]
    assert full.dataset_id != stream.dataset_id


def test_uneven_split_is_a_user_error(fm_root):
    with pytest.raises(UserError, match="10 classes into 3"):
        BenchmarkSpec("x", "fashion-mnist", n_tasks=3).build(run_cfg(fm_root))


# --------------------------------------------------------------------------------------------
# Real Fashion-MNIST (Debian's dataset-fashion-mnist)
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not HAVE_REAL_FMNIST, reason="needs /usr/share/datasets/fashion-mnist")
def test_real_fmnist5_tasks():
    stream = BENCHMARKS.get("fmnist-5").build(run_cfg(REAL_FMNIST))
    assert [(len(t.train), len(t.test)) for t in stream.tasks] == [(12000, 2000)] * 5
    assert stream.tasks[0].train.images.shape[1:] == (1, 32, 32)
    assert stream.tasks[0].train.images.dtype == torch.uint8
    assert stream.class_names[9] == "Ankle boot"


@pytest.mark.skipif(not HAVE_REAL_FMNIST, reason="needs /usr/share/datasets/fashion-mnist")
def test_seeded_order_matches_split_fmnist(tmp_path):
    from avalanche.benchmarks.classic import SplitFMNIST

    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout, so no download is attempted
    raw.mkdir(parents=True)
    for stem in IDX_STEMS:
        (raw / stem).write_bytes(gzip.decompress((REAL_FMNIST / f"{stem}.gz").read_bytes()))
    bench = SplitFMNIST(n_experiences=5, seed=3, dataset_root=str(tmp_path))
    expected = [sorted(e.classes_in_this_experience) for e in bench.train_stream]
    assert task_classes("seeded", 10, 5, 3) == expected
    assert avalanche_class_split(10, 5, 3) != avalanche_class_split(10, 5, 4)
