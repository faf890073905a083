"""``python -m cl_diffusion.replay_quality``: scores a saved model's samples per DDIM step count."""
from __future__ import annotations

import json

import pytest

from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.replay_quality import main
from tests.conftest import dataset_available

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not dataset_available("fmnist-5"), reason="Fashion-MNIST not installed")]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    load_plugins()
    return run_experiment("finetune", "fmnist-5", "smoke", sets=[("solver_epochs", "0")],
                          out=str(tmp_path_factory.mktemp("rq")), log=lambda *_: None)


def test_scores_each_step_count_and_matches_the_run_at_its_eval_steps(smoke_run, tmp_path, capsys):
    out = tmp_path / "rq.json"
    assert main([str(smoke_run), "--task", "1", "--steps", "1,2", "--samples", "32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["steps"] for r in res["rows"]] == [1, 2] and res["samples"] == 32
    assert res["meta"]["git_commit"] and res["config"]["strategy"] == "finetune"
    # the smoke profile evaluates 32 samples at 2 DDIM steps: the same numbers as the run's task-1 row
    import csv

    row = next(csv.DictReader(open(smoke_run / "metrics.csv")))
    two = res["rows"][1]
    assert two["fid_clf"] == pytest.approx(float(row["fid_clf"]), rel=1e-6)
    assert two["kld"] == pytest.approx(float(row["kld"]), rel=1e-6)
    # after task 1 the seen classes are task 1's: the run's per-task share of its samples routed there
    first = next(csv.DictReader(open(smoke_run / "per_task.csv")))
    assert (first["task_after"], first["task_j"]) == ("1", "1")
    assert two["share_seen"] == pytest.approx(float(first["share"]), rel=1e-6)


def test_never_overwrites_and_rejects_bad_input(smoke_run, tmp_path, capsys):
    out = tmp_path / "exists.json"
    out.write_text("{}")
    assert main([str(smoke_run), "--out", str(out)]) == 2
    assert out.read_text() == "{}"
    assert main([str(smoke_run), "--steps", "0,2"]) == 2
    assert main([str(smoke_run), "--task", "9"]) == 2
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "'0,2'" in err and "model_task1.safetensors" in err and "not a run directory" in err
    assert "Traceback" not in err
