"""Contract tests over the registries; new strategy or benchmark files are picked up unedited.

- Every registered strategy runs end to end at the smoke profile on the ``synthetic`` benchmark,
  which the suite generates in memory, so this runs on any machine; its results must equal the
  golden ones in ``tests/golden/`` (:mod:`tests.golden`): the same seed gives the same metrics.
- Every registered benchmark runs one strategy at the smoke profile where its data is installed
  (the ``folder`` benchmark on a folder of generated images).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from PIL import Image

from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.replay import DistillationStrategy
from cl_diffusion.strategy import STRATEGIES
from cl_diffusion.stream import BENCHMARKS

from .conftest import dataset_available, read_csv
from .golden import BENCHMARK, GOLDEN, differences, tolerance

load_plugins()
EVAL_COLUMNS = ("fid_clf", "kld", "ard", "acc", "forgetting", "eval_seconds", "eval_samples")
COST_COLUMNS = ("teacher_seconds", "teacher_forwards", "teacher_image_evals", "extra_forwards_per_iter",
                "extra_backwards_per_iter", "params_stored", "buffer_images")


def check_run(run_dir: Path, n_tasks: int) -> list[dict[str, str]]:
    """The files every run writes, with finite metrics; returns metrics.csv's rows."""
    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["task"]) for r in rows] == list(range(1, n_tasks + 1))
    for r in rows:
        for col in ("train_loss", "train_seconds", "train_cpu_seconds", "sample_seconds", *EVAL_COLUMNS,
                    *COST_COLUMNS):
            assert math.isfinite(float(r[col])), (col, r[col])
        assert float(r["train_cpu_seconds"]) > 0 and int(r["params_stored"]) > 0
    for k in range(1, n_tasks + 1):
        assert (run_dir / f"samples_task{k}.png").is_file()
        assert (run_dir / f"model_task{k}.safetensors").is_file()
    assert len(read_csv(run_dir / "per_task.csv")) == n_tasks * (n_tasks + 1) // 2
    return rows


@pytest.fixture(scope="module")
def golden_cache(tmp_path_factory) -> Path:
    """A cache of this module's own: the golden results were written with an evaluation classifier
    trained at one thread, and one that another test or run trained at more threads and left in the
    user's cache differs in the last bits, which moves FID_clf by about 0.6% here."""
    return tmp_path_factory.mktemp("golden-cache")


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy(strategy, run_dirs, one_thread, golden_cache, monkeypatch):
    monkeypatch.setenv("CL_DIFFUSION_CACHE", str(golden_cache))
    run_dir = run_experiment(strategy, BENCHMARK, "smoke", out=str(run_dirs), log=lambda *_: None)
    rows = check_run(run_dir, BENCHMARKS.get(BENCHMARK).n_tasks)
    distils = issubclass(STRATEGIES.get(strategy), DistillationStrategy)
    assert int(rows[0]["teacher_image_evals"]) == 0
    for r in rows[1:]:
        assert (int(r["teacher_image_evals"]) > 0) == distils, (strategy, r)
    if (GOLDEN / strategy).is_dir():
        assert not differences(GOLDEN / strategy, run_dir), differences(GOLDEN / strategy, run_dir)


def test_every_bundled_strategy_has_golden_results():
    bundled = [n for n, cls in STRATEGIES.items() if cls.__module__.startswith("cl_diffusion.strategies.")]
    assert sorted(bundled) == sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())


def _image_folder(root: Path, n_classes: int = 4, per_class: int = 20) -> Path:
    """train/ and test/ folders of ``n_classes`` classes of generated greyscale PNGs."""
    from cl_diffusion.synthetic import synthetic_splits

    splits = synthetic_splits()
    for split, data in (("train", splits.train), ("test", splits.test)):
        for c in range(n_classes):
            folder = root / split / splits.class_names[c]
            folder.mkdir(parents=True)
            for i, img in enumerate(data.images[data.labels == c][:per_class]):
                Image.fromarray(img[0].numpy(), mode="L").save(folder / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("benchmark", BENCHMARKS.names())
def test_every_benchmark(benchmark, run_dirs, tmp_path, one_thread):
    sets, spec = [], BENCHMARKS.get(benchmark)
    if benchmark == "folder":
        sets = [("data_root", str(_image_folder(tmp_path / "images"))), ("n_tasks", "2"), ("batch_size", "8")]
    elif not dataset_available(benchmark):
        pytest.skip(f"no data for {benchmark} on this machine")
    run_dir = run_experiment("gd", benchmark, "smoke", sets, out=str(run_dirs), log=lambda *_: None)
    check_run(run_dir, 2 if benchmark == "folder" else spec.n_tasks)


def test_golden_comparison_catches_a_changed_value(tmp_path):
    """The comparison behind test_every_strategy fails on a change 10x its tolerance: 1e-8 relative
    on the golden platform, far below any real change; 1e-2 elsewhere, where only the losses are
    compared."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(GOLDEN / "gd", run_dir)
    assert differences(GOLDEN / "gd", run_dir) == []
    rows = read_csv(run_dir / "metrics.csv")
    rows[1]["train_loss"] = repr(float(rows[1]["train_loss"]) * (1 + 10 * tolerance()))
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert [d for d in differences(GOLDEN / "gd", run_dir) if "train_loss" in d]
