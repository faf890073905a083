"""Reliability: kill -9 at random moments then --resume gives the same metrics; corrupted
checkpoints are detected; resume refuses a changed config; the same seed gives the same metrics."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.run import main

from .conftest import REPO, read_csv, run_cli

load_plugins()
ARGS = ["--strategy", "gd", "--benchmark", "synthetic", "--profile", "smoke", "--set", "checkpoint_every=1"]


def _comparable(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without wall-clock columns (the only ones allowed to differ)."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in read_csv(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    proc = run_cli(*ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def _start_and_kill(out: Path, n_ckpt: int, delay: float) -> Path:
    """Start a run, SIGKILL it ``delay`` s after its ``n_ckpt``-th checkpoint appears."""
    proc = subprocess.Popen([sys.executable, "-m", "cl_diffusion.run", *ARGS, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    seen: set[str] = set()
    while time.time() < deadline and proc.poll() is None:
        for ck in out.glob("*/ckpt/state-*.json"):
            seen.add(ck.name)
        if len(seen) >= n_ckpt:
            time.sleep(delay)
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run_dir,) = list(out.iterdir())
    return run_dir


@pytest.mark.parametrize("trial", range(2))  # random checkpoint counts and kill delays
def test_kill9_then_resume_matches_uninterrupted(trial, reference, tmp_path):
    rng = random.Random(1000 + trial)
    run_dir = _start_and_kill(tmp_path, n_ckpt=rng.randint(1, 12), delay=rng.uniform(0.0, 0.4))
    proc = run_cli("--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip().splitlines()[-1]) == run_dir
    assert _comparable(run_dir) == _comparable(reference)
    assert read_csv(run_dir / "per_task.csv") == read_csv(reference / "per_task.csv")
    assert all(float(r["train_cpu_seconds"]) > 0 for r in read_csv(run_dir / "metrics.csv"))  # carried over


def test_resume_from_checkpoint_without_cpu_seconds(reference, tmp_path):
    """A checkpoint written before ``train_cpu_seconds`` existed resumes with the same metrics;
    the task it resumes into reports no CPU time (blank), not a partial one."""
    run_dir = _start_and_kill(tmp_path, n_ckpt=6, delay=0.0)
    for path in (run_dir / "ckpt").glob("state-*.json"):
        meta = json.loads(path.read_text())
        position = dict(meta["state"]["__dict__"])["position"]["__dict__"]
        position[:] = [kv for kv in position if kv[0] != "train_cpu_seconds"]
        path.write_text(json.dumps(meta))
    proc = run_cli("--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _comparable(run_dir) == _comparable(reference)
    cpu = [r["train_cpu_seconds"] for r in read_csv(run_dir / "metrics.csv")]
    assert sum(v == "" for v in cpu) == 1 and all(float(v) > 0 for v in cpu if v != ""), cpu


def test_same_seed_same_metrics(reference, tmp_path):
    run_dir = run_experiment("gd", "synthetic", "smoke", [("checkpoint_every", "1")], out=str(tmp_path),
                             log=lambda *_: None)
    assert _comparable(run_dir) == _comparable(reference)


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupted_checkpoint_falls_back_then_errors(reference, tmp_path, capsys):
    run_dir = _copy_run(reference, tmp_path / "run")
    ckpts = sorted((run_dir / "ckpt").glob("state-*.safetensors"))
    assert len(ckpts) == 2
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncate
    assert main(["--resume", str(run_dir)]) == 0  # falls back to the previous good checkpoint
    captured = capsys.readouterr()
    assert str(newest) in captured.out and "corrupted" in captured.out
    for p in (run_dir / "ckpt").glob("state-*.safetensors"):
        p.write_bytes(b"garbage")
    assert main(["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "ckpt" in err and len(err.splitlines()) == 1


def test_resume_refuses_changed_config(reference, tmp_path, capsys):
    run_dir = _copy_run(reference, tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert main(["--resume", str(run_dir), "--set", "lambda=0.1"]) == 2
    assert "differ from the run's config" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_resume_of_non_run_directory(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["--resume", str(tmp_path / "x")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_two_runs_started_together_get_different_directories(tmp_path):
    from cl_diffusion.io import new_run_dir

    dirs = {new_run_dir(tmp_path, "same") for _ in range(20)}
    assert len(dirs) == 20


def test_nan_loss_stops_with_position(tmp_path, capsys, monkeypatch):
    from cl_diffusion.strategy import Strategy

    original = Strategy.loss

    def nan_after_first_task(self, batch, ctx):
        loss, stats = original(self, batch, ctx)
        return (loss * float("nan") if ctx.k == 1 else loss), stats

    monkeypatch.setattr(Strategy, "loss", nan_after_first_task)
    code = main(["--strategy", "finetune", "--benchmark", "synthetic", "--profile", "smoke", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "non-finite loss" in err and "task 2, epoch 1, iteration 1" in err
    (run_dir,) = list(tmp_path.iterdir())
    assert len(read_csv(run_dir / "metrics.csv")) == 1  # task 1's results are kept
    monkeypatch.setattr(Strategy, "loss", nan_after_first_task)
    assert main(["--strategy", "finetune", "--benchmark", "synthetic", "--profile", "smoke", "--out",
                 str(tmp_path / "skip"), "--set", "nan_policy=skip"]) == 0
    (skip_dir,) = list((tmp_path / "skip").iterdir())
    rows = read_csv(skip_dir / "metrics.csv")
    assert len(rows) == 3 and int(rows[1]["nan_skipped"]) == 4
