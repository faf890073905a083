"""End-to-end CLI runs at the smoke profile, bad-input handling, and the plugin routes."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cl_diffusion.run import main

from .conftest import REPO, read_csv, run_cli



def _run_dirs(out: Path) -> set[str]:
    return {p.name for p in out.iterdir()} if out.exists() else set()


def test_smoke_run_end_to_end(run_dirs):
    out = run_dirs / "e2e"
    proc = run_cli("--strategy", "finetune", "--benchmark", "synthetic", "--profile", "smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir.parent == out and run_dir.is_dir()
    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) == 3
    assert {"task", "train_loss", "train_seconds", "sample_seconds"} <= set(rows[0])
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["profile"] == "smoke" and cfg["seed"] == 0 and cfg["meta"]["device"] == "cpu"
    assert cfg["meta"]["git_commit"] and cfg["meta"]["package_version"]
    assert cfg["meta"]["cpu_model"]
    assert "differs from the paper's protocol" in proc.stdout
    assert list((run_dir / "ckpt").glob("state-*.safetensors"))


def test_set_reaches_strategy_and_config(run_dirs, capsys):
    out = run_dirs / "dry"
    code = main(["--strategy", "gd", "--benchmark", "synthetic", "--profile", "smoke", "--out", str(out),
                 "--dry-run", "--set", "teacher_steps=10", "--set", "lambda=0.5"])
    assert code == 0
    printed = capsys.readouterr().out
    cfg = json.loads(printed[printed.index("{"):])
    assert cfg["strategy_params"] == {"lambda": 0.5, "teacher_steps": 10}
    assert not out.exists()  # --dry-run writes nothing


BAD_INPUTS = [
    (["--strategy", "nope", "--benchmark", "fmnist-5"], r"unknown strategy 'nope'; valid choices: .*finetune"),
    (["--strategy", "gd", "--benchmark", "nope"], r"unknown benchmark 'nope'; valid choices: .*fmnist-5"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--profile", "huge"], r"unknown profile 'huge'.*smoke"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--set", "nope=1"], r"unknown option 'nope'; valid options"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--set", "lambda=-1"], r"bad value -1.0 for lambda: must be >= 0"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--set", "teacher_steps=0"], r"teacher_steps: must be >= 1"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--set", "lr=abc"], r"bad value 'abc' for lr: expected float"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--set", "model=huge"], r"unknown model preset 'huge'"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--device", "tpu"], r"bad value 'tpu' for device; valid"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--set", "lambda"], r"bad --set 'lambda': expected KEY=VALUE"),
    (["--strategy", "gd", "--benchmark", "fmnist-5", "--threads", "0"], r"bad value 0 for --threads: expected an"),
    (["--resume", "/nonexistent/run"], r"is not a run directory"),
]


@pytest.mark.parametrize("argv,pattern", BAD_INPUTS, ids=[a[-1] for a, _ in BAD_INPUTS])
def test_bad_input_one_line_exit_2(argv, pattern, run_dirs, capsys):
    out = run_dirs / "bad"
    before = _run_dirs(out)
    extra = [] if "--profile" in argv else ["--profile", "smoke"]
    code = main([*argv, *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(pattern, err), err
    assert _run_dirs(out) == before


@pytest.mark.parametrize("sets,pattern", [
    (["batch_size=100000"], r"bad value 100000 for batch_size: larger than the smallest task"),
    (["image_size=17"], r"image size 17|image_size"),
], ids=["batch", "image_size"])
def test_bad_input_needing_data(sets, pattern, run_dirs, capsys):
    out = run_dirs / "bad2"
    argv = ["--strategy", "finetune", "--benchmark", "synthetic", "--profile", "smoke", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(pattern, err), err
    assert _run_dirs(out) == set()


def test_bad_input_subprocess_has_no_traceback():
    proc = run_cli("--strategy", "nope", "--benchmark", "fmnist-5")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_list_shows_presets(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"paper-fmnist\s+42,855,873 params", out)
    for name in ("finetune", "joint", "gr", "gd", "lwf", "gaussian", "pgd", "fmnist-5", "cifar10-5", "smoke"):
        assert name in out


def _readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Add a strategy in one file"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_strategy_example_runs(run_dirs):
    """The README's 'Add a strategy in one file' example, dropped into strategies/, runs by name."""
    path = REPO / "strategies" / "mixed.py"
    assert not path.exists()
    path.write_text(_readme_example())
    try:
        proc = run_cli("--strategy", "mixed", "--benchmark", "synthetic", "--profile", "smoke",
                       "--out", str(run_dirs / "readme"), "--set", "noise_share=0.25")
    finally:
        path.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert json.loads((run_dir / "config.json").read_text())["strategy_params"]["noise_share"] == 0.25
    assert len(read_csv(run_dir / "metrics.csv")) == 3


PLUGIN = '''
from cl_diffusion.replay import DistillationStrategy


class TeacherOnNoisyData(DistillationStrategy):
    """An outside strategy: distil the teacher on the current batch's x_t at fresh timesteps."""

    def replay_pair(self, x0, x_t, t):
        t_r = self.random_t(x0.shape[0])
        x_r = self.schedule.sqrt_alpha_bar.float()[t_r, None, None, None] * x0 \\
            + self.schedule.sqrt_one_minus_alpha_bar.float()[t_r, None, None, None] * self.randn_like(x0)
        return x_r, t_r, self.teacher.eps(x_r, t_r)
'''


def test_entry_point_plugin_from_installed_package(tmp_path, run_dirs):
    """A separate package registering through the entry-point group runs by name."""
    src = tmp_path / "src"
    (src / "outside_strategy").mkdir(parents=True)
    (src / "outside_strategy" / "__init__.py").write_text(PLUGIN)
    (src / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "outside-strategy"
        version = "0.1"
        [project.entry-points."cl_diffusion.strategies"]
        outside = "outside_strategy:TeacherOnNoisyData"
    """))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    proc = run_cli("--strategy", "outside", "--benchmark", "synthetic", "--profile", "smoke",
                   "--out", str(run_dirs / "plugin"), env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_csv(Path(proc.stdout.strip().splitlines()[-1]) / "metrics.csv")
    assert len(rows) == 3 and int(rows[-1]["teacher_image_evals"]) > 0


def test_missing_dataset_is_a_one_line_error(tmp_path):
    """No CIFAR-10 anywhere: exit 2 with the paths tried and what to put where."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"CL_DIFFUSION_NO_DOWNLOAD": "1", "CL_DIFFUSION_CACHE": str(tmp_path / "cache"), "CL_DIFFUSION_DATA": ""}
    proc = run_cli("--strategy", "finetune", "--benchmark", "cifar10-5", "--profile", "smoke", "--data-root",
                   str(empty), "--out", str(tmp_path / "runs"), cwd=tmp_path, env=env)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(empty) in err and "train/<class>/" in err
    assert _run_dirs(tmp_path / "runs") == set()


def test_missing_inception_weights_file(run_dirs, capsys):
    out = run_dirs / "inception"
    code = main(["--strategy", "finetune", "--benchmark", "synthetic", "--profile", "smoke", "--out", str(out),
                 "--set", "inception_weights=/nonexistent/pt_inception.pth"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "/nonexistent/pt_inception.pth" in err, err
    assert _run_dirs(out) == set()
