"""Runs that survive a cluster: SIGTERM (or the ``stop_signal``) mid-training or mid-evaluation
stops with a checkpoint, one line and status 128 + signum, and ``--resume`` ends with the metrics
of an uninterrupted run; a full disk or a read-only / vanished folder is one line, exit 1, with
the last good checkpoint intact; a signalled ``--jobs`` sweep leaves every run resumable."""
from __future__ import annotations

import errno
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl_diffusion import io as cio
from cl_diffusion.app import load_plugins
from cl_diffusion.run import main

from .conftest import REPO, read_csv, run_cli

load_plugins()
ARGS = ["--strategy", "gd", "--benchmark", "synthetic", "--profile", "smoke", "--set", "checkpoint_every=1"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _assert_same_results(run_dir: Path, reference: Path) -> None:
    """metrics.csv and per_task.csv agree in every column but the wall-clock ``*_seconds``: the same
    text, or numbers within a relative 1e-9 (numpy/scipy's BLAS threads, which differ between this
    process and a subprocess, move the last digits of the Frechet distance: tests/golden.py)."""
    for name in ("metrics.csv", "per_task.csv"):
        got, want = read_csv(run_dir / name), read_csv(reference / name)
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            assert set(g) == set(w), name
            for key, value in w.items():
                if not key.endswith("_seconds") and g[key] != value:
                    assert math.isclose(float(g[key]), float(value), rel_tol=1e-9), (name, key, g[key], value)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    proc = run_cli(*ARGS, "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def _phase(ckpt_json: Path) -> str | None:
    """The phase recorded in one checkpoint's JSON; None while it cannot be read."""
    try:
        meta = json.loads(ckpt_json.read_text())
    except (OSError, ValueError):
        return None
    position = dict(dict(meta["state"]["__dict__"])["position"]["__dict__"])
    return position["phase"]


def _start_and_signal(out: Path, sig: int, n_ckpt: int = 0, in_eval: bool = False,
                      twice: bool = False) -> tuple[int, str, Path]:
    """Start a run; send ``sig`` once its ``n_ckpt``-th checkpoint appears, or (``in_eval``) once a
    phase-"eval" checkpoint appears (the evaluation of that task has begun); ``twice``: again 20 ms later."""
    proc = subprocess.Popen([sys.executable, "-m", "cl_diffusion.run", *ARGS, "--out", str(out)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.time() + 300, set()
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(out.glob("*/ckpt/state-*.json"))
        seen.update(p.name for p in ckpts)
        if (in_eval and any(_phase(p) == "eval" for p in ckpts)) or (not in_eval and len(seen) >= n_ckpt):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(sig)
    if twice:
        time.sleep(0.02)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    (run_dir,) = list(out.iterdir())
    return proc.returncode, err, run_dir


def _check_stopped(code: int, stderr: str, run_dir: Path, sig: int) -> re.Match:
    assert code == 128 + sig, stderr[-2000:]
    lines = stderr.strip().splitlines()
    name = signal.Signals(sig).name
    match = re.fullmatch(rf"stopped by {name} at task (\d+), iteration (\d+); resume with --resume (.+)",
                         lines[-1] if lines else "")
    assert match and len(lines) == 1 and Path(match[3]) == run_dir, stderr
    assert not list(run_dir.rglob("*.tmp"))
    return match


# SIGTERM once is the first half of SIGTERM twice, so it is not a case of its own (suite time)
@pytest.mark.parametrize("trial,sig,twice", [(1, signal.SIGTERM, True), (2, signal.SIGUSR1, False)])
def test_signal_in_training_then_resume_matches_uninterrupted(trial, sig, twice, reference, tmp_path):
    """Stopped after the current iteration with a fresh checkpoint at the iteration it names; a
    second signal while it stops changes nothing."""
    n_ckpt = random.Random(2000 + trial).randint(1, 12)
    code, err, run_dir = _start_and_signal(tmp_path, sig, n_ckpt=n_ckpt, twice=twice)
    match = _check_stopped(code, err, run_dir, sig)
    newest = max((run_dir / "ckpt").glob("state-*.json"))
    position = dict(dict(json.loads(newest.read_text())["state"]["__dict__"])["position"]["__dict__"])
    assert (position["task"] + 1, position["iters"]) == (int(match[1]), int(match[2]))
    resumed = run_cli("--resume", str(run_dir), env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_results(run_dir, reference)


def test_signal_during_evaluation_then_resume_matches_uninterrupted(reference, tmp_path):
    """A single process stops at once; its phase-"eval" checkpoint is where it resumes."""
    code, err, run_dir = _start_and_signal(tmp_path, signal.SIGTERM, in_eval=True)
    match = _check_stopped(code, err, run_dir, signal.SIGTERM)
    assert match[2] == "4", err  # smoke: 4 iterations per task, so the stop came in evaluation
    resumed = run_cli("--resume", str(run_dir), env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "phase eval" in resumed.stdout
    _assert_same_results(run_dir, reference)


def _failing_fsync(monkeypatch, code: int, at: int) -> None:
    """os.fsync raises ``code`` on the ``at``-th checkpoint tensor file (1-based)."""
    real, count = os.fsync, [0]

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "/ckpt/.state-" in name and ".safetensors." in name:
            count[0] += 1
            if count[0] == at:
                raise OSError(code, os.strerror(code))
        real(fd)
    monkeypatch.setattr(cio.os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_disk_full_at_a_checkpoint_is_one_line_and_resumes(reference, tmp_path, monkeypatch, capsys,
                                                           one_thread):
    _failing_fsync(monkeypatch, errno.ENOSPC, at=7)
    assert main([*ARGS, "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    (run_dir,) = list(tmp_path.iterdir())
    assert len(err.splitlines()) == 1 and err.startswith("error: no space left on the device writing "), err
    assert str(run_dir / "ckpt" / "state-000006.safetensors") in err and "bytes" in err, err
    assert not list(run_dir.rglob("*.tmp"))
    assert sorted(p.name for p in (run_dir / "ckpt").glob("*.json")) == ["state-000004.json", "state-000005.json"]
    monkeypatch.undo()
    assert main(["--resume", str(run_dir)]) == 0
    _assert_same_results(run_dir, reference)


@pytest.mark.parametrize("code,says", [(errno.EROFS, "read-only"), (errno.EACCES, "not writable"),
                                       (errno.ENOENT, "no longer exists")])
def test_unwritable_folder_is_one_output_error(code, says, tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    target.write_text("old\n")

    def mkstemp(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(cio.tempfile, "mkstemp", mkstemp)
    with pytest.raises(cio.OutputError) as info:
        cio.atomic_write_text(target, "new\n")
    assert says in str(info.value) and str(target) in str(info.value) and "\n" not in str(info.value)
    assert target.read_text() == "old\n"


def test_vanished_folder_is_an_output_error(tmp_path):
    with pytest.raises(cio.OutputError, match="no longer exists"):
        cio.atomic_write_text(tmp_path / "gone" / "x.json", "{}")
    with pytest.raises(cio.OutputError, match="no longer exists"):
        cio.require_folder(tmp_path / "gone", "run directory")


def test_sigterm_to_a_jobs_sweep_leaves_every_run_resumable(reference, tmp_path):
    """SIGTERM to the driver of a ``--jobs 2`` sweep once both runs have checkpoints: exit 143, each
    run stopped with a checkpoint and no manifest; the restarted sweep resumes them to the metrics
    of an uninterrupted run."""
    out = tmp_path / "results"
    grid = ["--benchmark", "synthetic", "--strategies", "gd", "--seeds", "0,1", "--profile", "smoke",
            "--set", "checkpoint_every=1", "--out", str(out)]
    folders = [out / "synthetic/smoke/gd" / f"seed{k}" for k in (0, 1)]
    driver = subprocess.Popen([sys.executable, "-m", "cl_diffusion.sweep", *grid, "--jobs", "2", "--threads", "1"],
                              cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not all(list(f.glob("ckpt/state-*.json")) for f in folders):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read() if driver.poll() else ""
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-2000:]
    assert not list(out.rglob("manifest.json")) and not list(out.rglob("*.tmp"))
    assert err.count("stopped by SIGTERM") == 2, err[-2000:]
    proc = subprocess.run([sys.executable, "-m", "cl_diffusion.sweep", *grid], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[sweep] resuming") == 2
    _assert_same_results(folders[0], reference)


def _torchrun(*args: str) -> list[str]:
    """torchrun, 2 CPU processes on gloo; --standalone picks a free port, so runs can overlap."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "cl_diffusion.run", *args]


def test_sigterm_to_torchrun_stops_every_rank_at_one_iteration(tmp_path):
    """torchrun forwards SIGTERM to its workers; they agree on the iteration, rank 0 writes the
    checkpoint and prints the line once; the resumed run matches an uninterrupted 2-process run."""
    args = [*ARGS, "--set", "solver_epochs=0"]
    whole = subprocess.Popen(_torchrun(*args, "--out", str(tmp_path / "whole")), cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "stopped"
    proc = subprocess.Popen(_torchrun(*args, "--out", str(out)), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not list(out.glob("*/ckpt/state-000006.json")):
            time.sleep(0.02)  # 5 checkpoints per task: the 7th is in task 2
        assert proc.poll() is None, "the run ended before it could be signalled"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and err.count("stopped by SIGTERM at task 2, iteration") == 1, err[-3000:]
    (run_dir,) = list(out.iterdir())
    assert not list(run_dir.rglob("*.tmp"))
    resumed = subprocess.run(_torchrun("--resume", str(run_dir)), cwd=REPO, env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "written by" not in resumed.stdout  # the checkpoint holds both ranks' states
    _, whole_err = whole.communicate(timeout=600)
    assert whole.returncode == 0, whole_err[-3000:]
    (whole_dir,) = list((tmp_path / "whole").iterdir())
    _assert_same_results(run_dir, whole_dir)


def test_truncated_or_corrupted_dataset_files_name_the_file(tmp_path):
    """idx (gzipped), CIFAR batch and image files cut short: a UserError naming the file and what to do."""
    import gzip
    import pickle

    import numpy as np

    from cl_diffusion.data import DatasetInfo, readers
    from cl_diffusion.errors import UserError

    idx = tmp_path / "train-images-idx3-ubyte.gz"
    idx.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))[:-12])
    batch = tmp_path / "data_batch_1"
    batch.write_bytes(pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}, protocol=2)[:500])
    image = tmp_path / "0.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    info = DatasetInfo("t", 1, 4, (), (), "", idx=False)
    for call, path in ((lambda: readers.read_idx(idx), idx), (lambda: readers._read_cifar_batch(batch), batch),
                       (lambda: readers._decode(info, [str(image)], "decoding"), image)):
        with pytest.raises(UserError) as err:
            call()
        message = str(err.value)
        assert str(path) in message and ("fetch the dataset again" in message or "replace it" in message), message


def test_checkpoint_minutes_adds_checkpoints_not_changes(reference, tmp_path, capsys, one_thread):
    """Time-based checkpoints (here every 0.06 s) only add checkpoints: the metrics are the same."""
    argv = [*ARGS[:-2], "--set", "checkpoint_minutes=0.001", "--out", str(tmp_path)]
    assert main(argv) == 0
    (run_dir,) = list(tmp_path.iterdir())
    newest = max((run_dir / "ckpt").glob("state-*.json"))
    assert int(newest.stem.split("-")[1]) > 5  # task ends alone: 2 per task, 3 tasks -> state-000005
    _assert_same_results(run_dir, reference)
