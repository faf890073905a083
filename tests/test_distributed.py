"""Data-parallel training under torchrun: 2 CPU processes (gloo) at the smoke profile.

One module fixture starts three runs side by side: a single-process reference, an uninterrupted
2-process run, and a 2-process run that is SIGKILLed (all its processes) in task 2 and resumed.
The solver is switched off (``solver_epochs=0``): it runs on rank 0 only, exactly as in a
single-process run, and would double the file's runtime.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, read_csv

ARGS = ["--strategy", "gd", "--benchmark", "synthetic", "--profile", "smoke", "--set", "checkpoint_every=1",
        "--set", "solver_epochs=0"]
KILL_AT = 7  # checkpoint sequence number: 5 per task (3 in-task, after training, after evaluation) -> task 2
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _torchrun(*args: str) -> list[str]:
    """torchrun from this interpreter's venv; --standalone picks a free port, so runs can overlap."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "cl_diffusion.run", *args]


def _start(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _one_run_dir(out: Path) -> Path:
    (run_dir,) = list(out.iterdir())  # exactly one directory, whatever the number of ranks
    return run_dir


def _comparable(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without wall-clock columns (the only ones allowed to differ)."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in read_csv(run_dir / "metrics.csv")]


def _kill_group_at_checkpoint(proc: subprocess.Popen, out: Path, seq: int) -> None:
    """SIGKILL torchrun and both ranks once checkpoint ``seq`` exists."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if list(out.glob(f"*/ckpt/state-{seq:06d}.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("dist")
    single = _start([sys.executable, "-m", "cl_diffusion.run", *ARGS, "--out", str(root / "single")])
    two = _start(_torchrun(*ARGS, "--out", str(root / "two")))
    killed = _start(_torchrun(*ARGS, "--out", str(root / "killed")), start_new_session=True)
    _kill_group_at_checkpoint(killed, root / "killed", KILL_AT)
    killed_dir = _one_run_dir(root / "killed")
    resumed = _start(_torchrun("--resume", str(killed_dir)))
    logs = {"single": _finish(single), "two": _finish(two), "resumed": _finish(resumed)}
    dirs = {"single": _one_run_dir(root / "single"), "two": _one_run_dir(root / "two"), "resumed": killed_dir}
    return {name: (dirs[name], logs[name]) for name in logs}


def test_two_processes_write_one_run(runs):
    run_dir, stdout = runs["two"]
    assert Path(stdout.strip().splitlines()[-1]) == run_dir
    assert stdout.count("task 3 done") == 1 and stdout.count("run directory:") == 1  # rank 0 alone logs
    rows = read_csv(run_dir / "metrics.csv")
    assert [r["task"] for r in rows] == ["1", "2", "3"]
    for r in rows:
        assert all(math.isfinite(float(r[k])) for k in ("train_loss", "loss_data", "fid_clf", "kld", "ard"))
    assert len(read_csv(run_dir / "per_task.csv")) == 6
    assert sorted(p.name for p in run_dir.glob("samples_task*.png")) == [f"samples_task{k}.png" for k in range(1, 4)]
    assert not list(run_dir.rglob("*.tmp"))
    assert json.loads((run_dir / "config.json").read_text())["meta"]["world_size"] == 2


# Relative difference |single - two| / |single| allowed, on every task's row. Each run is
# deterministic (measured: identical metrics over 3 repeated runs of each at seed 0), so the gap is
# fixed by which random draws each set-up makes: it is sampling noise of a 4-iteration, 32-sample
# run, frozen at one seed. Measured over seeds 0-7 (this comparison with --seed k, 24 task rows):
# train_loss at most 4.9e-2 (median 1.3e-2), fid_clf at most 8.7e-2 (median 1.9e-2). The
# tolerances are twice those maxima. For scale: the 2-process run with twice the learning rate
# misses train_loss by 23% and 32% on tasks 2 and 3, and with 3 iterations per task instead of 4
# by 14% on task 3; both passed the former 50% tolerance.
TOLERANCE = {"train_loss": 0.10, "fid_clf": 0.18}


def test_two_processes_close_to_one(runs):
    """Same data order and global batch; the ranks draw their own t, eps and replay noise, so the
    numbers differ by sampling noise only (:data:`TOLERANCE`)."""
    ones, twos = read_csv(runs["single"][0] / "metrics.csv"), read_csv(runs["two"][0] / "metrics.csv")
    assert len(ones) == len(twos) == 3
    for one, two in zip(ones, twos):
        for key, tol in TOLERANCE.items():
            a, b = float(one[key]), float(two[key])
            assert abs(a - b) <= tol * abs(a), (one["task"], key, a, b, abs(a - b) / abs(a))
        # the work is the same: the teacher generates B replay images per iteration in total
        assert one["teacher_image_evals"] == two["teacher_image_evals"]
        assert one["train_iters"] == two["train_iters"]


def test_kill9_then_resume_two_processes_matches_uninterrupted(runs):
    run_dir, stdout = runs["resumed"]
    assert Path(stdout.strip().splitlines()[-1]) == run_dir
    assert "resumed from" in stdout and "task 1 done" not in stdout
    assert _comparable(run_dir) == _comparable(runs["two"][0])
    assert read_csv(run_dir / "per_task.csv") == read_csv(runs["two"][0] / "per_task.csv")
