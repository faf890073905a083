"""Command line: ``python -m cl_diffusion.run --strategy gd --benchmark cifar10-5``.

Thin by design: it resolves one :class:`~cl_diffusion.config.Config`, writes ``config.json``
into a new run directory and hands over to :class:`~cl_diffusion.trainer.Trainer`. The last
line on stdout is the run directory. Bad input prints one line ``error: ...`` and exits 2.

Under ``torchrun --nproc_per_node N -m cl_diffusion.run ...`` the same command trains one run
data-parallel over N processes (:mod:`cl_diffusion.distributed`); rank 0 prints and writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .config import RunConfig
from .errors import UserError, cli_main
from .options import add_flags

#: The run options that also have a flag of their own (``--data-root`` for ``data_root``).
FLAG_OPTIONS = ("strategy", "benchmark", "profile", "seed", "device", "out", "data_root", "class_order")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cl_diffusion.run", description=__doc__.split("\n")[0])
    add_flags(p, RunConfig, FLAG_OPTIONS[:2], show_default=False)  # required unless --list or --resume
    add_flags(p, RunConfig, FLAG_OPTIONS[2:])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own, one per core)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any option")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list", action="store_true", help="list strategies, benchmarks, models, profiles, options")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="run what a check would refuse but can be overridden: a "
                   "run that needs more memory than is available; with --resume, a different commit or config")
    return p


def parse_sets(items: Sequence[str], flag: str = "--set", expected: str = "KEY=VALUE") -> list[tuple[str, str]]:
    """``KEY=VALUE`` strings -> ``(key, value)`` pairs; UserError naming ``flag`` for one without ``=``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad {flag} {item!r}: expected {expected}")
        out.append((key.strip(), value.strip()))
    return out


def run_fields(args: argparse.Namespace) -> dict[str, object]:
    """The run options given as their own flags (``--seed``, ``--data-root`` ...), when given; the
    strategy, benchmark and profile are passed by name."""
    return {k: getattr(args, k) for k in FLAG_OPTIONS[3:] if getattr(args, k, None) is not None}


def check_threads(threads: int | None) -> None:
    """Refuse a ``--threads`` below 1 (None: not given)."""
    if threads is not None and threads < 1:
        raise UserError(f"bad value {threads} for --threads: expected an integer >= 1")


def set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads in this process (intra-op; not recorded in the config, since
    it changes speed only; ``config.json`` meta records the count a run used)."""
    check_threads(threads)
    import torch

    torch.set_num_threads(threads)


@cli_main(interrupted="interrupted; resume with --resume RUN_DIR")
def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        sets = parse_sets(args.set)
        check_threads(args.threads)
        if not (args.list or args.resume):  # refuse what can be refused before torch is imported
            from .preflight import early_checks

            early_checks(args.strategy, args.profile, sets, run_fields(args))
        from . import distributed
        from .app import load_plugins, print_list, resume_run, start_run

        load_plugins()
        if args.threads is not None:
            set_threads(args.threads)
        if args.list:
            print_list()
            return 0
        if args.resume:
            run_dir = resume_run(Path(args.resume), args, sets, force=args.force)
        else:
            run_dir = start_run(args, sets)
        if run_dir is not None and distributed.is_main():
            print(run_dir)
        return 0
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group; never imports torch just for this."""
    module = sys.modules.get("cl_diffusion.distributed")
    if module is not None:
        module.shutdown()


if __name__ == "__main__":
    sys.exit(main())
