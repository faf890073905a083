"""The CIFAR-100 streams (benchmarks/cifar100.py) and the generic image-folder stream
(benchmarks/folder.py), on tiny synthetic data written to tmp_path."""
from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cl_diffusion import data as D
from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.config import RunConfig
from cl_diffusion.errors import UserError
from cl_diffusion.options import option_keys
from cl_diffusion.stream import BENCHMARKS, BenchmarkSpec, task_classes

from .conftest import read_csv

load_plugins()
CIFAR100 = list(D.DATASETS["cifar-100"].class_names)


pytestmark = pytest.mark.usefixtures("no_local_data", "one_thread")


def write_folder(root: Path, names: list[str], n_train: int, n_test: int, size: int | tuple[int, int],
                 mode: str = "RGB", test_split: str = "test") -> None:
    """PNG images; an image of class i is a flat ``(3*i) % 256`` with a little seeded noise."""
    rng = np.random.default_rng(0)
    w, h = (size, size) if isinstance(size, int) else size
    for split, n in (("train", n_train), (test_split, n_test)):
        for i, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for j in range(n):
                shape = (h, w) if mode == "L" else (h, w, 3)
                px = np.clip((3 * i) % 256 + rng.integers(-2, 3, shape), 0, 255).astype(np.uint8)
                Image.fromarray(px, mode).save(d / f"{j:03d}.png")


@pytest.fixture(scope="module")
def cifar100_root(tmp_path_factory) -> Path:
    """A CIFAR-100-like image folder: the 100 standard class names, 2 train + 1 test image each."""
    root = tmp_path_factory.mktemp("c100")
    write_folder(root / "CIFAR100", CIFAR100, n_train=2, n_test=1, size=32)
    return root


def run_cfg(root: Path | str, **kw) -> RunConfig:
    return RunConfig(data_root=str(root), **kw)


def with_n_tasks(cfg: RunConfig, n: int) -> RunConfig:
    """``cfg`` with the option ``n_tasks``, whether or not RunConfig declares it yet."""
    cfg.n_tasks = n  # a plain attribute until config.py has the field
    return cfg


def n_tasks_sets(n: int, monkeypatch) -> list[tuple[str, str]]:
    """``--set n_tasks=n`` if the option exists, else the folder benchmark's default is patched."""
    if "n_tasks" in option_keys(RunConfig()):
        return [("n_tasks", str(n))]
    spec = BENCHMARKS.get("folder")
    monkeypatch.setitem(BENCHMARKS._entries, "folder", dataclasses.replace(spec, n_tasks=n))
    return []


# --------------------------------------------------------------------------------------------
# CIFAR-100
# --------------------------------------------------------------------------------------------
def test_cifar100_benchmarks_registered_with_cifar10_protocol():
    c10 = BENCHMARKS.get("cifar10-5")
    for n in (10, 20):
        spec = BENCHMARKS.get(f"cifar100-{n}")
        assert (spec.dataset, spec.n_tasks, spec.image_size, spec.hflip) == ("cifar-100", n, 32, True)
        assert spec.paper == c10.paper == {"epochs": 200, "batch_size": 64, "eval_steps": 20, "model": "paper-cifar10"}


