"""The execution options (memory format, bf16 autocast, torch.compile) compute the same thing.

Tolerances (relative L2 of the eps output unless said otherwise), as documented in
:mod:`cl_diffusion.execution`: channels_last 1e-5; bf16 autocast 2e-2 on eps and on the loss;
torch.compile 1e-4. Run-level: a smoke run with each option ends with the same training loss as
the fp32 contiguous run, within the same tolerances.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from cl_diffusion import execution as ex
from cl_diffusion.app import load_plugins, run_experiment
from cl_diffusion.config import RunConfig
from cl_diffusion.errors import UserError
from cl_diffusion.execution import Execution
from cl_diffusion.models import build_model
from cl_diffusion.profiles import resolve_config
from tests.conftest import read_csv

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def _run(**kw: str) -> RunConfig:
    run = RunConfig()
    for k, v in kw.items():
        setattr(run, k, v)
    return run


# ---- resolution of 'auto' -------------------------------------------------------------------------
def test_auto_on_a_cpu_without_native_bf16(monkeypatch) -> None:
    monkeypatch.setattr(ex, "cpu_flags", lambda: frozenset({"avx512f"}))
    e = Execution.resolve(RunConfig(), CPU)
    assert (e.channels_last, e.bf16, e.compile) == (True, False, False)
    assert e.describe() == {"memory_format": "channels_last", "precision": "fp32", "compile": False}


def test_auto_on_a_cpu_with_native_bf16_stays_fp32(monkeypatch) -> None:
    """Native bf16 on a CPU was slower than fp32 with channels_last (docs/bench.md): auto keeps fp32,
    so a CPU's results do not depend on its flags; precision=bf16 still turns it on."""
    monkeypatch.setattr(ex, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    assert ex.native_bf16(CPU) and not Execution.resolve(RunConfig(), CPU).bf16
    cfg = RunConfig()
    cfg.precision = "bf16"
    assert Execution.resolve(cfg, CPU).bf16


def test_auto_on_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    e = Execution.resolve(RunConfig(), CUDA)
    assert (e.channels_last, e.bf16, e.compile, e.device_type) == (True, True, True, "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not Execution.resolve(RunConfig(), CUDA).bf16


def test_explicit_choices_win(monkeypatch) -> None:
    monkeypatch.setattr(ex, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    e = Execution.resolve(_run(memory_format="contiguous", precision="fp32", compile="off"), CUDA)
    assert (e.channels_last, e.bf16, e.compile) == (False, False, False)
    e = Execution.resolve(_run(memory_format="channels_last", precision="bf16", compile="on"), CPU)
    assert (e.channels_last, e.bf16, e.compile) == (True, True, True)


def test_bad_choice_is_a_user_error() -> None:
    load_plugins()
    with pytest.raises(UserError, match="'fp8'.*auto, fp32, bf16"):
        resolve_config("finetune", "fmnist-5", "smoke", [("precision", "fp8")])


# ---- numerical equivalence ------------------------------------------------------------------------
def _model_and_batch(channels: int = 1):
    torch.manual_seed(0)
    model = build_model("small", channels, 16)
    x = torch.randn(8, channels, 16, 16)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 950, 999])
    return model, x, t


def test_channels_last_matches_contiguous_forward_and_grads() -> None:
    model, x, t = _model_and_batch()
    cl = Execution(channels_last=True).prepare(build_model("small", 1, 16))
    cl.load_state_dict(model.state_dict())
    assert cl.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    ref, out = model(x, t), cl(x, t)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel(out, ref) <= 1e-5
    ref.square().mean().backward()
    out.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), cl.parameters()):
        assert rel(q.grad, p.grad) <= 1e-4 or float(p.grad.norm()) < 1e-8, name


def test_bf16_autocast_within_tolerance_and_really_reduced() -> None:
    model, x, t = _model_and_batch()
    eps = torch.randn_like(x)
    ref = model(x, t)
    with Execution(bf16=True).autocast():
        out = model(x, t)
        loss = torch.mean((out - eps) ** 2)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert 0 < rel(out, ref) <= 2e-2
    ref_loss = torch.mean((ref - eps) ** 2)
    loss, ref_loss = float(loss.detach()), float(ref_loss.detach())
    assert abs(loss - ref_loss) / ref_loss <= 2e-2


def test_teacher_copy_keeps_the_memory_format_and_is_frozen() -> None:
    model, _, _ = _model_and_batch()
    e = Execution(channels_last=True)
    e.prepare(model)
    teacher = e.frozen_copy(model)
    assert teacher.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert teacher.conv_in.weight.data_ptr() != model.conv_in.weight.data_ptr()


def _have_compiler() -> bool:
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


@pytest.mark.skipif(not _have_compiler(), reason="torch.compile's CPU backend needs a C++ compiler")
def test_compile_matches_eager_and_keeps_parameter_names() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 1, 16)
    eager = build_model("tiny", 1, 16)
    eager.load_state_dict(model.state_dict())
    Execution(compile=True).prepare(model)
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 500, 999])
    assert list(model.state_dict()) == list(eager.state_dict())  # checkpoints unchanged
    with torch.no_grad():
        assert rel(model(x, t), eager(x, t)) <= 1e-4
        teacher = Execution(compile=True).frozen_copy(model)
        assert teacher._compiled_call_impl is not None  # the copy is compiled again
        assert rel(teacher(x, t), eager(x, t)) <= 1e-4


# ---- run level ----------------------------------------------------------------------------------
def test_smoke_runs_agree_across_execution_options(tmp_path) -> None:
    """gd smoke runs (teacher replay included; training only, as only the losses are compared):
    fp32 contiguous vs channels_last vs bf16 autocast."""
    load_plugins()
    losses, metas = {}, {}
    for name, fmt, prec in (("ref", "contiguous", "fp32"), ("cl", "channels_last", "fp32"),
                            ("bf16", "contiguous", "bf16")):
        run_dir = run_experiment("gd", "synthetic", "smoke",
                                 sets=[("memory_format", fmt), ("precision", prec), ("compile", "off"),
                                       ("eval_samples", "0"), ("solver_epochs", "0")],
                                 out=str(tmp_path / name), log=lambda *_: None)
        rows = read_csv(run_dir / "metrics.csv")
        assert len(rows) == 3
        losses[name] = [float(r["train_loss"]) for r in rows]
        metas[name] = json.loads((run_dir / "config.json").read_text())["meta"]["execution"]
    assert metas["cl"]["memory_format"] == "channels_last" and metas["bf16"]["precision"] == "bf16"
    assert metas["ref"] == {"memory_format": "contiguous", "precision": "fp32", "compile": False}
    for a, b in zip(losses["cl"], losses["ref"]):
        assert abs(a - b) / b <= 1e-4
    assert losses["bf16"] != losses["ref"]  # autocast really reached the training step
    for a, b in zip(losses["bf16"], losses["ref"]):
        assert abs(a - b) / b <= 2e-2
