"""The issue's speed targets, judged on the measured figures, and the table printed to stdout."""
from __future__ import annotations

import math
from typing import Any

# The targets (CPU fp32 unless named otherwise).
MAX_OURS_OVER_DIFFUSERS = 1.0  # our training step no slower than diffusers' at the same architecture
MIN_GEMM_FRACTION = 0.8  # achieved model FLOP/s over measured dense-GEMM FLOP/s
MIN_BF16_SPEEDUP = 1.5  # bf16 autocast throughput over fp32
MAX_GD_OVER_GR = 1.15  # gd wall time per iteration over gr's
MAX_FLOP_RATIO_DEVIATION = 0.10  # |gd time ratio / gd FLOP ratio (both to finetune) - 1|


def _target(name: str, measured: float, threshold: float, op: str, note: str = "") -> dict[str, Any]:
    ok = None if not math.isfinite(measured) else (measured <= threshold if op == "<=" else measured >= threshold)
    return {"target": name, "measured": measured, "threshold": threshold, "op": op, "met": ok, "note": note}


def judge_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: measured value, threshold, met (None = not measured) and a note."""
    train, strat, dev = res["train"], res["strategies"], res["meta"]["device_info"]
    cases, speed = train["cases"], train["speedup_vs_ours_fp32"]
    nan = float("nan")
    out = []
    if train["diffusers"]["status"] == "measured" and "diffusers_fp32" in speed:
        # speed-up of diffusers over ours = t_ours / t_diffusers: our step is no slower when <= 1
        rng = train["speedup_range_vs_ours_fp32"]["diffusers_fp32"]
        tie = "; the per-round ratios straddle 1: a tie within noise" if rng and rng[0] <= 1.0 <= rng[1] else ""
        out.append(_target("fp32 training step time, ours / diffusers", speed["diffusers_fp32"],
                           MAX_OURS_OVER_DIFFUSERS, "<=", f"per-round range {_fmt_range(rng)}{tie}"))
    else:
        out.append(_target("fp32 training step time, ours / diffusers", nan, MAX_OURS_OVER_DIFFUSERS, "<=",
                           train["diffusers"].get("reason", "")))
    if "default_over_diffusers" in train:
        dv = train["default_variant"]
        out.append(_target(f"training step time, ours as runs execute it ({dv}) / diffusers fp32",
                           train["default_over_diffusers"], MAX_OURS_OVER_DIFFUSERS, "<=",
                           f"per-round range {_fmt_range(train['default_over_diffusers_range'])}; "
                           + ("bf16 autocast" if "bf16" in dv else "the same fp32 arithmetic")))
    out.append(_target("achieved model FLOP/s / dense-GEMM FLOP/s (ours fp32 training step)",
                       cases["ours_fp32"].get("fraction_of_gemm", nan), MIN_GEMM_FRACTION, ">="))
    bf16_note = "" if dev["native_bf16"] else (
        f"no native bf16 on this device (capability {dev['capability']}, none of the flags "
        "avx512_bf16/amx_bf16/amx_tile): bf16 is emulated by conversions")
    out.append(_target("bf16 autocast throughput / fp32", speed.get("ours_bf16", nan), MIN_BF16_SPEEDUP, ">=",
                       bf16_note))
    out.append(_target("gd / gr wall time per iteration", strat["gd_time_over_gr"], MAX_GD_OVER_GR, "<=",
                       f"FLOP ratio gd / gr {strat['gd_flop_over_gr']:.3f}"))
    gd = strat["cases"]["gd"]
    dev_ratio = abs(gd.get("time_over_flop_ratio", nan) - 1.0)
    out.append(_target("|gd time ratio / gd FLOP ratio - 1| (ratios to finetune)", dev_ratio,
                       MAX_FLOP_RATIO_DEVIATION, "<=",
                       f"time ratio {gd.get('time_ratio_to_finetune', nan):.3f}, "
                       f"FLOP ratio {gd.get('flop_ratio_to_finetune', nan):.3f}"))
    return out


def _fmt_range(r: list[float]) -> str:
    return f"{r[0]:.3f}-{r[1]:.3f}" if r else "n/a"


def _g(x: Any, spec: str = ".3g") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def format_table(res: dict[str, Any]) -> str:
    """The human-readable summary: one line per measured case, then the targets."""
    m = res["meta"]
    lines = [f"cl_diffusion bench: preset {m['preset']} {m['image_shape']}, device {m['device']} "
             f"({m['device_info']['name']}), torch {m['torch']}, {m['threads']} threads, commit {m['git_commit']}",
             f"{'section':<11}{'case':<44}{'batch':>6}{'median s':>10}{'img/s':>9}{'GFLOP':>9}"
             f"{'GFLOP/s':>9}  vs reference"]

    def row(section: str, case: str, d: dict, batch: int, ref: str) -> None:
        if "error" in d:
            lines.append(f"{section:<11}{case:<44}{batch:>6}  failed: {d['error']}")
            return
        gflop = d["flop"] / 1e9 if d.get("flop") else float("nan")
        rate = d.get("achieved_flops_per_s", float("nan")) / 1e9
        lines.append(f"{section:<11}{case:<44}{batch:>6}{_g(d['median_s'], '.3f'):>10}{_g(d['images_per_s']):>9}"
                     f"{_g(gflop, '.1f'):>9}{_g(rate, '.1f'):>9}  {ref}")

    tr = res["train"]
    g = tr["gemm"]
    lines.append(f"{'gemm':<11}{'fp32 %dx%dx%d' % (g['n'], g['n'], g['n']):<44}{'':>6}{_g(g.get('median_s'), '.3f'):>10}"
                 f"{'':>9}{_g((g.get('flop') or 0) / 1e9, '.1f'):>9}{_g(g['flops_per_s'] / 1e9, '.1f'):>9}"
                 f"  reference ({g['calls']} GEMMs per call)")
    for name, d in tr["cases"].items():
        ref = f"{d.get('fraction_of_gemm', float('nan')):.2f} of GEMM FLOP/s"
        if name != "ours_fp32" and name in tr["speedup_vs_ours_fp32"]:
            ref += f", speed-up vs ours_fp32 {tr['speedup_vs_ours_fp32'][name]:.3f}x"
        row("train", f"{name} ({tr['parameters'][name]:,} p)", d, tr["batch"], ref)
    if tr["diffusers"]["status"] != "measured":
        lines.append(f"{'train':<11}diffusers_fp32: skipped ({tr['diffusers']['reason']})")
    sa = res["sampling"]
    for name, d in sa["cases"].items():
        ref = (f"speed-up vs no_grad {d['speedup_vs_no_grad']:.3f}x; {sa['eval_samples']:,} samples "
               f"in {d['projected_seconds_eval'] / 60:.1f} min") if "error" not in d else ""
        row("sampling", f"ddim {sa['steps']} steps, {name}", d, sa["batch"], ref)
    st = res["strategies"]
    for name, d in st["cases"].items():
        ref = (f"time x{d.get('time_ratio_to_finetune', float('nan')):.3f} of finetune, "
               f"FLOPs x{d.get('flop_ratio_to_finetune', float('nan')):.3f}")
        row("strategy", name, d, st["batch"], ref)
    if "execution" in st:
        ex = st["execution"]
        lines.append(f"{'strategy':<11}run with the device's default execution options: {ex['memory_format']}, "
                     f"{ex['precision']}, compile {'on' if ex['compile'] else 'off'}")
    co = res["compile"]
    if co["status"] == "measured":
        row("compile", "torch.compile fp32 step", co["cases"]["compiled"], co["batch"],
            f"speed-up vs eager {co['speedup_vs_eager']:.3f}x, first call {co['first_call_seconds']:.0f} s")
    else:
        lines.append(f"{'compile':<11}torch.compile: {co['status']} ({co.get('reason') or co.get('error')})")
    ag = tr["agreement_with_fp32"]
    lines.append("agreement with fp32 (relative L2): " + ", ".join(
        f"{k} eps {v['eps_rel']:.2e} loss {v['loss_rel']:.2e} (tol {v['tolerance']:g})" for k, v in ag.items()))
    lines.append("targets:")
    for t in res["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[t["met"]]
        lines.append(f"  [{verdict}] {t['target']}: {_g(t['measured'], '.3f')} (want {t['op']} {t['threshold']:g})"
                     + (f"; {t['note']}" if t["note"] else ""))
    return "\n".join(lines)
