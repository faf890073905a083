"""Command line: ``python -m cl_diffusion.bench [--device cpu|cuda] [--preset paper-fmnist] [--out results/bench]``.

Measures, in one process on one device, with every case interleaved with its reference and every
figure a median over repeated rounds (see :mod:`cl_diffusion.benchlib`):

(a) training-step throughput of our UNet against diffusers' ``UNet2DModel`` at the same
    architecture (diffusers is the optional ``bench`` extra; without it that comparison is skipped),
    and of our UNet with channels_last and with bf16 autocast;
(b) achieved model FLOP/s (``FlopCounterMode``) as a share of the device's measured fp32 GEMM FLOP/s;
(c) DDIM sampling throughput at the evaluation steps and the projected time of one evaluation;
(d) per-iteration time of finetune, gr and gd (task 2, teacher frozen) next to their FLOP ratios;
(e) ``torch.compile`` of the training step (on by default on CUDA only).

Writes ``<out>/bench_<device>_<preset>[_quick].json`` and prints a table and the targets.
Bad input prints one line ``error: ...`` and exits 2.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .config import RunConfig
from .errors import UserError, cli_main
from .options import add_flags, flag_values

if TYPE_CHECKING:
    import torch

# Sizes per (device type, quick): the full CPU run of paper-fmnist took 3-5 min with 1 thread on 2
# shared cores (see docs/bench.md) and --quick about a minute; a GPU gets the paper's batch sizes.
DEFAULTS: dict[tuple[str, bool], dict[str, int]] = {
    ("cpu", False): dict(train_batch=16, sample_batch=8, strategy_batch=16, repeats=3, warmup=1,
                         gemm_size=2048, gemm_calls=3),
    ("cpu", True): dict(train_batch=4, sample_batch=2, strategy_batch=2, repeats=2, warmup=1,
                        gemm_size=1024, gemm_calls=2),
    ("cuda", False): dict(train_batch=128, sample_batch=500, strategy_batch=128, repeats=10, warmup=3,
                          gemm_size=8192, gemm_calls=5),
    ("cuda", True): dict(train_batch=32, sample_batch=64, strategy_batch=32, repeats=3, warmup=2,
                         gemm_size=4096, gemm_calls=2),
}
COMPILE_OFF_CPU = ("off by default on the CPU, where compiling the training step takes minutes "
                   "(see docs/bench.md); --compile on measures it")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cl_diffusion.bench", description=__doc__.split("\n")[0])
    add_flags(p, RunConfig, ["device"], defaults={"device": RunConfig.device})
    p.add_argument("--preset", default=RunConfig.model, help=f"network preset (default {RunConfig.model}; see "
                                                             "python -m cl_diffusion.run --list)")
    p.add_argument("--out", default="results/bench", help="folder of the JSON result (default results/bench)")
    p.add_argument("--quick", action="store_true", help="small batches and 2 rounds: about a minute")
    add_flags(p, RunConfig, ["compile"], defaults={"compile": RunConfig.compile})
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--repeats", type=int, help="timed rounds per comparison (default by device)")
    p.add_argument("--batch", type=int, help="images per training step (default by device)")
    p.add_argument("--sample-batch", type=int, help="images per DDIM sampling call (default by device)")
    p.add_argument("--strategy-batch", type=int, help="current images per strategy iteration (default by device)")
    p.add_argument("--force", action="store_true", help="run even where the memory estimate exceeds what is available")
    return p


def resolve_settings(args: argparse.Namespace, device: torch.device) -> tuple[Any, str]:
    """The run's :class:`~cl_diffusion.benchlib.sections.Settings` and why compile is off (if so)."""
    from .benchlib.sections import Settings
    from .models import MODELS

    MODELS.get(args.preset)  # unknown preset -> UserError listing the presets
    d = dict(DEFAULTS[(device.type, args.quick)])
    for key, value in (("repeats", args.repeats), ("train_batch", args.batch),
                       ("sample_batch", args.sample_batch), ("strategy_batch", args.strategy_batch)):
        if value is not None:
            if value < 1:
                raise UserError(f"bad value {value} for --{key.replace('train_', '').replace('_', '-')}: "
                                "must be >= 1")
            d[key] = value
    compile_on = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    reason = "" if compile_on else (COMPILE_OFF_CPU if args.compile == "auto" else "--compile off")
    return Settings(preset=args.preset, compile=compile_on, **d), reason


