"""Every bad input is refused before any training: exit status 2, one line ``error: ...`` naming the
bad value and the valid choices or range, no traceback, and nothing made under ``--out``.

Each case runs a command's ``main(argv)`` in this process, as a user would type it. Placeholders:
``{out}`` the ``--out`` folder (absent at the start), ``{file}`` an existing file, ``{empty}`` an
empty folder, ``{run}`` a finished-looking run folder (config.json, metrics.csv, no weights).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cl_diffusion import bench, reevaluate, run, sweep
from cl_diffusion.profiles import PROFILES

from .conftest import REPO

MAINS = {"run": run.main, "sweep": sweep.main, "reevaluate": reevaluate.main, "bench": bench.main}

RUN = ["--strategy", "gd", "--benchmark", "fmnist-5", "--profile", "smoke", "--out", "{out}"]
SWEEP = ["--benchmark", "fmnist-5", "--profile", "smoke", "--out", "{out}"]
FMNIST_SMOKE_TASK = 2 * PROFILES.get("smoke").overrides["train_subset"]  # fmnist-5: 2 classes per task


def s(*items: str) -> list[str]:
    """``--set`` flags for ``KEY=VALUE`` items."""
    return [a for item in items for a in ("--set", item)]


CASES: list[tuple[str, list[str], str]] = [
    # --- the four reported failures, and sweep --grid without values ---------------------------
    ("run", RUN + s("lambda=nan"), r"bad value nan for lambda: must be a finite number >= 0"),
    ("run", RUN + s("lambda=inf"), r"bad value inf for lambda: must be a finite number >= 0"),
    ("run", RUN + s("image_size=100000"),
     r"needs over 8 EiB of \w+ memory .* is available; lower batch_size \(now 16\) or image_size \(now 100000\), "
     r"or add --force"),
    ("run", ["--strategy", "gd", "--benchmark", "fmnist-5", "--profile", "smoke", "--out", "{file}"],
     r"bad value '.*afile' for out: it is a file, not a folder"),
    ("sweep", SWEEP + ["--strategies", "gd", "--grid", "lambda"], r"bad --grid 'lambda': expected KEY=V1,V2,\.\.\."),
    # --- names: typos, case, wrong registry --------------------------------------------------------
    ("run", ["--strategy", "GD", *RUN[2:]], r"unknown strategy 'GD'; valid choices: .*gd.*\(did you mean 'gd'\?\)"),
    ("run", ["--strategy", "finetun", *RUN[2:]], r"unknown strategy 'finetun'; valid choices: .*\(did you mean "
                                                 r"'finetune'\?\)"),
    ("run", ["--strategy", "gd", "--benchmark", "fmnist", *RUN[4:]],
     r"unknown benchmark 'fmnist'; valid choices: .*fmnist-5"),
    ("run", ["--strategy", "gd", "--benchmark", "cifar10", *RUN[4:]],
     r"unknown benchmark 'cifar10'; valid choices: .*cifar10-5"),
    ("run", [*RUN[:4], "--profile", "Quick", "--out", "{out}"],
     r"unknown profile 'Quick'; valid choices: paper, quick, smoke \(did you mean 'quick'\?\)"),
    ("run", RUN + s("model=unet-big"), r"unknown model preset 'unet-big'; valid choices: .*paper-fmnist"),
    ("run", RUN + s("lamda=0.5"), r"unknown option 'lamda'; valid options: .*\(did you mean 'lambda'\?\)"),
    ("run", RUN + s("strategy=gr"), r"bad --set strategy=gr: strategy is chosen with --strategy"),
    # --- values: units, types, signs, zero ---------------------------------------------------------
    ("run", RUN + s("lr=2e-4x"), r"bad value '2e-4x' for lr: expected float > 0"),
    ("run", RUN + s("lr=0"), r"bad value 0.0 for lr: must be > 0"),
    ("run", RUN + s("lr=-1e-4"), r"bad value -0.0001 for lr: must be > 0"),
    ("run", RUN + s("batch_size=-8"), r"bad value -8 for batch_size: must be >= 1"),
    ("run", RUN + s("batch_size=0"), r"bad value 0 for batch_size: must be >= 1"),
    ("run", RUN + s("batch_size=32.5"), r"bad value '32.5' for batch_size: expected int >= 1"),
    ("run", RUN + s("epochs=0"), r"bad value 0 for epochs: must be >= 1"),
    ("run", RUN + s("eval_steps=0"), r"bad value 0 for eval_steps: must be >= 1"),
    ("run", RUN + s("num_timesteps=1"), r"bad value 1 for num_timesteps: must be >= 2"),
    ("run", RUN + s("image_size=0"), r"bad value 0 for image_size: must be >= 4"),
    ("run", RUN + s("eta=2"), r"bad value 2.0 for eta: must be >= 0.0 and <= 1.0"),
    ("run", RUN + s("beta_end=nan"), r"bad value nan for beta_end: must be a finite number > 0.0 and <= 1.0"),
    ("run", RUN + s("grad_clip=-1"), r"bad value -1.0 for grad_clip: must be >= 0"),
    ("run", RUN + s("kd_temperature=inf"), r"bad value inf for kd_temperature: must be a finite number > 0"),
    ("run", RUN + s("train_subset=-1"), r"bad value -1 for train_subset: must be >= 0"),
    ("run", RUN + s("nan_policy=ignore"), r"bad value 'ignore' for nan_policy; valid choices: stop, skip"),
    ("run", RUN + s("progress=maybe"), r"bad value 'maybe' for progress: expected bool \(true/false"),
    ("run", RUN + s("lambda"), r"bad --set 'lambda': expected KEY=VALUE"),
    ("run", RUN + ["--seed", "-1"], r"bad value -1 for seed: must be >= 0"),
    ("run", RUN + ["--seed", "one"], r"bad value 'one' for seed: expected int"),
    ("run", RUN + ["--device", "tpu"], r"bad value 'tpu' for device; valid choices: auto, cpu, cuda"),
    ("run", RUN + ["--class-order", "random"], r"bad value 'random' for class_order; valid choices: fixed, seeded"),
    ("run", RUN + ["--threads", "0"], r"bad value 0 for --threads: expected an integer >= 1"),
    # --- combinations ------------------------------------------------------------------------------
    ("run", RUN + s("eval_steps=5000"), r"bad value 5000 for eval_steps: must be >= 1 and <= num_timesteps \(1000\)"),
    ("run", RUN + s("num_timesteps=10", "eval_steps=20"),
     r"bad value 20 for eval_steps: must be >= 1 and <= num_timesteps \(10\)"),
    ("run", RUN + s("teacher_steps=1001"),
     r"bad value 1001 for teacher_steps: must be >= 1 and <= num_timesteps \(1000\)"),
    ("run", RUN + s("image_size=17"), r"image size 17 does not fit model preset 'tiny'.*multiples of 2"),
    ("run", RUN + s("model=paper-fmnist", "image_size=20"),
     r"image size 20 does not fit model preset 'paper-fmnist'.*multiples of 8 \(8, 16, 24, 32"),
    ("run", RUN + s("batch_size=100000"), rf"bad value 100000 for batch_size: larger than the smallest task's "
                                          rf"training set .*choose batch_size <= {FMNIST_SMOKE_TASK}"),
    ("run", RUN + s("train_subset=4", "batch_size=16"),
     r"bad value 16 for batch_size: larger than .*\(8 images with train_subset=4\); choose batch_size <= 8"),
    ("run", RUN + s("n_tasks=3"), r"bad value 3 for n_tasks: benchmark 'fmnist-5' has a fixed 5 tasks"),
    ("run", RUN + s("model=paper-cifar10", "batch_size=128", "image_size=4096"),
     r"needs about .* of \w+ memory \(.*activations .*\) but .* is available; lower batch_size \(now 128\) "
     r"or image_size \(now 4096\), or add --force"),
    ("run", RUN + s("eval_batch_size=100000000"),
     r"needs about .* memory \(sampling .*\) but .* is available; lower eval_batch_size \(now 100000000\)"),
    # --- paths ---------------------------------------------------------------------------------------
    ("run", [*RUN[:-1], "{file}/runs"], r"bad value '.*afile/runs' for out: .*afile is a file, so no folder"),
    ("run", RUN + ["--data-root", "/nonexistent/data"],
     r"bad value '/nonexistent/data' for data_root: no such folder"),
    ("run", RUN + ["--data-root", "{file}"], r"bad value '.*afile' for data_root: a file, not a folder"),
    ("run", RUN + s("inception_weights=/nonexistent/pt_inception.pth"), r"/nonexistent/pt_inception.pth"),
    ("run", ["--resume", "{empty}", "--out", "{out}"], r"is not a run directory \(expected config.json and ckpt/"),
    # --- sweep ---------------------------------------------------------------------------------------
    ("sweep", SWEEP + ["--strategies", "gd", "--grid", "lambda="], r"bad --grid lambda='': expected KEY=V1,V2"),
    ("sweep", SWEEP + ["--strategies", "gd", "--grid", "lambda=0.5,nan"], r"--grid lambda: bad value nan for lambda: "
                                                                          r"must be a finite number >= 0"),
    ("sweep", SWEEP + ["--strategies", "gd", "--grid", "lambda=0.5,0.5"], r"bad --grid lambda: 0.5 is given twice"),
    ("sweep", SWEEP + ["--strategies", "gd", "--grid", "lambda=1", "--grid", "lambda=2"],
     r"bad --grid lambda=2: lambda is already a --grid key"),
    ("sweep", SWEEP + ["--strategies", "gd,nope"], r"unknown strategy 'nope'; valid choices: .*gd"),
    ("sweep", SWEEP + ["--strategies", ","], r"bad --strategies ',': expected comma-separated strategy names"),
    ("sweep", SWEEP + ["--strategies", "gd,gd"], r"bad --strategies: gd is given twice"),
    ("sweep", SWEEP + ["--strategies", "gd", "--seeds", "0,x"], r"bad value 'x' in --seeds '0,x': seeds are "
                                                                r"integers >= 0"),
    ("sweep", SWEEP + ["--strategies", "gd", "--seeds", "-1"], r"bad value '-1' in --seeds '-1': seeds are "
                                                               r"integers >= 0"),
    ("sweep", SWEEP + ["--strategies", "gd", "--seeds", ""], r"bad --seeds '': expected comma-separated integer"),
    ("sweep", SWEEP + ["--strategies", "gd", "--seeds", "0,1,0"], r"bad --seeds: 0 is given twice"),
    ("sweep", SWEEP + ["--strategies", "gd", "--jobs", "0"], r"bad value 0 for --jobs: expected an integer >= 1"),
    ("sweep", SWEEP + ["--strategies", "gd", "--jobs", "two"], r"argument --jobs: invalid int value: 'two'"),
    ("sweep", SWEEP + ["--strategies", "gd", "--threads", "0"], r"bad value 0 for --threads: expected an integer >= 1"),
    ("sweep", SWEEP + ["--strategies", "gd", "--gpus-per-run", "-1"], r"bad value -1.0 for --gpus-per-run: "
                                                                      r"expected a number >= 0"),
    ("sweep", SWEEP + ["--strategies", "gd", "--executor", "slurm"],
     r"argument --executor: invalid choice: 'slurm' \(choose from .*local.*ray"),
    ("sweep", SWEEP + ["--strategies", "gd", "--set", "seed=3"], r"bad --set seed: the sweep sets seed from --seeds"),
    ("sweep", SWEEP + ["--strategies", "gd", "--grid", "seed=1,2"], r"bad --grid seed: the sweep sets seed from "
                                                                    r"--seeds"),
    ("sweep", SWEEP + ["--strategies", "gd", "--set", "teacher_steps=5000"],
     r"bad value 5000 for teacher_steps: must be >= 1 and <= num_timesteps \(1000\)"),
    ("sweep", ["--benchmark", "fmnist-5", "--profile", "smoke", "--out", "{file}", "--strategies", "gd"],
     r"bad value '.*afile' for --out: it is a file"),
    ("sweep", ["--benchmark", "nope", "--profile", "smoke", "--out", "{out}", "--strategies", "gd"],
     r"unknown benchmark 'nope'; valid choices"),
    ("sweep", ["--benchmark", "fmnist-5", "--profile", "fast", "--out", "{out}", "--strategies", "gd"],
     r"unknown profile 'fast'; valid choices: paper, quick, smoke"),
    ("sweep", SWEEP + ["--strategies", "gd", "--set", "image_size=100000"],
     r"needs over 8 EiB of \w+ memory .*lower batch_size"),
    # --- reevaluate ----------------------------------------------------------------------------------
    ("reevaluate", ["{empty}", "--out", "{out}/re"], r"is not a run directory \(expected config.json in it\)"),
    ("reevaluate", ["{file}", "--out", "{out}/re"], r"afile is not a run directory"),
    ("reevaluate", ["{run}", "--out", "{run}"], r"bad value '.*' for --out: it exists; choose a new folder"),
    ("reevaluate", ["{run}", "--out", "{file}/re"], r"for --out: .*afile is a file, so no folder can be made"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--set", "lr=1e-3"],
     r"cannot change 'lr' after training: only evaluation options can change; valid: .*eval_steps"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--set", "eval_steps=0"],
     r"bad value 0 for eval_steps: must be >= 1"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--set", "eval_steps=5000"],
     r"bad value 5000 for eval_steps: must be >= 1 and <= num_timesteps \(1000\)"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--set", "eval_samples=-1"],
     r"bad value -1 for eval_samples: must be >= 0"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--set", "kd_temperature=nan"],
     r"bad value nan for kd_temperature: must be a finite number > 0"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--device", "tpu"],
     r"bad value 'tpu' for device; valid choices: auto, cpu, cuda"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--threads", "0"], r"bad value 0 for --threads"),
    ("reevaluate", ["{run}", "--out", "{out}/re"], r"lacks the saved weights model_task1.safetensors"),
    ("reevaluate", ["{run}", "--out", "{out}/re", "--into", "{out}/x"], r"--into: not allowed with argument --out"),
    ("reevaluate", ["{empty}", "--into", "{out}/x"], r"is not a run directory \(expected config.json in it\)"),
    # --- bench ---------------------------------------------------------------------------------------
    ("bench", ["--device", "tpu", "--out", "{out}"], r"bad value 'tpu' for device; valid choices: auto, cpu, cuda"),
    ("bench", ["--compile", "maybe", "--out", "{out}"], r"bad value 'maybe' for compile; valid choices: auto, on, off"),
    ("bench", ["--preset", "paper-fmnst", "--out", "{out}"],
     r"unknown model preset 'paper-fmnst'; valid choices: .*\(did you mean 'paper-fmnist'\?\)"),
    ("bench", ["--batch", "0", "--out", "{out}"], r"bad value 0 for --batch: must be >= 1"),
    ("bench", ["--repeats", "-1", "--out", "{out}"], r"bad value -1 for --repeats: must be >= 1"),
    ("bench", ["--sample-batch", "0", "--out", "{out}"], r"bad value 0 for --sample-batch: must be >= 1"),
    ("bench", ["--threads", "0", "--out", "{out}"], r"bad value 0 for --threads: must be >= 1"),
    ("bench", ["--out", "{file}"], r"bad value '.*afile' for --out: it is a file, not a folder"),
    ("bench", ["--batch", "100000000", "--out", "{out}"],
     r"needs about .* memory .* is available; lower --batch \(now 100000000\)"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, Path]:
    """The files and folders the cases name (the finished-looking run has config.json and metrics.csv)."""
    from cl_diffusion.app import load_plugins
    from cl_diffusion.profiles import resolve_config

    root = tmp_path_factory.mktemp("places")
    (root / "afile").write_text("not a folder\n")
    (root / "empty").mkdir()
    run_dir = root / "run"
    run_dir.mkdir()
    load_plugins()
    cfg = resolve_config("finetune", "fmnist-5", "smoke")
    (run_dir / "config.json").write_text(json.dumps({**cfg.to_dict(), "meta": {"git_commit": "unknown"}}))
    (run_dir / "metrics.csv").write_text("task,train_loss\n1,0.5\n")
    return {"file": root / "afile", "empty": root / "empty", "run": run_dir}


@pytest.mark.parametrize("command,argv,pattern", CASES,
                         ids=[f"{c}:{' '.join(a[-2:])}"[:60] for c, a, _ in CASES])
def test_bad_input_is_refused_before_any_training(command, argv, pattern, places, tmp_path, capsys):
    out = tmp_path / "out"
    fill = {"out": str(out), **{k: str(v) for k, v in places.items()}}
    before = {p: sorted(q.name for q in p.iterdir()) for p in places.values() if p.is_dir()}
    code = MAINS[command]([a.format(**fill) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    assert re.search(pattern, err), err
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    assert before == {p: sorted(q.name for q in p.iterdir()) for p in places.values() if p.is_dir()}


def test_there_are_enough_cases():
    assert len(CASES) >= 35
    assert {c for c, _, _ in CASES} == set(MAINS)


def test_memory_refusal_can_be_forced(tmp_path, capsys, monkeypatch):
    """--force lets a run past the memory check (here it then stops at --dry-run, printing its cost)."""
    from cl_diffusion.preflight import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: 2.0 ** 20)  # 1 MiB free
    argv = ["--strategy", "finetune", "--benchmark", "fmnist-5", "--profile", "smoke", "--out", str(tmp_path),
            "--dry-run"]
    assert run.main(argv) == 2
    assert "add --force" in capsys.readouterr().err
    assert run.main([*argv, "--force"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^cost: [\d.]+ \w*FLOP in the diffusion network", printed, re.M), printed
    assert not any(tmp_path.iterdir())


def test_a_bad_name_fails_before_torch_is_imported():
    """The fast path: an unknown strategy is refused from the source files, without importing torch."""
    code = ("import sys; from cl_diffusion.run import main; rc = main(['--strategy', 'nope', '--benchmark', "
            "'fmnist-5']); print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: unknown strategy 'nope'; valid choices: ")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