@pytest.mark.parametrize("n_tasks", [10, 20])
def test_cifar100_streams_from_an_image_folder(cifar100_root, n_tasks):
    stream = BENCHMARKS.get(f"cifar100-{n_tasks}").build(run_cfg(cifar100_root, image_size=16))
    per = 100 // n_tasks
    assert (stream.n_tasks, stream.num_classes, stream.channels, stream.image_size, stream.hflip) == \
        (n_tasks, 100, 3, 16, True)
    assert [t.classes for t in stream.tasks] == [list(range(k * per, (k + 1) * per)) for k in range(n_tasks)]
    assert stream.class_names == CIFAR100 and all(len(t.train) == 2 * per and len(t.test) == per
                                                  for t in stream.tasks)
    y = 37  # the folder of class 37 holds pixel value 111
    assert abs(stream.tasks[37 // per].train.images[stream.tasks[37 // per].train.labels == y].float().mean() - 111) < 2


def test_cifar100_python_batches_load_fine_labels_and_refuse_foreign_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 6), ("test", 3)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": [99, 0, 42, 5, 7, 1][:n],
                 b"coarse_labels": [0] * n, b"filenames": [b"x.png"] * n, b"batch_label": b"training"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    got = D.load_dataset("cifar-100", tmp_path)
    assert got.train.images.shape == (6, 3, 32, 32) and got.test.labels.tolist() == [99, 0, 42]
    assert got.class_names == CIFAR100 and got.source == str(folder)
    first = pickle.loads((folder / "train").read_bytes())[b"data"][0]
    assert np.array_equal(got.train.images[0].numpy().reshape(-1), first)
    (folder / "test").unlink()
    with pytest.raises(UserError, match="only part of torchvision's CIFAR-100: missing test"):
        D.load_dataset("cifar-100", tmp_path)
    (folder / "test").write_bytes(pickle.dumps({"data": Path("x"), "fine_labels": []}))
    with pytest.raises(UserError, match="refusing"):
        D.load_dataset("cifar-100", tmp_path)


def test_cifar100_missing_data_error_names_the_layouts(tmp_path):
    with pytest.raises(UserError) as err:
        D.load_dataset("cifar-100", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "cifar-100-python" in msg and "cifar100/" in msg and "apple ... worm" in msg


def test_cifar100_seeded_order_is_split_cifar100s(monkeypatch):
    import avalanche.benchmarks.classic.ccifar100 as ccifar100

    class Stub(torch.utils.data.Dataset):  # 100 classes, scrambled, several items each
        targets = [int(c) for c in torch.randperm(100, generator=torch.Generator().manual_seed(5)).repeat(2)]

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return torch.zeros(3, 32, 32), self.targets[i]

    monkeypatch.setattr(ccifar100, "get_cifar100_dataset", lambda root=None: (Stub(), Stub()))
    for n_tasks, seed in ((10, 0), (20, 3)):
        bench = ccifar100.SplitCIFAR100(n_tasks, seed=seed)
        assert task_classes("seeded", 100, n_tasks, seed) == \
            [sorted(int(c) for c in e.classes_in_this_experience) for e in bench.train_stream]


def test_uneven_cifar100_split_names_the_valid_task_counts(cifar100_root):
    with pytest.raises(UserError, match="100 classes into 7 equal tasks; valid task counts: 1, 2, 4, 5, 10, 20, 25, 50, 100"):
        BenchmarkSpec("x", "cifar-100", n_tasks=7).build(run_cfg(cifar100_root))
    with pytest.raises(UserError, match="'cifar100-10' has a fixed 10 tasks; n_tasks applies to the 'folder'"):
        BENCHMARKS.get("cifar100-10").build(with_n_tasks(run_cfg(cifar100_root), 20))
    assert BENCHMARKS.get("cifar100-10").build(with_n_tasks(run_cfg(cifar100_root, image_size=8), 10)).n_tasks == 10


def test_cifar100_10_smoke_run_end_to_end(cifar100_root, tmp_path):
    run_dir = run_experiment("finetune", "cifar100-10", "smoke", out=str(tmp_path / "runs"),
                             data_root=str(cifar100_root), log=lambda *_: None)
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["task"]) for r in rows] == list(range(1, 11))
    assert all(math.isfinite(float(r[c])) for r in rows for c in ("train_loss", "fid_clf", "kld", "acc"))
    per_task = read_csv(run_dir / "per_task.csv")
    assert [(int(r["task_after"]), int(r["task_j"])) for r in per_task] == \
        [(k, j) for k in range(1, 11) for j in range(1, k + 1)]


