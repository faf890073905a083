"""Assembling a run from its config: data, model, schedule, strategy, evaluator, trainer.

Used by the CLI (:mod:`cl_diffusion.run`), the sweep runner and the tests, so that every entry
point builds runs the same way.
"""
from __future__ import annotations

import argparse
import fcntl
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from . import distributed
from .config import Config
from .errors import UserError
from .io import atomic_write_json, git_commit, new_run_dir, provenance
from .run import run_fields
from .profiles import PROFILES, describe_profile, resolve_config


def load_plugins() -> None:
    """Register the bundled strategies and benchmarks (entry-point plugins load lazily)."""
    import cl_diffusion.benchmarks  # noqa: F401
    import cl_diffusion.strategies  # noqa: F401


def resolve_device(name: str) -> torch.device:
    """The run's device; under torchrun this also joins the process group (``cuda:LOCAL_RANK`` per rank)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("bad value 'cuda' for device: no CUDA device is available; valid choices here: auto, cpu")
    return distributed.setup(torch.device(name))


def rank_log(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on rank 0, silence on the other data-parallel ranks."""
    return log if distributed.is_main() else (lambda *_: None)


@dataclass
class Components:
    """Everything a run needs, built from one Config."""

    cfg: Config
    device: torch.device
    stream: Any
    model: torch.nn.Module
    schedule: Any
    strategy: Any
    evaluator: Any
    execution: Any  # cl_diffusion.execution.Execution resolved for ``device``


