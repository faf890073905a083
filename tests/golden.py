"""Golden smoke results: the same seed must give the same metrics, whatever the code's shape.

``tests/golden/<strategy>/{metrics,per_task}.csv`` hold a smoke run of each strategy on the
``synthetic`` benchmark (seed 0), and ``tests/golden/PLATFORM`` the platform that wrote them. A run
of today's code must reproduce every column of those files except the wall-clock ``*_seconds``;
columns added since are allowed. On the platform that wrote them the values must agree to a
relative 1e-9: the count of BLAS threads (numpy/scipy, not torch's) changes the last digits of the
Frechet distance's matrix square root, and nothing else. On another one (a CPU with other vector
kernels, another torch) float arithmetic differs in the last bits and a 4-iteration run amplifies
that, so there only the training losses are compared, at a
relative tolerance of 1e-3 (a changed random draw or formula moves them by far more).

Regenerate after a change that is meant to change results (and say so in the commit):
``python -m tests.golden`` (from the repository root; it overwrites tests/golden/).
"""
from __future__ import annotations

import csv
import math
import os
import platform
import shutil
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"
BENCHMARK = "synthetic"
TRAINING_COLUMNS = ("train_loss", "loss_data", "loss_replay", "loss_penalty")


def platform_id() -> str:
    """What decides float results: torch version, its CPU kernel family, the machine type."""
    import torch

    return f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {platform.machine()}"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def same_platform() -> bool:
    """Whether this is the platform that wrote the golden files (see the module docstring)."""
    return (GOLDEN / "PLATFORM").read_text().strip() == platform_id()


def tolerance() -> float:
    """The relative tolerance of :func:`differences` here: 1e-9 on the golden platform, else 1e-3."""
    return 1e-9 if same_platform() else 1e-3


def differences(golden: Path, run_dir: Path) -> list[str]:
    """Where ``run_dir``'s CSVs depart from the golden ones (empty: the same results)."""
    same, tol = same_platform(), tolerance()
    out = []
    for name in ("metrics.csv", "per_task.csv"):
        want, got = _read(golden / name), _read(run_dir / name)
        if len(want) != len(got):
            out.append(f"{name}: {len(got)} rows, golden {len(want)}")
            continue
        for i, (w, g) in enumerate(zip(want, got)):
            for col, value in w.items():
                if col.endswith("_seconds") or (not same and col not in TRAINING_COLUMNS):
                    continue
                if col not in g:
                    out.append(f"{name} row {i + 1}: column {col} is gone")
                elif g[col] != value and not _close(g[col], value, tol):
                    out.append(f"{name} row {i + 1}, {col}: {g[col]} (golden {value})")
    return out


def _close(a: str, b: str, rel: float) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rel, abs_tol=1e-12)


def regenerate(strategies: list[str]) -> None:
    """Write tests/golden/ from smoke runs of the current code, at one torch thread and with an
    evaluation classifier trained afresh at one thread (as the contract test runs them: float
    reductions may split differently over more threads)."""
    import tempfile

    import torch

    from cl_diffusion.app import load_plugins, run_experiment

    load_plugins()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CL_DIFFUSION_CACHE"] = str(Path(tmp) / "cache")  # a classifier trained here, at one thread
        for name in strategies:
            run_dir = run_experiment(name, BENCHMARK, "smoke", out=tmp, log=lambda *_: None)
            (GOLDEN / name).mkdir(parents=True, exist_ok=True)
            for f in ("metrics.csv", "per_task.csv"):
                shutil.copyfile(run_dir / f, GOLDEN / name / f)
    (GOLDEN / "PLATFORM").write_text(platform_id() + "\n")


if __name__ == "__main__":
    from cl_diffusion.app import load_plugins
    from cl_diffusion.strategy import STRATEGIES

    load_plugins()
    regenerate(sys.argv[1:] or STRATEGIES.names())
