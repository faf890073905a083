"""Sweeps: the local executor writes one folder and manifest per run, skips complete runs and
resumes interrupted ones; the Ray executor (when Ray is installed) lands the same folders; a
missing Ray is a one-line error. The solver is off (``solver_epochs=0``) to keep the runs short.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cl_diffusion import sweep
from cl_diffusion.app import load_plugins

from .conftest import REPO, dataset_available, read_csv

load_plugins()
needs_fmnist = pytest.mark.skipif(not dataset_available("fmnist-5"), reason="Fashion-MNIST not available")
GRID = ["--benchmark", "fmnist-5", "--strategies", "finetune,gd", "--seeds", "0,1", "--profile", "smoke",
        "--set", "solver_epochs=0"]
FOLDERS = [f"fmnist-5/smoke/{s}/seed{k}" for s in ("finetune", "gd") for k in (0, 1)]


def _complete(out: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(out)) for p in out.glob("*/*/*/*/manifest.json"))


def _comparable(run_dir: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in read_csv(run_dir / "metrics.csv")]


@needs_fmnist
def test_local_sweep_skips_complete_and_resumes_interrupted(tmp_path, capsys):
    out = tmp_path / "results"
    assert sweep.main([*GRID, "--out", str(out)]) == 0
    assert _complete(out) == FOLDERS
    manifest = json.loads((out / FOLDERS[3] / "manifest.json").read_text())
    assert (manifest["status"], manifest["strategy"], manifest["seed"]) == ("complete", "gd", 1)
    assert manifest["cpu_model"] and manifest["device_name"]  # which machine: float results differ between CPUs
    assert len(read_csv(out / FOLDERS[3] / "metrics.csv")) == 5

    # interrupt one run after the fact: no manifest, and its newest checkpoint gone
    run = out / FOLDERS[3]
    before, weights = _comparable(run), (run / "model_task1.safetensors").stat().st_mtime_ns
    (run / "manifest.json").unlink()
    newest = max((run / "ckpt").glob("state-*.json"))
    newest.unlink()
    newest.with_suffix(".safetensors").unlink()
    capsys.readouterr()
    assert sweep.main([*GRID, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 3 complete, 1 to do" in printed and f"resuming {run}" in printed
    assert (run / "model_task1.safetensors").stat().st_mtime_ns == weights  # resumed, not restarted
    assert _comparable(run) == before and _complete(out) == FOLDERS
    resumed = json.loads((run / "manifest.json").read_text())
    assert resumed["resumed_by_commit"] and "resumed_by_commit" not in manifest

    assert sweep.main([*GRID, "--out", str(out)]) == 0
    assert "4 runs, 4 complete, 0 to do" in capsys.readouterr().out


@needs_fmnist
def test_missing_ray_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert sweep.main([*GRID, "--executor", "ray", "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "pip install" in err, err
    assert not (tmp_path / "results").exists()


@needs_fmnist
def test_ray_sweep_lands_the_same_folders(tmp_path):
    """A fresh local Ray instance (2 CPUs here), one CPU task per run: 2 runs at a time."""
    pytest.importorskip("ray")
    out = tmp_path / "results"
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run([sys.executable, "-m", "cl_diffusion.sweep", *GRID, "--executor", "ray", "--address",
                           "local", "--gpus-per-run", "0", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _complete(out) == FOLDERS
    for folder in FOLDERS:
        assert str(out / folder) in proc.stdout.splitlines()
        assert len(read_csv(out / folder / "metrics.csv")) == 5


def test_sweep_skips_a_run_another_process_holds(tmp_path):
    """Two sweeps over the same results never work on (or delete) the same run folder."""
    from cl_diffusion.sweep import RunInUse, RunSpec, _sweep_lock, execute

    spec = RunSpec("fmnist-5", "finetune", 0, "smoke", (), ())
    folder = spec.folder(tmp_path)
    folder.mkdir(parents=True)
    (folder / "partial.txt").write_text("another process's work")
    with _sweep_lock(folder):
        with pytest.raises(RunInUse):
            execute(spec, tmp_path, log=lambda *_: None)
    assert (folder / "partial.txt").is_file()


@needs_fmnist
def test_parallel_local_sweep_matches_sequential(tmp_path, capsys):
    """``--jobs 2``: two worker processes, one torch thread each, land the same folders, and a run's
    metrics equal those of the same run made in this process with one thread."""
    grid = [*GRID[:3], "finetune", *GRID[4:]]
    assert sweep.main([*grid, "--jobs", "2", "--threads", "1", "--out", str(tmp_path / "par")]) == 0
    printed = capsys.readouterr().out
    assert "2 at a time, 1 torch thread(s) each" in printed
    assert _complete(tmp_path / "par") == FOLDERS[:2]
    assert sweep.main([*grid, "--seeds", "1", "--threads", "1", "--out", str(tmp_path / "seq")]) == 0
    assert _comparable(tmp_path / "seq" / FOLDERS[1]) == _comparable(tmp_path / "par" / FOLDERS[1])


@pytest.mark.parametrize("flag,value", [("--jobs", "0"), ("--threads", "0")])
def test_bad_jobs_or_threads_is_a_one_line_error(flag, value, tmp_path, capsys):
    argv = [*GRID, flag, value, "--out", str(tmp_path / "results")]
    assert sweep.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: bad value 0 for {flag}: expected an integer >= 1", err
    assert not (tmp_path / "results").exists()


def test_a_failed_run_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    """Local executor: the failure is listed at the end, the other runs land, the exit status is 1."""
    specs = sweep.expand("fmnist-5", ["finetune"], [0, 1, 2], "smoke", [], [])

    def fake_execute(spec, out, log=print, force=False):
        if spec.seed == 1:
            raise FloatingPointError("loss is NaN")
        spec.folder(out).mkdir(parents=True)
        return spec.folder(out)
    monkeypatch.setattr(sweep, "execute", fake_execute)
    monkeypatch.setattr(sweep, "expand", lambda *a, **k: specs)
    monkeypatch.setattr(sweep, "_check_every_run", lambda *a, **k: None)
    assert sweep.main([*GRID, "--out", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert [s.folder(tmp_path).is_dir() for s in specs] == [True, False, True]
    assert f"[sweep] failed: {specs[1].folder(tmp_path)}: FloatingPointError: loss is NaN" in err
    assert "3/3" in out


def _state_and_parent(stat: Path) -> tuple[str, int] | None:
    """A process's state letter and parent pid from its /proc/<pid>/stat; None once it is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _children(pid: int) -> list[int]:
    """The live (non-zombie) processes whose parent is ``pid``, read from /proc."""
    return [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat")
            if (info := _state_and_parent(stat)) and info[1] == pid and info[0] != "Z"]


