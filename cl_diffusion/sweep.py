"""Sweeps: a grid of runs stored under ``results/``, skipping the ones already complete.

    python -m cl_diffusion.sweep --benchmark fmnist-5 --strategies finetune,gd --seeds 0,1,2 \\
        --profile quick [--set key=value ...] [--grid lambda=0.5,1.0 ...] [--out results]

Each run lives in a fixed folder ``<out>/<benchmark>/<profile>/<variant>/seed<k>/``, where the
variant is the strategy plus any ``--grid`` values (``gd__lambda=0.5``). A run is complete when its
``manifest.json`` exists (written last, atomically). A run that was interrupted is resumed from
its checkpoint; a folder with no checkpoint is started afresh. So a killed sweep, started again,
redoes only unfinished runs. Every run of the grid is checked in full (:mod:`.preflight`: options,
paths, the memory it needs against the device's, shared by ``--jobs`` runs) before the first one
starts; ``--force`` starts runs whose memory estimate exceeds what is available.

Executors: ``local`` (default) runs the specs one after another in this process, or ``--jobs N`` at a
time in N worker processes of ``--threads`` torch threads each (default: the CPU cores split evenly,
at least 1; on a small CPU machine several 1-thread runs finish sooner than one run with every core,
and too many threads per core stall in OpenMP spin-waits); ``ray`` submits
each spec as one Ray task that asks for ``--gpus-per-run`` GPUs (default 1), on the cluster at
``--address`` (default: ``$RAY_ADDRESS`` or a running local instance; ``local`` starts a new one).
Both call :func:`execute`, so the folders and manifests are the same. Ray workers write into
``--out`` directly: on a multi-node cluster it must be a path every node shares, and every node
needs this package installed (``pip install 'cl_diffusion[ray]'``).
"""
from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .config import RunConfig
from .errors import UserError, cli_main
from .options import add_flags
from .run import _Parser, parse_sets, set_threads


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what to run and where its results live."""

    benchmark: str
    strategy: str
    seed: int
    profile: str
    sets: tuple[tuple[str, str], ...]
    grid: tuple[tuple[str, str], ...]

    @property
    def variant(self) -> str:
        return "__".join([self.strategy, *(f"{k}={v}" for k, v in self.grid)])

    def folder(self, out: Path) -> Path:
        return out / self.benchmark / self.profile / self.variant / f"seed{self.seed}"

    def command(self) -> str:
        parts = ["python -m cl_diffusion.run", f"--strategy {self.strategy}", f"--benchmark {self.benchmark}",
                 f"--profile {self.profile}", f"--seed {self.seed}"]
        parts += [f"--set {k}={v}" for k, v in (*self.sets, *self.grid)]
        return " ".join(parts)


def expand(benchmark: str, strategies: Sequence[str], seeds: Sequence[int], profile: str,
           sets: Sequence[tuple[str, str]], grid: Sequence[tuple[str, list[str]]]) -> list[RunSpec]:
    """The cartesian product strategies x grid values x seeds."""
    keys = [k for k, _ in grid]
    combos = list(itertools.product(*[vals for _, vals in grid])) or [()]
    return [RunSpec(benchmark, s, seed, profile, tuple(sets), tuple(zip(keys, combo)))
            for s in strategies for combo in combos for seed in seeds]


def is_complete(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def execute(spec: RunSpec, out: Path, log: Callable[[str], None] = print, force: bool = False) -> Path:
    """Run (or resume) one spec into its folder and write its manifest. Returns the folder.
    ``force``: start it even where its memory estimate exceeds what is available.

    A sibling lock file ``<folder>.lock`` is held for the whole run, so two sweeps over the same
    results never work on (or delete) the same run: the second gets :class:`RunInUse`.
    """
    from .app import resume_folder, run_config
    from .io import atomic_write_json, git_commit
    from .profiles import resolve_config

    folder = spec.folder(out)
    cfg = resolve_config(spec.strategy, spec.benchmark, spec.profile, [*spec.sets, *spec.grid], seed=spec.seed,
                         out=str(folder.parent))
    start, resumed_by = time.time(), None
    with _sweep_lock(folder):
        if is_complete(folder):
            return folder
        if (folder / "ckpt").is_dir() and (folder / "config.json").is_file():
            log(f"[sweep] resuming {folder}")
            resumed_by = git_commit()  # the code that finished the run, next to the one that started it
            resume_folder(folder, log=log)
        else:
            if folder.exists():
                shutil.rmtree(folder)  # started but never checkpointed: nothing to keep
            run_config(cfg, log=log, run_dir=folder, force=force)
        config = json.loads((folder / "config.json").read_text())
        manifest = {"status": "complete", "command": spec.command(), "variant": spec.variant, "seed": spec.seed,
                    "benchmark": spec.benchmark, "strategy": spec.strategy, "profile": spec.profile,
                    "grid": dict(spec.grid), "sets": dict(spec.sets), "git_commit": config["meta"]["git_commit"],
                    "device": config["meta"]["device"], "device_name": config["meta"].get("device_name"),
                    "cpu_model": config["meta"].get("cpu_model"),
                    "wall_seconds_last_call": round(time.time() - start, 1),
                    **({"resumed_by_commit": resumed_by} if resumed_by else {}),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_json(folder / "manifest.json", manifest)
    return folder


class RunInUse(UserError):
    """Another process is working on this run folder."""


@contextmanager
def _sweep_lock(folder: Path) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUse(f"{folder} is being run by another process") from None
        yield


EXECUTORS = ("local", "ray")


def run_on_ray(todo: Sequence[RunSpec], out: Path, address: str | None, gpus_per_run: float,
               cpus_per_run: int, force: bool = False) -> int:
    """Run every spec as one Ray task (``gpus_per_run`` GPUs, ``cpus_per_run`` CPUs each), print each
    finished folder as it lands; 0 if all succeeded, else 1 after listing the failures."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray, which is not installed; install it with "
                        "pip install 'cl_diffusion[ray]' (or pip install 'ray>=2.9')") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if gpus < gpus_per_run:
        raise UserError(f"bad value {gpus_per_run:g} for --gpus-per-run: the Ray cluster has {gpus:g} GPU(s); "
                        "pass --gpus-per-run 0 to run on CPUs")
    task = ray.remote(num_gpus=gpus_per_run, num_cpus=cpus_per_run)(_execute_on_worker)
    pending = {task.remote(spec, str(out.resolve()), cpus_per_run, force): spec for spec in todo}
    print(f"[sweep] submitted {len(pending)} Ray tasks ({gpus_per_run:g} GPU, {cpus_per_run} CPU each)")

    def finished() -> Iterator[tuple[RunSpec, Callable[[], str]]]:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(ref), lambda ref=ref: ray.get(ref)
    return _report(finished(), out)


