"""A normal, non-editable install keeps strategies/ and benchmarks/ as cl_diffusion subpackages."""
from __future__ import annotations

import os
import subprocess
import sys

from .conftest import REPO


def test_non_editable_install_has_strategies_and_benchmarks(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert (target / "cl_diffusion" / "strategies" / "gd.py").is_file()
    assert (target / "cl_diffusion" / "benchmarks" / "fmnist5.py").is_file()
    code = ("import cl_diffusion, cl_diffusion.app as a; a.load_plugins();"
            "from cl_diffusion.strategy import STRATEGIES; from cl_diffusion.stream import BENCHMARKS;"
            "print(cl_diffusion.__file__); print(','.join(STRATEGIES.names())); print(','.join(BENCHMARKS.names()))")
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, strategies, benchmarks = proc.stdout.strip().splitlines()[-3:]
    assert where.startswith(str(target))  # the installed copy, not the checkout
    assert {"finetune", "joint", "gr", "gd", "lwf", "gaussian", "pgd"} <= set(strategies.split(","))
    assert {"fmnist-5", "cifar10-5"} <= set(benchmarks.split(","))