def _alive(pid: int) -> bool:
    info = _state_and_parent(Path("/proc") / str(pid) / "stat")
    return info is not None and info[0] != "Z"


@needs_fmnist
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_sigterm_to_a_jobs_sweep_stops_its_workers(tmp_path):
    """SIGTERM to the driver of a ``--jobs 2`` sweep alone: it exits with 143, its worker processes
    are gone, and the runs' folder locks are free for the next sweep."""
    import fcntl
    import signal
    import time

    out = tmp_path / "results"
    grid = [*GRID[:3], "finetune", *GRID[4:]]
    driver = subprocess.Popen([sys.executable, "-m", "cl_diffusion.sweep", *grid, "--jobs", "2",
                               "--threads", "1", "--set", "progress=false", "--out", str(out)],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        locks = [out / "fmnist-5/smoke/finetune" / f".seed{k}.lock" for k in (0, 1)]
        while not all(p.exists() for p in locks):  # both workers have started their runs
            assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read() if driver.poll() else "timeout"
            time.sleep(0.5)
        workers = _children(driver.pid)
        assert len(workers) >= 2, workers
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 143
        deadline = time.monotonic() + 30
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)]
        for path in locks:
            with open(path, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a worker still held it
        assert not list(out.glob("*/*/*/*/manifest.json"))  # stopped before any run finished
    finally:
        if driver.poll() is None:
            driver.kill()
