"""The benchmark command at test scale: every section present with finite positive figures, the
FLOP ordering of the strategies, bad input, the diffusers-less path, and the numeric agreement
of the faster variants (channels_last, bf16 autocast) with fp32."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from cl_diffusion.app import load_plugins
from cl_diffusion.bench import main
from cl_diffusion.benchlib import sections
from cl_diffusion.benchlib.timing import interleave
from cl_diffusion.benchlib.workloads import (TOLERANCES, bench_config, default_variant, diffusers_config,
                                             variant_agreement)
from cl_diffusion.execution import Execution
from cl_diffusion.models import MODELS, build_model, count_parameters

TINY = ["--device", "cpu", "--preset", "tiny", "--quick", "--repeats", "1", "--threads", "1"]


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_bench_writes_every_section(tmp_path, keep_threads, capsys):
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "bench_cpu_tiny_t1_quick.json"
    assert out.strip().splitlines()[-1] == str(path)
    assert "targets:" in out
    res = json.loads(path.read_text())
    assert set(res) == {"meta", "train", "sampling", "strategies", "compile", "targets"}
    meta = res["meta"]
    assert meta["git_commit"] and meta["torch"] == torch.__version__ and meta["threads"] == 1
    assert meta["device"] == "cpu" and meta["device_info"]["name"] and meta["preset"] == "tiny"

    train = res["train"]
    assert _positive(train["gemm"]["flops_per_s"]) and _positive(train["gemm"]["median_s"])
    names = {"ours_fp32", "ours_channels_last", "ours_bf16"}
    if train["diffusers"]["status"] == "measured":
        names.add("diffusers_fp32")
        assert train["parameters"]["diffusers_fp32"] == train["parameters"]["ours_fp32"]
    assert set(train["cases"]) == names | {f"ours_{train['default_variant']}"}
    run = bench_config("tiny").run  # the strategies and the default variant follow the run defaults
    assert res["strategies"]["execution"] == Execution.resolve(run, torch.device("cpu")).describe()
    assert train["default_variant"] == default_variant(run, torch.device("cpu"))
    for case in train["cases"].values():
        for key in ("median_s", "images_per_s", "flop", "achieved_flops_per_s", "fraction_of_gemm"):
            assert _positive(case[key]), (key, case)
    assert all(_positive(v) for v in train["speedup_vs_ours_fp32"].values())

    for case in res["sampling"]["cases"].values():
        for key in ("median_s", "images_per_s", "projected_seconds_eval", "speedup_vs_no_grad", "flop"):
            assert _positive(case[key]), (key, case)
    assert res["sampling"]["steps"] == 10

    strat = res["strategies"]["cases"]
    assert strat["gd"]["flop"] > strat["gr"]["flop"] > strat["finetune"]["flop"] > 0
    for case in strat.values():
        for key in ("median_s", "time_ratio_to_finetune", "flop_ratio_to_finetune"):
            assert _positive(case[key]), (key, case)
    assert strat["gd"]["params"]["teacher_steps"] == 2
    assert res["compile"]["status"] == "skipped" and res["compile"]["reason"]
    measured = train["diffusers"]["status"] == "measured"
    assert len(res["targets"]) == (6 if measured else 5) and all(t["met"] in (True, False, None) for t in res["targets"])
    if measured:
        assert _positive(train["default_over_diffusers"]) and "as runs execute it" in out


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], r"unknown model preset 'nope'; valid choices: .*paper-fmnist"),
    (["--device", "tpu"], r"bad value 'tpu' for device; valid choices: auto, cpu, cuda"),
    (["--repeats", "0"], r"bad value 0 for --repeats: must be >= 1"),
    (["--threads", "0"], r"bad value 0 for --threads"),
])
def test_bad_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_cuda_exits_2(tmp_path, capsys):
    assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_without_diffusers_the_comparison_is_skipped(monkeypatch, keep_threads):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    torch.set_num_threads(1)
    s = sections.Settings(preset="tiny", train_batch=2, sample_batch=2, strategy_batch=2, repeats=1, warmup=1,
                          gemm_size=64, gemm_calls=1, compile=False)
    logged = []
    train = sections.train_section(s, torch.device("cpu"), logged.append)
    assert train["diffusers"]["status"] == "skipped" and "pip install" in train["diffusers"]["reason"]
    assert "diffusers_fp32" not in train["cases"] and "ours_fp32" in train["cases"]
    assert any("diffusers is not installed" in line for line in logged)


def test_diffusers_config_is_the_paper_fmnist_unet():
    load_plugins()
    cfg = diffusers_config(MODELS.get("paper-fmnist"), 1, 32)
    assert cfg["block_out_channels"] == (64, 128, 256, 512) and cfg["layers_per_block"] == 1
    assert cfg["down_block_types"] == ("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    assert cfg["up_block_types"] == ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D")
    assert (cfg["sample_size"], cfg["in_channels"], cfg["out_channels"], cfg["norm_num_groups"]) == (32, 1, 1, 32)
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        theirs = diffusers.UNet2DModel(**cfg)
        ours = build_model("paper-fmnist", 1, 32)
    assert count_parameters(theirs) == count_parameters(ours) == 42_855_873


def test_faster_variants_agree_with_fp32(keep_threads):
    """channels_last within 1e-5 and bf16 autocast within 2e-2 (relative L2) of fp32, on eps and loss."""
    load_plugins()
    torch.set_num_threads(1)
    cfg = bench_config("tiny")
    torch.manual_seed(0)
    model = build_model("tiny", 1, cfg.run.image_size)
    agree = variant_agreement(model, 8, cfg, torch.device("cpu"))
    assert set(agree) == set(TOLERANCES)
    for variant, d in agree.items():
        assert d["eps_rel"] <= TOLERANCES[variant], (variant, d)
        assert d["loss_rel"] <= TOLERANCES[variant], (variant, d)
    assert agree["bf16"]["eps_rel"] > 0  # bf16 really ran in reduced precision


def test_interleave_alternates_cases_and_reports_failures():
    calls = []

    def boom():
        raise RuntimeError("unsupported here\nsecond line")

    tm = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "bad": boom},
                    repeats=2, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b"] * 3  # count round, then 2 timed rounds, always A, B
    assert len(tm["a"].seconds) == len(tm["b"].seconds) == 2 and tm["a"].flop == 0
    assert tm["bad"].error == "RuntimeError: unsupported here" and tm["bad"].seconds == []
