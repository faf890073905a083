"""W&B logging: an offline run folder holding the logged metrics; without wandb, exit 2 before training."""
from __future__ import annotations

import json
import struct
import sys
import time

import pytest

from cl_diffusion.run import main


def _records(wandb_file) -> list:
    """The records of an offline ``run-<id>.wandb`` transaction log (LevelDB log format: 32 KiB
    blocks of records with a 7-byte header crc32 / length / type, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, chunks, out = wandb_file.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(chunks)
            out.append(record)
            chunks = b""
    return out


def _history(wandb_file, timeout_s: float = 30.0) -> dict[int, dict[str, float]]:
    """The logged values by step, read once the log holds the run's exit record (W&B's service
    writes it; on a busy machine that may trail ``finish`` a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = _records(wandb_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    steps: dict[int, dict[str, float]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            steps.setdefault(int(row["_step"]), {}).update(row)
    return steps


def test_offline_run_folder_holds_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from cl_diffusion.evaluation.wandblog import WandbMetricsLogger

    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test (the logger sets it too)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a network attempt would fail, not hang
    run_dir = tmp_path / "fmnist-5_gd_s0"
    logger = WandbMetricsLogger(run_dir, {"strategy": "gd"})
    logger.log(1, {"fid_clf": 12.5, "kid_clf": float("nan")}, [{"task_after": 1, "task_j": 1, "acc": 0.75}])
    logger.log(2, {"fid_clf": 9.0, "kid_clf": 0.25}, [])
    logger.close()
    folders = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1 and folders[0] == logger.run_folder
    history = _history(next(folders[0].glob("run-*.wandb")))
    got = {step: (h.get("eval/fid_clf"), h.get("eval/kid_clf"), h.get("per_task/acc/task1"))
           for step, h in history.items()}
    assert got == {1: (12.5, None, 0.75), 2: (9.0, 0.25, None)}, history  # NaN is not logged
    assert "offline" in logger.backend


def test_missing_wandb_is_a_user_error_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # "import wandb" now raises ImportError
    out = tmp_path / "runs"
    rc = main(["--strategy", "gd", "--benchmark", "fmnist-5", "--profile", "smoke", "--set", "wandb=true",
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "wandb" in err and "pip install 'cl_diffusion[wandb]'" in err
    assert not out.exists()  # nothing was created, let alone trained
    assert main(["--strategy", "gd", "--benchmark", "fmnist-5", "--profile", "smoke", "--dry-run"]) == 0  # off: fine
