"""``python -m cl_diffusion.reevaluate``: the evaluator run again on a run's saved per-task weights.
With no overrides it reproduces the run's own metrics; an evaluation option changes them; training
options, an existing --out and missing weights are one-line errors."""
from __future__ import annotations

import pytest

from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.reevaluate import main
from tests.conftest import dataset_available, read_csv

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not dataset_available("fmnist-5"), reason="Fashion-MNIST not installed")]
METRICS = ("fid_clf", "kld", "ard", "acc", "forgetting")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke gd run with the solver on (ACC and forgetting are computed)."""
    load_plugins()
    return run_experiment("gd", "fmnist-5", "smoke",
                          out=str(tmp_path_factory.mktemp("re")), log=lambda *_: None)


def _metrics(folder, columns=METRICS) -> list[float]:
    """The columns of every task's row of ``metrics.csv``, flattened: [task 1 columns, task 2 ...]."""
    return [float(r[m]) for r in read_csv(folder / "metrics.csv") for m in columns]


def test_no_overrides_reproduces_the_run_and_an_eval_option_changes_it(smoke_run, tmp_path, capsys):
    same, longer = tmp_path / "same", tmp_path / "longer"
    assert main([str(smoke_run), "--out", str(same)]) == 0
    assert _metrics(same) == pytest.approx(_metrics(smoke_run), rel=1e-6, abs=1e-9)
    assert len(read_csv(same / "per_task.csv")) == len(read_csv(smoke_run / "per_task.csv")) == 15
    assert main([str(smoke_run), "--out", str(longer), "--set", "solver_iters_per_task=6"]) == 0
    assert _metrics(longer, ["fid_clf"]) == pytest.approx(_metrics(smoke_run, ["fid_clf"]), rel=1e-6)
    assert _metrics(longer, ["acc"]) != _metrics(smoke_run, ["acc"])
    import json

    meta = json.loads((longer / "config.json").read_text())
    assert meta["eval"]["solver_iters_per_task"] == 6
    assert meta["meta"]["overrides"] == {"solver_iters_per_task": "6"}
    assert meta["meta"]["reevaluated_from"] == str(smoke_run) and meta["meta"]["source_git_commit"]


def test_bad_input_is_one_line_and_writes_nothing(smoke_run, tmp_path, capsys):
    exists = tmp_path / "exists"
    exists.mkdir()
    assert main([str(smoke_run), "--out", str(exists)]) == 2
    assert main([str(smoke_run), "--out", str(tmp_path / "a"), "--set", "lr=1"]) == 2
    assert main([str(smoke_run), "--out", str(tmp_path / "b"), "--set", "eval_samples=-1"]) == 2
    assert main([str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines), err
    assert "exists" in lines[0] and "cannot change 'lr' after training" in lines[1]
    assert "eval_samples" in lines[2] and "not a run directory" in lines[3]
    assert not any((tmp_path / d).exists() for d in "abc") and not any(exists.iterdir())


def test_into_writes_a_run_folder_that_tables_read_beside_the_runs(smoke_run, tmp_path):
    """``--into ROOT`` lays the re-evaluation out as a run of the variant ``gd__<key>=<value>``, and
    ``tables --results A --results B`` shows both folders' runs in one table."""
    import json
    import shutil

    from cl_diffusion.tables import main as tables_main

    runs = tmp_path / "runs" / "fmnist-5" / "smoke" / "gd" / "seed0"
    shutil.copytree(smoke_run, runs)
    (runs / "manifest.json").write_text(json.dumps({"status": "complete", "benchmark": "fmnist-5", "profile": "smoke",
                                                    "variant": "gd", "strategy": "gd", "seed": 0}))
    assert main([str(runs), "--into", str(tmp_path / "re"), "--set", "solver_iters_per_task=6"]) == 0
    folder = tmp_path / "re" / "fmnist-5" / "smoke" / "gd__solver_iters_per_task=6" / "seed0"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["variant"] == "gd__solver_iters_per_task=6"
    assert manifest["reevaluated_from"] == str(runs) and "--set solver_iters_per_task=6" in manifest["command"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert tables_main(["--results", str(tmp_path / "runs"), "--results", str(tmp_path / "re"),
                            "--format", "csv", "--columns", "acc"]) == 0
    rows = [line.split(",") for line in buf.getvalue().strip().splitlines()[1:]]
    acc = {r[0]: float(r[2].rstrip("*")) for r in rows}
    assert set(acc) == {"gd", "gd__solver_iters_per_task=6"}
    assert acc["gd"] == pytest.approx(_metrics(smoke_run, ["acc"])[-1], abs=5e-4)
    assert acc["gd__solver_iters_per_task=6"] == pytest.approx(_metrics(folder, ["acc"])[-1], abs=5e-4)
