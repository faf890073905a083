"""Contract test: every registered strategy runs on every registered benchmark at the smoke profile.

New strategy or benchmark files are picked up without editing this test.
"""
from __future__ import annotations

import math

import pytest

from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.strategy import STRATEGIES
from cl_diffusion.stream import BENCHMARKS

from .conftest import dataset_available, read_csv

load_plugins()
EVAL_COLUMNS = ("fid_clf", "kld", "ard", "acc", "forgetting", "eval_seconds", "eval_samples")
COST_COLUMNS = ("teacher_seconds", "teacher_forwards", "teacher_image_evals")


@pytest.mark.parametrize("benchmark", BENCHMARKS.names())
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_on_every_benchmark(strategy, benchmark, run_dirs):
    if not dataset_available(benchmark):
        pytest.skip(f"no data for {benchmark} on this machine")
    run_dir = run_experiment(strategy, benchmark, "smoke", out=str(run_dirs), log=lambda *_: None)
    rows = read_csv(run_dir / "metrics.csv")
    n_tasks = BENCHMARKS.get(benchmark).n_tasks
    assert [int(r["task"]) for r in rows] == list(range(1, n_tasks + 1))
    for r in rows:
        for col in ("train_loss", "train_seconds", "train_cpu_seconds", "sample_seconds", *EVAL_COLUMNS):
            assert math.isfinite(float(r[col])), (col, r[col])
        assert float(r["train_cpu_seconds"]) > 0
    replays = STRATEGIES.get(strategy).solver_mode == "replay"
    for r in rows[1:]:
        evals = int(r["teacher_image_evals"])
        assert (evals > 0) == replays, (strategy, r)
    assert int(rows[0]["teacher_image_evals"]) == 0
    for k in range(1, n_tasks + 1):
        assert (run_dir / f"samples_task{k}.png").is_file()
        assert (run_dir / f"model_task{k}.safetensors").is_file()
    per_task = read_csv(run_dir / "per_task.csv")
    assert len(per_task) == n_tasks * (n_tasks + 1) // 2
