"""The benchmark's sections. Each builds its workloads, times them interleaved with its reference
(:func:`~cl_diffusion.benchlib.timing.interleave`) and returns a JSON-ready dict.

- :func:`train_section`: training steps of our UNet (fp32, channels_last, bf16 autocast) and of
  diffusers' ``UNet2DModel`` at the same architecture, with the dense-GEMM reference in the rounds.
- :func:`sampling_section`: DDIM sampling at the evaluation steps, with and without inference mode.
- :func:`strategies_section`: one iteration of finetune, gr and gd, time and FLOP ratios.
- :func:`compile_section`: ``torch.compile`` of our UNet's training step against eager.
"""
from __future__ import annotations

import copy
import gc
import time
from dataclasses import dataclass

import torch

from ..execution import Execution
from ..models import MODELS, build_model, count_parameters
from .flops import gemm_case
from .timing import Log, Timings, count_flops, interleave, paired_range, paired_ratio, time_call
from .workloads import (SAMPLING_MODES, bench_config, build_diffusers, default_variant, sampling_call,
                        strategy_iteration, train_step, variant_agreement)

DIFFUSERS_MISSING = "diffusers is not installed (install the benchmark extra: pip install -e '.[bench]')"
STRATEGY_NAMES = ("finetune", "gr", "gd")


@dataclass(frozen=True)
class Settings:
    """Sizes and repeat counts of one benchmark run."""

    preset: str  # network preset (MODELS), at its native image size and channels
    train_batch: int  # images per training step (model comparison, variants, compile)
    sample_batch: int  # images per DDIM sampling call
    strategy_batch: int  # current-task images per strategy iteration (gr/gd add as many replayed)
    repeats: int  # timed rounds; every figure is the median over them
    warmup: int  # untimed rounds before them (the first counts FLOPs)
    gemm_size: int  # n of the n x n x n fp32 GEMM reference
    gemm_calls: int  # GEMMs per timed GEMM call
    compile: bool  # measure torch.compile (minutes of compilation on a CPU)
    seed: int = 0


def _case(t: Timings, images: int, gemm: Timings | None = None) -> dict:
    """Median time, throughput and FLOP rate of one case; its FLOP/s as a share of the GEMM's."""
    d = t.to_dict()
    if t.error is not None:
        return d
    d["images"] = images
    d["images_per_s"] = images / t.median
    if t.flop:
        d["achieved_flops_per_s"] = t.flop / t.median
    if gemm is not None and gemm.flop and t.flop and gemm.error is None:
        # per-round (flop/t_case) / (flop_gemm/t_gemm), then the median over rounds
        d["fraction_of_gemm"] = t.flop / gemm.flop * paired_ratio(gemm, t)
    return d


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_section(s: Settings, device: torch.device, log: Log) -> dict:
    """Training-step throughput: ours (fp32 / channels_last / bf16) vs diffusers fp32, vs GEMM."""
    cfg = bench_config(s.preset)
    p, size = MODELS.get(s.preset), cfg.run.image_size
    torch.manual_seed(s.seed)
    ours = build_model(s.preset, p.in_channels, size)
    agreement = variant_agreement(copy.deepcopy(ours), min(4, s.train_batch), cfg, device, s.seed)
    models = {"ours_fp32": (ours, "fp32")}
    diffusers: dict = {"status": "measured"}
    try:
        models["diffusers_fp32"] = (build_diffusers(s.preset, p.in_channels, size), "fp32")
    except ImportError:
        diffusers = {"status": "skipped", "reason": DIFFUSERS_MISSING}
        log(f"note: {DIFFUSERS_MISSING}; skipping the diffusers comparison")
    except ValueError as err:
        diffusers = {"status": "skipped", "reason": str(err)}
    models["ours_channels_last"] = (copy.deepcopy(ours), "channels_last")
    models["ours_bf16"] = (copy.deepcopy(ours), "bf16")
    default = default_variant(cfg.run, device)  # the variant runs use on this device
    if f"ours_{default}" not in models:
        models[f"ours_{default}"] = (copy.deepcopy(ours), default)
    params = {name: count_parameters(m) for name, (m, _) in models.items()}
    cases = {"gemm": gemm_case(s.gemm_size, s.gemm_calls, device)}
    cases.update({name: train_step(m, variant, s.train_batch, cfg, device, s.seed)
                  for name, (m, variant) in models.items()})
    tm = interleave(cases, repeats=s.repeats, warmup=s.warmup, device=device, log=log, label="train")
    gemm, ref = tm.pop("gemm"), tm["ours_fp32"]
    out = {"batch": s.train_batch, "image_shape": [p.in_channels, size, size], "repeats": s.repeats,
           "diffusers": diffusers, "parameters": params,
           "gemm": {**gemm.to_dict(), "n": s.gemm_size, "calls": s.gemm_calls,
                    "flops_per_s": (gemm.flop or 0) / gemm.median},
           "cases": {name: _case(t, s.train_batch, gemm) for name, t in tm.items()},
           "agreement_with_fp32": agreement}
    # speed-up of each case over ours fp32: median over rounds of t(ours fp32) / t(case)
    out["speedup_vs_ours_fp32"] = {name: paired_ratio(ref, t) for name, t in tm.items() if name != "ours_fp32"}
    out["speedup_range_vs_ours_fp32"] = {name: paired_range(ref, t) for name, t in tm.items() if name != "ours_fp32"}
    out["default_variant"] = default
    if "diffusers_fp32" in tm:  # time of our step as runs execute it by default / diffusers' fp32 step
        out["default_over_diffusers"] = paired_ratio(tm[f"ours_{default}"], tm["diffusers_fp32"])
        out["default_over_diffusers_range"] = paired_range(tm[f"ours_{default}"], tm["diffusers_fp32"])
    del models, cases, ours
    _release()
    return out


