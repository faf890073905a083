"""Shared fixtures: a shared cache for evaluation classifiers, and smoke-run helpers."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m cl_diffusion.run ARGS`` in a subprocess, as a user would."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "cl_diffusion.run", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def dataset_available(benchmark: str) -> bool:
    """Whether ``benchmark``'s data can be had here at default options (no data root), through the
    spec's own ``load``: a benchmark that generates its data (``synthetic``) always has it, one
    that reads a dataset looks where ``load_dataset`` looks. ``load`` only, not ``build`` (no
    resizing or splitting)."""
    from cl_diffusion.app import load_plugins
    from cl_diffusion.config import RunConfig
    from cl_diffusion.errors import UserError
    from cl_diffusion.stream import BENCHMARKS

    load_plugins()
    try:
        BENCHMARKS.get(benchmark).load(RunConfig(benchmark=benchmark))
        return True
    except UserError:
        return False


@pytest.fixture(scope="session")
def run_dirs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny nets: extra intra-op threads only fight other processes for the CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_local_data(tmp_path, monkeypatch):
    """No env data root, an empty system root, a private cache, no downloads, no ./data."""
    from cl_diffusion.data import search

    monkeypatch.delenv("CL_DIFFUSION_DATA", raising=False)
    monkeypatch.setenv("CL_DIFFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CL_DIFFUSION_NO_DOWNLOAD", "1")
    monkeypatch.setattr(search, "SYSTEM_ROOTS", (str(tmp_path / "system"),))
    monkeypatch.chdir(tmp_path)
