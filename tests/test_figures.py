"""Every figure script turns results/ into its PNG, without training.

The results are copies of committed runs (metrics, manifest, config, last sample grid), plus a
``teacher_steps`` grid variant made from one of them, in a temporary results/ folder.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = ("curves", "samples", "costs", "quality_vs_compute", "teacher_steps", "lambda_sweep")
SOURCE = REPO / "results" / "fmnist-5" / "quick"
FILES = ("metrics.csv", "manifest.json", "config.json", "samples_task5.png")


def _copy_run(variant_src: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in FILES:
        shutil.copy(SOURCE / variant_src / "seed0" / name, dest / name)
    return dest


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    if not all((SOURCE / s / "seed0" / "manifest.json").is_file() for s in ("finetune", "gr", "gd")):
        pytest.skip("committed fmnist-5 quick runs not present")
    root = tmp_path_factory.mktemp("results")
    base = root / "fmnist-5" / "quick"
    for s in ("finetune", "gr", "gd"):
        _copy_run(s, base / s / "seed0")
    step10 = _copy_run("gd", base / "gd__teacher_steps=10" / "seed0")
    _edit_json(step10 / "manifest.json", variant="gd__teacher_steps=10", grid={"teacher_steps": "10"})
    _edit_json(step10 / "config.json", strategy_params={"teacher_steps": 10})
    lam = _copy_run("gd", base / "gd__lambda=2" / "seed0")  # must stay out of the teacher-steps plot, in lambda's
    _edit_json(lam / "manifest.json", variant="gd__lambda=2", grid={"lambda": "2"})
    _edit_json(lam / "config.json", strategy_params={"lambda": 2.0})
    return root


@pytest.mark.parametrize("script", SCRIPTS)
def test_figure_script_writes_its_png(script: str, results: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, str(REPO / "paper_figures" / f"{script}.py"), "--benchmark", "fmnist-5",
                           "--profile", "quick", "--results", str(results), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    png = out / f"fmnist-5_quick_{script}.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("script, hint", [("teacher_steps", "--grid teacher_steps=10,100"),
                                          ("lambda_sweep", "--grid lambda=")])
def test_knob_figure_needs_two_values(script: str, hint: str, tmp_path: Path) -> None:
    """With only the plain gd run (one teacher_steps, one lambda) the script stops and names the sweep to run."""
    if not (SOURCE / "gd" / "seed0" / "manifest.json").is_file():
        pytest.skip("committed fmnist-5 quick runs not present")
    _copy_run("gd", tmp_path / "fmnist-5" / "quick" / "gd" / "seed0")
    proc = subprocess.run([sys.executable, str(REPO / "paper_figures" / f"{script}.py"), "--results",
                           str(tmp_path), "--out", str(tmp_path / "figs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and hint in proc.stderr, proc.stderr