def sampling_section(s: Settings, device: torch.device, log: Log) -> dict:
    """DDIM sampling throughput at the evaluation steps; projected time of one evaluation."""
    cfg = bench_config(s.preset)
    p = MODELS.get(s.preset)
    torch.manual_seed(s.seed)
    model = build_model(s.preset, p.in_channels, cfg.run.image_size)
    cases = {mode: sampling_call(model, mode, s.sample_batch, cfg, device, s.seed) for mode in SAMPLING_MODES}
    tm = interleave(cases, repeats=s.repeats, warmup=s.warmup, device=device, log=log, label="sampling")
    n_eval = cfg.eval.eval_samples
    res = {}
    for mode, t in tm.items():
        d = _case(t, s.sample_batch)
        if t.error is None:
            d["projected_seconds_eval"] = n_eval / d["images_per_s"]
            d["speedup_vs_no_grad"] = paired_ratio(tm["no_grad"], t)
        res[mode] = d
    del model, cases
    _release()
    return {"batch": s.sample_batch, "steps": cfg.eval.eval_steps, "eval_samples": n_eval,
            "sampler": "ddim", "eta": cfg.run.eta, "spacing": cfg.run.spacing, "repeats": s.repeats,
            "evaluator_mode": "inference_mode", "cases": res}


def strategies_section(s: Settings, device: torch.device, log: Log) -> dict:
    """Per-iteration wall time and FLOPs of finetune, gr and gd on task 2, as ratios to finetune."""
    cases, cfgs = {}, {}
    for name in STRATEGY_NAMES:
        cases[name], cfgs[name] = strategy_iteration(name, s.preset, s.strategy_batch, device, s.seed)
    tm = interleave(cases, repeats=s.repeats, warmup=s.warmup, device=device, log=log, label="strategies")
    ft = tm["finetune"]
    res = {}
    for name, t in tm.items():
        d = _case(t, s.strategy_batch)
        if t.error is None and ft.error is None:
            d["time_ratio_to_finetune"] = paired_ratio(t, ft)
            d["time_ratio_range"] = paired_range(t, ft)
            d["flop_ratio_to_finetune"] = t.flop / ft.flop if t.flop and ft.flop else float("nan")
            d["time_over_flop_ratio"] = d["time_ratio_to_finetune"] / d["flop_ratio_to_finetune"]
        d["params"] = cfgs[name].to_dict()["strategy_params"]
        res[name] = d
    gd, gr = tm["gd"], tm["gr"]
    del cases
    _release()
    execution = Execution.resolve(cfgs["finetune"].run, device).describe()
    return {"batch": s.strategy_batch, "task_index": 1, "repeats": s.repeats, "execution": execution, "cases": res,
            "gd_time_over_gr": paired_ratio(gd, gr), "gd_time_over_gr_range": paired_range(gd, gr),
            "gd_flop_over_gr": gd.flop / gr.flop if gd.flop and gr.flop else float("nan")}


def compile_section(s: Settings, device: torch.device, log: Log, skip_reason: str = "") -> dict:
    """``torch.compile`` (default mode) of our UNet's fp32 training step against eager; a failure
    to compile is reported, not raised."""
    if not s.compile:
        return {"status": "skipped", "reason": skip_reason}
    cfg = bench_config(s.preset)
    p = MODELS.get(s.preset)
    torch.manual_seed(s.seed)
    eager = build_model(s.preset, p.in_channels, cfg.run.image_size)
    step_eager = train_step(eager, "fp32", s.train_batch, cfg, device, s.seed)
    flop = count_flops(step_eager)  # eager's count stands for both: the compiled graph does the same math
    log("compile: compiling the training step (first call) ...")
    start = time.perf_counter()
    try:
        step_compiled = train_step(torch.compile(copy.deepcopy(eager)), "fp32", s.train_batch, cfg, device, s.seed)
        first = time_call(step_compiled, device)
    except Exception as err:  # inductor/compiler failures: report, keep the other results
        msg = (str(err).strip().splitlines() or [""])[0][:300]
        return {"status": "failed", "error": f"{type(err).__name__}: {msg}",
                "seconds_until_failure": time.perf_counter() - start}
    tm = interleave({"eager": step_eager, "compiled": step_compiled}, repeats=s.repeats, warmup=s.warmup,
                    device=device, count=False, log=log, label="compile")
    for t in tm.values():
        t.flop = flop
    _release()
    return {"status": "measured", "mode": "default", "batch": s.train_batch, "first_call_seconds": first,
            "cases": {k: _case(t, s.train_batch) for k, t in tm.items()},
            "speedup_vs_eager": paired_ratio(tm["eager"], tm["compiled"]),
            "speedup_range": paired_range(tm["eager"], tm["compiled"])}