def build_components(cfg: Config, run_dir: Path, log: Callable[[str], None] = print) -> Components:
    """Build data, model, schedule, strategy and evaluator; UserError on incompatible settings."""
    from .diffusion import NoiseSchedule
    from .evaluation.evaluator import Evaluator
    from .execution import Execution
    from .models import build_model
    from .seeding import INIT, TRAIN, derive_seed
    from .strategy import STRATEGIES
    from .stream import BENCHMARKS

    run = cfg.run
    device = resolve_device(run.device)
    stream = BENCHMARKS.get(run.benchmark).build(run)
    if run.batch_size > stream.min_task_train_size:
        raise UserError(f"bad value {run.batch_size} for batch_size: larger than the smallest task's training "
                        f"set ({stream.min_task_train_size} images); choose batch_size <= {stream.min_task_train_size}")
    torch.manual_seed(derive_seed(run.seed, INIT))
    execution = Execution.resolve(run, device)
    model = execution.prepare(build_model(run.model, stream.channels, run.image_size).to(device))
    schedule = NoiseSchedule.from_config(run).to(device)
    rank = distributed.rank()  # rank 0 draws exactly what a single process draws; the others their own
    if rank > 0:
        torch.manual_seed(derive_seed(run.seed, INIT, rank))
    rng = torch.Generator(device=device).manual_seed(derive_seed(run.seed, TRAIN, *([rank] if rank else [])))
    strategy = STRATEGIES.get(run.strategy)(model, schedule, cfg, rng, device, execution)
    evaluator = Evaluator(cfg, stream, schedule, device, run_dir, execution)
    return Components(cfg, device, stream, model, schedule, strategy, evaluator, execution)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory, so two runs never write into one (rank 0 holds it
    for all the ranks of a data-parallel run)."""
    if not distributed.is_main():
        yield
        return
    with open(run_dir / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run directory {run_dir} is in use by another process") from None
        yield


def start_run(args: argparse.Namespace, sets: list[tuple[str, str]], log: Callable[[str], None] = print) -> Path | None:
    """CLI entry: resolve the config from parsed arguments and run it (or print it with --dry-run)."""
    if not args.strategy or not args.benchmark:
        raise UserError("--strategy and --benchmark are required (see --list for the choices)")
    cfg = resolve_config(args.strategy, args.benchmark, args.profile or "paper", sets, **run_fields(args))
    force = getattr(args, "force", False)
    if args.dry_run:
        from . import preflight

        plan = preflight.check_run(cfg, resolve_device(cfg.run.device), force=force)
        log(describe_profile(cfg))
        for line in preflight.cost_lines(plan):
            log(line)
        log(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return None
    return run_config(cfg, log, force=force)


def run_experiment(strategy: str, benchmark: str, profile: str = "paper", sets: Iterable[tuple[str, str]] = (),
                   log: Callable[[str], None] = print, **run_fields: Any) -> Path:
    """Programmatic entry: ``run_experiment("gd", "fmnist-5", "smoke", out="runs")`` -> run directory."""
    return run_config(resolve_config(strategy, benchmark, profile, sets, **run_fields), log)


def run_config(cfg: Config, log: Callable[[str], None] = print, run_dir: Path | None = None,
               force: bool = False) -> Path:
    """Train and evaluate a resolved config in a fresh run directory (``run_dir`` must not exist;
    by default a new one is made under ``cfg.run.out``). Every check of :mod:`.preflight` runs
    first (``force``: run even where the memory estimate exceeds what is available), and the
    run's cost is printed before training. Writes config.json first. Under torchrun, rank 0 makes
    the directory and writes the files; every rank trains."""
    from . import preflight

    device = resolve_device(cfg.run.device)  # joins the torchrun process group, if any, before rank 0 decides
    log = rank_log(log)
    if run_dir is not None:
        preflight.check_new_dir(run_dir, "run directory")
    plan = preflight.check_run(cfg, device, force=force, out=run_dir.parent if run_dir is not None else None)
    log(describe_profile(cfg))
    if distributed.is_main():
        run_dir = _make_run_dir(cfg, run_dir)
    run_dir = distributed.broadcast_path(run_dir)
    try:
        comps = build_components(cfg, run_dir, log)
        plan = preflight.check_stream(plan, comps.stream)  # the memory check, where the data's size was unknown
    except BaseException:
        if distributed.is_main():
            _remove_if_empty(run_dir)
        raise
    if distributed.is_main():
        meta = provenance(str(comps.device))
        meta["execution"] = comps.execution.describe()
        if distributed.world_size() > 1:
            meta["world_size"] = distributed.world_size()
        atomic_write_json(run_dir / "config.json", dict(cfg.to_dict(), meta=meta))
        for line in preflight.cost_lines(plan):
            log(line)
    log(f"run directory: {run_dir}")
    return _train(comps, run_dir, log, resume=False)


def _make_run_dir(cfg: Config, run_dir: Path | None) -> Path:
    run = cfg.run
    if run_dir is None:
        return new_run_dir(Path(run.out), f"{run.benchmark}_{run.strategy}_s{run.seed}")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir()  # exclusive: never reuse a folder
    return run_dir


def _remove_if_empty(run_dir: Path) -> None:
    for p in run_dir.iterdir():
        if p.name != ".lock":
            return
    for p in run_dir.iterdir():
        p.unlink()
    run_dir.rmdir()


def _train(comps: Components, run_dir: Path, log: Callable[[str], None], resume: bool) -> Path:
    from .trainer import Trainer

    with run_lock(run_dir):
        trainer = Trainer(comps.cfg, run_dir, comps.device, comps.stream, comps.strategy, comps.evaluator,
                          comps.execution, log)
        if resume:
            path = trainer.restore(warn=log)
            log(f"resumed from {path}: task {trainer.pos.task + 1}, phase {trainer.pos.phase}, "
                f"iteration {trainer.pos.iters}")
        trainer.run()
    return run_dir


def load_run_config(run_dir: Path, need_ckpt: bool = True) -> tuple[Config, dict[str, Any]]:
    """The Config and provenance (``meta``) stored in a run directory's config.json; with
    ``need_ckpt`` (to resume) the directory must also hold ``ckpt/``."""
    from .strategy import STRATEGIES

    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file() or (need_ckpt and not (run_dir / "ckpt").is_dir()):
        needs = "config.json and ckpt/" if need_ckpt else "config.json"
        raise UserError(f"{run_dir} is not a run directory (expected {needs} in it)")
    try:
        data = json.loads(cfg_path.read_text())
    except ValueError as err:
        raise UserError(f"{cfg_path} is not valid JSON ({err})") from None
    return Config.from_dict(data, STRATEGIES.get(data.get("strategy", "")).Params), data.get("meta", {})


def resume_run(run_dir: Path, args: argparse.Namespace, sets: list[tuple[str, str]], force: bool,
               log: Callable[[str], None] = print) -> Path:
    """CLI ``--resume``: continue a killed run; refuse a different commit or config unless ``force``."""
    cfg, meta = load_run_config(run_dir)
    changed = [f"{k}={v}" for k, v in run_fields(args).items() if v is not None and str(v) != str(cfg.get(k))]
    changed += [f"{k}={v}" for k, v in sets if k not in cfg.keys() or str(cfg.get(k)) != v]
    for flag in ("strategy", "benchmark", "profile"):
        if getattr(args, flag) and getattr(args, flag) != cfg.get(flag):
            changed.append(f"{flag}={getattr(args, flag)}")
    now = git_commit()
    if changed and not force:
        raise UserError(f"--resume {run_dir}: these options differ from the run's config: {', '.join(changed)}; "
                        "add --force to resume anyway")
    if meta.get("git_commit") not in (None, now) and not force:
        raise UserError(f"--resume {run_dir}: the run was made by commit {meta.get('git_commit')} but the code is "
                        f"at {now}; add --force to resume anyway")
    for key, value in sets:
        cfg.set(key, value)
    return resume_folder(run_dir, cfg, log)


def resume_folder(run_dir: Path, cfg: Config | None = None, log: Callable[[str], None] = print) -> Path:
    """Continue the run in ``run_dir`` from its newest good checkpoint."""
    if cfg is None:
        cfg, _ = load_run_config(run_dir)
    resolve_device(cfg.run.device)  # joins the torchrun process group, if any
    log = rank_log(log)
    comps = build_components(cfg, run_dir, log)
    return _train(comps, run_dir, log, resume=True)


def print_list(out: Callable[[str], None] = print) -> None:
    """``--list``: strategies, benchmarks, model presets (with parameter counts), profiles, options."""
    from .config import RunConfig
    from .evaluation.classifier import CLASSIFIERS
    from .evaluation.config import EvalConfig
    from .models import describe_models
    from .options import describe
    from .strategy import STRATEGIES
    from .stream import BENCHMARKS

    out("strategies:")
    for name, cls in STRATEGIES.items():
        params = ", ".join(f"{k}={v}" for k, v, _ in describe(cls.Params()))
        out(f"  {name:<12} {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}"
            + (f"  [{params}]" if params else ""))

    def settings(values: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in values.items())

    out("benchmarks:")
    for name, spec in BENCHMARKS.items():
        out(f"  {name:<12} {spec.description}"
            + (f"\n{'':15}paper protocol: {settings(spec.paper)}" if spec.paper else ""))
    out("models:")
    for name, n_params, desc in describe_models():
        out(f"  {name:<14} {n_params:>12,d} params  {desc}")
    out("profiles:")
    for name, prof in PROFILES.items():
        out(f"  {name:<6} {prof.description}" + (f"\n{'':9}{settings(prof.overrides)}" if prof.overrides else ""))
    out("evaluation classifiers (clf_* options of 0 take the preset's recipe):")
    for name, preset in CLASSIFIERS.items():
        recipe = {**asdict(preset.recipe), "iters": preset.recipe.iters or "all"}
        out(f"  {name:<9} {settings(recipe)}" + (", ImageNet init when cached" if preset.imagenet else ""))
    out("options (--set KEY=VALUE):")
    for section in (RunConfig(), EvalConfig()):
        for key, value, help_ in describe(section):
            out(f"  {key:<22} {value!r:<14} {help_}")