def check_memory(s: Any, device: torch.device, force: bool) -> None:
    """Refuse settings whose training steps need more memory than ``device`` has (unless ``force``):
    the preset at its native size, the larger of a training batch and a strategy iteration's
    current + replay images, one frozen copy (the teacher)."""
    from . import preflight
    from .models import MODELS

    p = MODELS.get(s.preset)
    fp = preflight.footprint(s.preset, p.in_channels, p.image_size)
    batch = max(s.train_batch, 2 * s.strategy_batch)
    parts = preflight.memory_parts(fp, batch, s.sample_batch, 1, None, p.in_channels, p.image_size)
    hint = {"weights": f"choose a smaller --preset than {s.preset!r}",
            "activations": f"lower --batch (now {s.train_batch}) or --strategy-batch (now {s.strategy_batch})",
            "sampling": f"lower --sample-batch (now {s.sample_batch})"}
    preflight.check_memory(parts, device, hint, force)


def _diffusers_version() -> str | None:
    try:
        import diffusers
    except ImportError:
        return None
    return diffusers.__version__


def run_bench(s: Any, device: torch.device, compile_reason: str = "", log=print) -> dict[str, Any]:
    """Run every section and return the result (JSON-ready); ``meta`` says where and how."""
    import torch

    from . import __version__
    from .benchlib import sections
    from .benchlib.flops import device_info
    from .benchlib.report import judge_targets
    from .io import git_commit
    from .models import MODELS

    p = MODELS.get(s.preset)
    start, load0 = time.perf_counter(), os.getloadavg()
    meta = {"device": device.type, "device_info": device_info(device), "torch": torch.__version__,
            "diffusers": _diffusers_version(), "python": platform.python_version(),
            "threads": torch.get_num_threads(), "git_commit": git_commit(), "package_version": __version__,
            "preset": s.preset, "image_shape": [p.in_channels, p.image_size, p.image_size],
            "settings": asdict(s), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg_start": list(load0), "warnings": busy_warnings(load0[0]) if device.type == "cpu" else []}
    for w in meta["warnings"]:
        log(f"warning: {w}")
    res: dict[str, Any] = {"meta": meta}
    res["train"] = sections.train_section(s, device, log)
    res["sampling"] = sections.sampling_section(s, device, log)
    res["strategies"] = sections.strategies_section(s, device, log)
    res["compile"] = sections.compile_section(s, device, log, compile_reason)
    meta["wall_seconds"] = time.perf_counter() - start
    meta["loadavg_end"] = list(os.getloadavg())
    res["targets"] = judge_targets(res)
    return res


def busy_warnings(load1: float) -> list[str]:
    """A warning when other processes already keep the CPU cores busy: torch's OpenMP threads then
    wait on each other at every operator and CPU timings (ratios less so) get much slower."""
    import torch

    cores, threads = os.cpu_count() or 1, torch.get_num_threads()
    if load1 + threads <= cores + 0.5:
        return []
    hint = "; with more threads than free cores, OpenMP threads wait on each other: consider --threads 1"
    return [f"the machine is busy (1-min load average {load1:.1f} on {cores} cores, {threads} torch "
            f"thread{'s' if threads > 1 else ''}): timings are slowed by other processes, ratios are measured "
            f"side by side{hint if threads > 1 else ''}"]


def result_path(out: Path, device: torch.device, preset: str, quick: bool) -> Path:
    """``bench_<device>_<preset>[_t<threads>][_quick].json``; CPU figures depend on the thread count."""
    import torch

    threads = f"_t{torch.get_num_threads()}" if device.type == "cpu" else ""
    return Path(out) / f"bench_{device.type}_{preset}{threads}{'_quick' if quick else ''}.json"


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    args = build_parser().parse_args(argv)
    vars(args).update(flag_values(args, RunConfig, ["device", "compile"]))
    from .preflight import check_out_dir

    if args.threads is not None and args.threads < 1:
        raise UserError(f"bad value {args.threads} for --threads: must be >= 1")
    check_out_dir(args.out, "--out")
    import torch

    from .app import load_plugins, resolve_device
    from .benchlib.report import format_table
    from .io import atomic_write_json

    load_plugins()
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings, compile_reason = resolve_settings(args, device)
    check_memory(settings, device, args.force)
    path = result_path(Path(args.out), device, settings.preset, args.quick)
    res = run_bench(settings, device, compile_reason, log)
    res["meta"]["command"] = "python -m cl_diffusion.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, res)
    print(format_table(res))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
