"""Scale profiles and config resolution.

``paper`` follows the paper's protocol exactly (the field defaults plus each benchmark's
``paper`` overrides). ``quick`` and ``smoke`` scale it down for 2 CPU cores; every run prints
how its resolved config differs from the paper's (:func:`paper_diff`).

Resolution order: field defaults (the strategy's in its ``Params``) -> benchmark ``paper``
overrides -> profile overrides -> the benchmark's overrides for that profile
(``BenchmarkSpec.profiles``) -> ``--set`` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .config import Config, RunConfig
from .options import keys_where
from .errors import UserError
from .evaluation.config import EvalConfig
from .registry import Registry


@dataclass(frozen=True)
class Profile:
    """A named set of option overrides applied on top of the paper protocol."""

    name: str
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


PROFILES: Registry[Profile] = Registry("profile")

PROFILES.add("paper", Profile("paper", "the paper's protocol (Masip et al. 2024): GPU-scale"))
PROFILES.add("quick", Profile(
    "quick",
    "CPU-scale, for 2 CPU cores: a small UNet, short training, fewer evaluation samples",
    {
        "image_size": 16, "model": "small", "iters_per_task": 600, "batch_size": 64, "grid_samples": 64,
        "eval_samples": 1000, "eval_batch_size": 250, "classifier": "cnn",
        "solver_iters_per_task": 150, "solver_batch_size": 64, "solver_replay_pool": 1000,
    },
))
PROFILES.add("smoke", Profile(
    "smoke",
    "test-scale: a tiny UNet, a few iterations on a data subset; checks the plumbing only, the numbers mean nothing",
    {
        "image_size": 16, "model": "tiny", "iters_per_task": 4, "batch_size": 16, "train_subset": 64,
        "test_subset": 100,
        "grid_samples": 16, "num_timesteps": 1000, "progress": False,
        "eval_samples": 32, "eval_batch_size": 32, "eval_steps": 2, "classifier": "cnn",
        "solver_epochs": 1, "solver_iters_per_task": 3, "solver_batch_size": 16,
    },
))


def _apply(cfg: Config, overrides: Mapping[str, Any] | Iterable[tuple[str, Any]], source: str) -> None:
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for key, value in items:
        try:
            cfg.set(key, value)
        except UserError as err:
            raise UserError(f"{source}: {err}") from None


def resolve_config(strategy: str, benchmark: str, profile: str = "paper",
                   sets: Iterable[tuple[str, str]] = (), **run_fields: Any) -> Config:
    """Build the fully resolved :class:`Config` of a run.

    Args:
        strategy, benchmark, profile: registered names (UserError on unknown names).
        sets: ``(key, raw value)`` pairs from ``--set``, applied last.
        run_fields: further :class:`RunConfig` options (seed, device, out, data_root ...).
    """
    from .strategy import STRATEGIES  # late import: strategies import the core
    from .models import MODELS
    from .stream import BENCHMARKS

    strategy_cls = STRATEGIES.get(strategy)
    spec = BENCHMARKS.get(benchmark)
    prof = PROFILES.get(profile)
    cfg = Config(run=RunConfig(), eval=EvalConfig(), strategy_params=strategy_cls.Params())
    _apply(cfg, {"strategy": strategy, "benchmark": benchmark, "profile": profile}, "run")
    _apply(cfg, spec.paper, f"benchmark {benchmark}")
    _apply(cfg, prof.overrides, f"profile {profile}")
    _apply(cfg, spec.profiles.get(profile, {}), f"benchmark {benchmark} at profile {profile}")
    _apply(cfg, {k: v for k, v in run_fields.items() if v is not None}, "option")
    _apply(cfg, list(sets), "--set")
    cfg.validate()
    MODELS.get(cfg.run.model)  # unknown preset -> UserError listing the presets
    return cfg


def paper_diff(cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Options where ``cfg`` departs from the paper protocol: key -> (value, paper value).

    Options declared ``protocol=False`` (bookkeeping: seed, device, paths, logging) are left out.
    """
    paper = resolve_config(cfg.run.strategy, cfg.run.benchmark, "paper")
    skip = {k for section in cfg.sections() for k in keys_where(section, "protocol", False)}
    return {k: v for k, v in cfg.diff(paper).items() if k not in skip}


def describe_profile(cfg: Config) -> str:
    """One paragraph for stdout: the profile and how the run differs from the paper."""
    prof = PROFILES.get(cfg.run.profile)
    diff = paper_diff(cfg)
    if not diff:
        return f"profile {prof.name}: {prof.description}; follows the paper's protocol exactly"
    parts = ", ".join(f"{k}={v!r} (paper {p!r})" for k, (v, p) in sorted(diff.items()))
    return f"profile {prof.name}: {prof.description}\n  differs from the paper's protocol in: {parts}"