def run_in_processes(todo: Sequence[RunSpec], out: Path, jobs: int, threads: int | None, force: bool = False) -> int:
    """Run ``jobs`` specs at a time, each in a fresh (spawned) worker process with ``threads`` torch
    threads (default: the CPU cores divided by ``jobs``, at least 1); same result handling as Ray.

    If the driver stops early (Ctrl-C, SIGTERM or SIGUSR1/SIGUSR2, an error) it terminates its
    workers before exiting (status 128 + the signal's number): each gets SIGTERM, so its run stops
    after the current iteration with a fresh checkpoint (:mod:`.preemption`) and no run goes on
    holding its folder's lock; the interrupted runs resume from their checkpoints when the sweep is
    started again. A signal to the whole process group (a cluster's) does the same. (SIGKILL cannot
    be caught: kill the process group instead.)"""
    import os
    from multiprocessing import get_context

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = threads or max(1, cores // jobs)
    print(f"[sweep] {len(todo)} runs, {jobs} at a time, {threads} torch thread(s) each", flush=True)
    args = [(i, spec, str(out.resolve()), threads, force) for i, spec in enumerate(todo)]
    with _sigterm_exits(), get_context("spawn").Pool(jobs) as pool:  # Pool.__exit__ terminates the workers
        done = pool.imap_unordered(_outcome_on_worker, args)
        return _report(((todo[i], lambda r=result: _unwrap(r)) for i, result in done), out)


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """While active (main thread only), SIGTERM and the runs' ``stop_signal`` choices
    (:func:`~cl_diffusion.preemption.every_stop_signal`) raise ``SystemExit(128 + signum)`` instead of
    killing the process outright, so ``with`` blocks, such as a worker pool's, clean up on the way out."""
    import signal
    import threading

    from .preemption import every_stop_signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    previous = {s: signal.signal(s, _exit) for s in every_stop_signal()}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _outcome_on_worker(job: tuple[int, RunSpec, str, int, bool]) -> tuple[int, str | BaseException]:
    """A worker process's task: run one spec; return its index and its folder, or the exception it
    raised (so one failed run reaches :func:`_report` without stopping the pool)."""
    import pickle

    i, spec, out, threads, force = job
    try:
        return i, _execute_on_worker(spec, out, threads, force)
    except Exception as err:
        try:
            pickle.loads(pickle.dumps(err))
        except Exception:  # an exception that cannot cross processes: keep its type name and message
            err = RuntimeError(f"{type(err).__name__}: {err}")
        return i, err


def _unwrap(result: str | BaseException) -> str:
    if isinstance(result, BaseException):
        raise result
    return result


def _report(finished: Iterator[tuple[RunSpec, Callable[[], str]]], out: Path) -> int:
    """For every executor: print each finished run's folder as it lands (``result()`` returns it or
    raises the run's error); a failed run does not stop the others. Returns 0 if all succeeded, else
    1 after listing the failures on stderr. Ctrl-C still stops the sweep (runs resume later)."""
    failures = []
    for spec, result in finished:
        try:
            print(result(), flush=True)
        except RunInUse as err:
            print(f"[sweep] skipped: {err}")
        except Exception as err:  # a failed run must not stop the others
            cause = getattr(err, "cause", None) or err  # Ray wraps the run's exception
            first = (str(cause).strip().splitlines() or [""])[0]
            failures.append(f"{spec.folder(out)}: {type(cause).__name__}: {first}")
    for line in failures:
        print(f"[sweep] failed: {line}", file=sys.stderr)
    return 1 if failures else 0


def _execute_on_worker(spec: RunSpec, out: str, threads: int, force: bool = False) -> str:
    """The body of one Ray task or worker process: :func:`execute` with ``threads`` torch threads; its
    log lines name the run (several runs interleave in the driver's output)."""
    import torch

    from .app import load_plugins

    torch.set_num_threads(max(1, threads))
    load_plugins()
    tag = f"[{spec.variant} seed{spec.seed}]"
    return str(execute(spec, Path(out), log=lambda msg: print(tag, msg, flush=True), force=force))


#: Options the sweep sets itself, by the flag that chooses them: ``--set``/``--grid`` may not.
SWEEP_FLAGS = {"strategy": "--strategies", "benchmark": "--benchmark", "profile": "--profile", "seed": "--seeds",
               "out": "--out"}


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2`` strings -> ``(key, [values])``; UserError for a missing ``=``, no values, a
    repeated key or a repeated value."""
    grid: list[tuple[str, list[str]]] = []
    for key, value in parse_sets(items, flag="--grid", expected="KEY=V1,V2,..."):
        values = [v.strip() for v in value.split(",") if v.strip()]
        if not values:
            raise UserError(f"bad --grid {key}={value!r}: expected KEY=V1,V2,...")
        if key in (k for k, _ in grid):
            raise UserError(f"bad --grid {key}={value}: {key} is already a --grid key; list all its values in one "
                            f"--grid {key}=V1,V2,...")
        _no_repeats(f"--grid {key}", values)
        grid.append((key, values))
    return grid


def parse_list(flag: str, raw: str, what: str) -> list[str]:
    """A comma-separated flag value -> its items; UserError when it is empty or repeats one."""
    items = [s.strip() for s in raw.split(",") if s.strip()]
    if not items:
        raise UserError(f"bad {flag} {raw!r}: expected comma-separated {what}")
    _no_repeats(flag, items)
    return items


def parse_seeds(raw: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2]; UserError naming the bad item and the valid range."""
    seeds = []
    for item in parse_list("--seeds", raw, "integer seeds >= 0"):
        try:
            seed = int(item)
        except ValueError:
            seed = -1
        if seed < 0:
            raise UserError(f"bad value {item!r} in --seeds {raw!r}: seeds are integers >= 0")
        seeds.append(seed)
    return seeds


def _no_repeats(flag: str, items: Sequence[str]) -> None:
    repeated = sorted({i for i in items if items.count(i) > 1})
    if repeated:
        raise UserError(f"bad {flag}: {', '.join(repeated)} is given twice (each run would repeat another)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cl_diffusion.sweep", description="run a grid of runs into results/")
    add_flags(p, RunConfig, ["benchmark"], show_default=False, required=True)
    p.add_argument("--strategies", required=True, help="comma-separated strategy names")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    add_flags(p, RunConfig, ["profile"], defaults={"profile": "quick"})
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    p.add_argument("--out", default="results", help="results folder (default results/)")
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local (sequential, this process) | ray (one Ray task per run)")
    p.add_argument("--address", help="ray: the cluster address (default $RAY_ADDRESS or a running local "
                                     "instance; 'local' starts a new one)")
    p.add_argument("--gpus-per-run", type=float, default=1.0, help="ray: GPUs each run asks for (default 1; "
                                                                  "0 on a CPU-only cluster)")
    p.add_argument("--cpus-per-run", type=int, default=1, help="ray: CPUs each run asks for and its torch "
                                                               "threads (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="local: runs at a time, each in its own process "
                                                        "(default 1: one after another, in this process)")
    p.add_argument("--threads", type=int, help="local: torch threads per run (default: torch's own with "
                                               "--jobs 1, else the CPU cores divided by --jobs)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and whether they are complete")
    p.add_argument("--force", action="store_true", help="start runs whose memory estimate exceeds what is available")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    specs = checked_specs(args)
    out = Path(args.out)
    todo = [s for s in specs if not is_complete(s.folder(out))]
    print(f"[sweep] {len(specs)} runs, {len(specs) - len(todo)} complete, {len(todo)} to do")
    if args.dry_run:
        for spec in todo:
            print(f"  todo: {spec.folder(out)}  ({spec.command()})")
        return 0
    if args.executor == "ray":
        return run_on_ray(todo, out, args.address, args.gpus_per_run, args.cpus_per_run, args.force)
    if args.jobs > 1:
        return run_in_processes(todo, out, args.jobs, args.threads, args.force)

    def one_by_one() -> Iterator[tuple[RunSpec, Callable[[], str]]]:
        for i, spec in enumerate(todo, 1):
            print(f"[sweep] {i}/{len(todo)}: {spec.command()}")
            yield spec, lambda spec=spec: str(execute(spec, out, force=args.force))
    return _report(one_by_one(), out)


def checked_specs(args: argparse.Namespace) -> list[RunSpec]:
    """Every run of the grid, each checked in full (:mod:`.preflight`) before the first starts;
    what needs no torch is checked before it is imported."""
    from .preflight import check_out_dir, early_checks

    for flag, value, least in (("--jobs", args.jobs, 1), ("--threads", args.threads, 1),
                               ("--cpus-per-run", args.cpus_per_run, 1), ("--gpus-per-run", args.gpus_per_run, 0)):
        if value is not None and (value < least or value != value):
            kind = "an integer" if isinstance(value, int) else "a number"
            raise UserError(f"bad value {value} for {flag}: expected {kind} >= {least}")
    seeds = parse_seeds(args.seeds)
    strategies = parse_list("--strategies", args.strategies, "strategy names (see python -m cl_diffusion.run --list)")
    sets, grid = parse_sets(args.set), parse_grid(args.grid)
    for flag, keys in (("--set", [k for k, _ in sets]), ("--grid", [k for k, _ in grid])):
        for key in keys:
            if key in SWEEP_FLAGS:
                raise UserError(f"bad {flag} {key}: the sweep sets {key} from {SWEEP_FLAGS[key]}")
    check_out_dir(args.out, "--out")
    for strategy in strategies:
        early_checks(strategy, args.profile, [*sets, *((k, v) for k, vs in grid for v in vs)], {"out": args.out},
                     SWEEP_FLAGS)
    specs = expand(args.benchmark, strategies, seeds, args.profile, sets, grid)
    _check_every_run(specs, Path(args.out), args)
    return specs


def _check_every_run(specs: Sequence[RunSpec], out: Path, args: argparse.Namespace) -> None:
    """Resolve and check each run's config (memory against a ``--jobs`` share of the device's),
    after each ``--grid`` value alone, so that an error names the flag it came from."""
    import copy

    import torch

    from .app import load_plugins, resolve_device
    from .preflight import check_run
    from .profiles import resolve_config

    load_plugins()
    if args.threads is not None:
        set_threads(args.threads)  # with --jobs > 1 the workers set their own
    for strategy in dict.fromkeys(spec.strategy for spec in specs):
        base = resolve_config(strategy, args.benchmark, args.profile, parse_sets(args.set))
        for key, values in parse_grid(args.grid):
            for value in values:
                try:
                    copy.deepcopy(base).set(key, value)
                except UserError as err:
                    raise UserError(f"--grid {key}: {err}") from None
    for spec in specs:
        cfg = resolve_config(spec.strategy, spec.benchmark, spec.profile, [*spec.sets, *spec.grid], seed=spec.seed,
                             out=str(spec.folder(out).parent))
        local = args.executor == "local"  # Ray runs on its workers' devices: no memory check here
        device = resolve_device(cfg.run.device) if local else torch.device("cpu")
        check_run(cfg, device, force=args.force or not local, share=args.jobs if local else 1)


if __name__ == "__main__":
    sys.exit(main())