# --------------------------------------------------------------------------------------------
# The generic image-folder stream
# --------------------------------------------------------------------------------------------
def test_folder_stream_takes_classes_channels_and_size_from_the_data(tmp_path):
    write_folder(tmp_path / "rgb", ["c0", "c1", "c2", "c3", "c4", "c5"], n_train=3, n_test=2, size=20)
    stream = BENCHMARKS.get("folder").build(with_n_tasks(run_cfg(tmp_path / "rgb", image_size=16), 3))
    assert (stream.n_tasks, stream.num_classes, stream.channels, stream.image_size) == (3, 6, 3, 16)
    assert [t.classes for t in stream.tasks] == [[0, 1], [2, 3], [4, 5]]
    assert stream.tasks[2].train.images.shape == (6, 3, 16, 16) and stream.class_names[5] == "c5"
    assert abs(stream.tasks[2].test.images[stream.tasks[2].test.labels == 5].float().mean() - 15) < 2
    # grey, non-square and mixed-size images, numeric class names, val/ as the test split
    write_folder(tmp_path / "grey", [str(i) for i in (10, 9, 2, 1)], n_train=2, n_test=1, size=(24, 18), mode="L",
                 test_split="val")
    Image.fromarray(np.zeros((40, 40), np.uint8), "L").save(tmp_path / "grey" / "train" / "9" / "big.png")
    stream = BENCHMARKS.get("folder").build(with_n_tasks(run_cfg(tmp_path / "grey", image_size=8), 2))
    assert (stream.num_classes, stream.channels, stream.class_names) == (4, 1, ["1", "2", "9", "10"])
    assert stream.tasks[1].train.images.shape == (5, 1, 8, 8)  # classes 9 and 10, 2 + 2 + 1 extra


def test_folder_stream_default_task_count_and_bad_counts(tmp_path):
    write_folder(tmp_path / "d", [f"k{i}" for i in range(10)], n_train=1, n_test=1, size=8)
    assert BENCHMARKS.get("folder").build(run_cfg(tmp_path / "d", image_size=8)).n_tasks == 5
    for bad in (3, 4, 11):
        with pytest.raises(UserError, match=f"10 classes, which do not split into {bad} equal tasks; set n_tasks "
                                            r"to one of 1, 2, 5, 10 \(--set n_tasks=N\)"):
            BENCHMARKS.get("folder").build(with_n_tasks(run_cfg(tmp_path / "d", image_size=8), bad))


def test_folder_stream_needs_a_data_root(tmp_path):
    with pytest.raises(UserError, match="needs --data-root DIR"):
        BENCHMARKS.get("folder").build(run_cfg(""))
    with pytest.raises(UserError, match="is not a folder"):
        BENCHMARKS.get("folder").build(run_cfg(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train/ split"):
        BENCHMARKS.get("folder").build(run_cfg(tmp_path / "empty"))
    with pytest.raises(UserError, match="needs --data-root"):  # the contract test skips 'folder' this way
        D.load_dataset(BENCHMARKS.get("folder").dataset, "")


def test_folder_smoke_run(tmp_path, monkeypatch):
    write_folder(tmp_path / "six", [f"class{i}" for i in range(6)], n_train=8, n_test=2, size=20)
    sets = n_tasks_sets(3, monkeypatch)
    run_dir = run_experiment("gd", "folder", "smoke", sets + [("batch_size", "8")], out=str(tmp_path / "runs"),
                             data_root=str(tmp_path / "six"), log=lambda *_: None)
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["task"]) for r in rows] == [1, 2, 3] and int(rows[1]["teacher_image_evals"]) > 0
    assert len(read_csv(run_dir / "per_task.csv")) == 6


def test_benchmark_profile_overrides_apply_after_the_profile_and_before_set() -> None:
    from cl_diffusion.profiles import resolve_config

    assert BENCHMARKS.get("cifar10-5").profiles["quick"] == {"clf_iters": 3000, "clf_batch_size": 128}
    cifar = resolve_config("gd", "cifar10-5", "quick")
    assert (cifar.eval.clf_iters, cifar.eval.clf_batch_size, cifar.eval.classifier) == (3000, 128, "cnn")
    fmnist = resolve_config("gd", "fmnist-5", "quick")
    assert (fmnist.eval.clf_iters, fmnist.eval.clf_batch_size) == (0, 0)  # the cnn preset's 500 x 64
    assert resolve_config("gd", "cifar10-5", "smoke").eval.clf_iters == 0  # only the quick profile
    assert resolve_config("gd", "cifar10-5", "quick", [("clf_iters", "7")]).eval.clf_iters == 7
