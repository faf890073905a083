"""The run configuration: every option of a run, in one place, round-tripping to JSON.

A :class:`Config` has three sections, each a dataclass of options declared with
:func:`~cl_diffusion.options.opt`:

- ``run``: :class:`RunConfig`, the core (data, model, diffusion, training, I/O);
- ``eval``: :class:`~cl_diffusion.evaluation.config.EvalConfig`;
- ``strategy_params``: the chosen strategy's own ``Params`` dataclass.

Option keys are unique across the three sections, so ``--set key=value`` needs no prefix.
Field defaults are the paper's Fashion-MNIST protocol; a benchmark's ``paper`` overrides and a
profile's overrides are applied on top by :func:`cl_diffusion.profiles.resolve_config`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import options
from .errors import UserError, did_you_mean
from .evaluation.config import EvalConfig


@dataclass
class RunConfig:
    """Core options of one run. Defaults follow Masip et al. (2024) on Fashion-MNIST."""

    # --- what to run -------------------------------------------------------------------------
    strategy: str = options.opt("finetune", "continual-learning strategy (see --list)")
    benchmark: str = options.opt("fmnist-5", "task stream (see --list)")
    profile: str = options.opt("paper", "scale profile", choices="cl_diffusion.profiles:PROFILES",
                                protocol=False)
    seed: int = options.opt(0, "global seed: data order, noise, timesteps, evaluation noise", min=0,
                                protocol=False)
    device: str = options.opt("auto", "compute device", choices=("auto", "cpu", "cuda"), protocol=False,
                                how=True)
    out: str = options.opt("runs", "parent folder; each run gets a new sub-folder in it", protocol=False)
    data_root: str = options.opt("", "dataset folder; '' = env CL_DIFFUSION_DATA, system folders, download",
                                   protocol=False, how=True)
    class_order: str = options.opt("fixed", "'fixed' = (0,1),(2,3),...; 'seeded' = Avalanche's seed-shuffled order",
                                   choices=("fixed", "seeded"))
    train_subset: int = options.opt(0, "keep at most this many training images per class; 0 = all", min=0)
    test_subset: int = options.opt(0, "keep at most this many test images per class (evaluation); 0 = all", min=0)
    n_tasks: int = options.opt(0, "number of tasks for the folder stream; 0 = the benchmark's default (5)", min=0)
    # --- model ---------------------------------------------------------------------------------
    model: str = options.opt("paper-fmnist", "network preset (see --list)")
    image_size: int = options.opt(32, "side of the square images fed to the model, in pixels", min=4)
    # --- diffusion (paper: linear schedule rescaled to zero terminal SNR, trailing, clip, eta 0) ---
    num_timesteps: int = options.opt(1000, "diffusion steps T", min=2)
    schedule: str = options.opt("linear", "beta schedule", choices="cl_diffusion.diffusion.schedule:SCHEDULES")
    beta_start: float = options.opt(1e-4, "linear schedule beta_1", min=0.0, min_exclusive=True, max=1.0)
    beta_end: float = options.opt(0.02, "linear schedule beta_T", min=0.0, min_exclusive=True, max=1.0)
    zero_terminal_snr: bool = options.opt(True, "rescale betas to zero terminal SNR (Lin et al. 2023, Alg. 1)")
    spacing: str = options.opt("trailing", "DDIM timestep spacing",
                                choices="cl_diffusion.diffusion.samplers:SPACINGS")
    clip_x0: bool = options.opt(True, "clip x0_pred to [-1, 1] in DDIM steps")
    eta: float = options.opt(0.0, "DDIM eta (0 = deterministic)", min=0.0, max=1.0)
    # --- training ------------------------------------------------------------------------------
    epochs: int = options.opt(100, "epochs per task (each benchmark's paper value: --list)", min=1)
    iters_per_task: int = options.opt(0, "cap on iterations per task; 0 = run all epochs", min=0)
    batch_size: int = options.opt(128, "images per training batch B (each benchmark's paper value: --list)", min=1)
    lr: float = options.opt(2e-4, "Adam learning rate", min=0.0, min_exclusive=True)
    grad_clip: float = options.opt(1.0, "gradient-norm clip; 0 = off", min=0.0)
    reset_optimizer: bool = options.opt(True, "reset Adam state at each task boundary (as the paper's code)")
    nan_policy: str = options.opt("stop", "on a NaN/inf loss: 'stop' the run or 'skip' the batch",
                                  choices=("stop", "skip"))
    # --- execution (cl_diffusion.execution: same results within a tested tolerance) -----------
    memory_format: str = options.opt("auto", "conv memory format; auto = channels_last",
                                     choices=("auto", "channels_last", "contiguous"), how=True)
    precision: str = options.opt("auto", "network precision; auto = bf16 autocast on a CUDA GPU with native bf16, else fp32",
                                 choices=("auto", "fp32", "bf16"), how=True)
    compile: str = options.opt("auto", "torch.compile the eps-networks; auto = on for CUDA, off for CPU",
                               choices=("auto", "on", "off"), how=True)
    # --- outputs -------------------------------------------------------------------------------
    grid_samples: int = options.opt(64, "samples in the PNG grid written after each task", min=1)
    checkpoint_every: int = options.opt(0, "also checkpoint every K iterations; 0 = only at task ends", min=0,
                                        protocol=False)
    checkpoint_minutes: float = options.opt(10.0, "also checkpoint when this many minutes of wall clock have passed "
                                            "since the last checkpoint (bounds what a SIGKILL loses); 0 = off",
                                            min=0.0, protocol=False)
    stop_signal: str = options.opt("SIGUSR1", "a signal that, like SIGTERM, stops the run after the current iteration "
                                   "with a checkpoint (exit 128 + its number); none = SIGTERM alone",
                                   choices=("none", "SIGUSR1", "SIGUSR2"), protocol=False)
    progress: bool = options.opt(True, "show tqdm progress bars", protocol=False, how=True)


SECTIONS = ("run", "eval", "strategy_params")


@dataclass
class Config:
    """A whole resolved configuration: core, evaluator and strategy options."""

    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    strategy_params: Any = None  # an instance of the strategy's ``Params`` dataclass

    def sections(self) -> list[Any]:
        return [s for s in (self.run, self.eval, self.strategy_params) if s is not None]

    def set(self, key: str, raw: Any) -> None:
        """Apply ``key=raw`` to whichever section owns ``key``; unknown keys raise UserError."""
        for section in self.sections():
            if options.set_option(section, key, raw):
                return
        raise UserError(f"unknown option {key!r}; valid options: {', '.join(sorted(self.keys()))}"
                        f"{did_you_mean(key, self.keys())}")

    def get(self, key: str) -> Any:
        for section in self.sections():
            for f in options.option_fields(section):
                if options.key_of(f) == key:
                    return getattr(section, f.name)
        raise KeyError(key)

    def keys(self) -> list[str]:
        return [k for s in self.sections() for k in options.option_keys(s)]

    def validate(self) -> None:
        """Check every option against its own choices and bounds, then the combinations: bounds
        that name another option (``max="num_timesteps"``) and each section's optional ``check``
        method (a strategy's ``Params`` declares its own rules there), called as ``check()`` or,
        when it takes an argument, ``check(cfg)``. UserError on the first bad value."""
        for s in self.sections():
            options.validate(s)
        for s in self.sections():
            for f in options.option_fields(s):
                bound_key = options.linked_max(f)
                if bound_key is not None:
                    options.check_linked(f, getattr(s, f.name), bound_key, self.get(bound_key))
        for s in self.sections():
            check = getattr(s, "check", None)
            if callable(check):
                check(self) if _n_args(check) else check()

    def to_dict(self) -> dict[str, Any]:
        d = options.to_dict(self.run)
        d["eval"] = options.to_dict(self.eval)
        d["strategy_params"] = options.to_dict(self.strategy_params) if self.strategy_params is not None else {}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], params_cls: type | None = None) -> "Config":
        data = dict(data)
        ev = data.pop("eval", {})
        sp = data.pop("strategy_params", {})
        data.pop("meta", None)
        run = options.from_dict(RunConfig, data, where="run config")
        params = options.from_dict(params_cls, sp, where="strategy") if params_cls is not None else None
        return cls(run=run, eval=options.from_dict(EvalConfig, ev, where="eval"), strategy_params=params)

    def diff(self, other: "Config") -> dict[str, tuple[Any, Any]]:
        """Options whose values differ: key -> (self value, other value)."""
        mine, theirs = _flat(self), _flat(other)
        return {k: (mine[k], theirs.get(k)) for k in mine if mine[k] != theirs.get(k)}


def _n_args(method: Any) -> int:
    """Positional parameters of a bound method (0 for ``check(self)``, 1 for ``check(self, cfg)``)."""
    import inspect

    return len(inspect.signature(method).parameters)


def _flat(cfg: Config) -> dict[str, Any]:
    return {options.key_of(f): getattr(s, f.name) for s in cfg.sections() for f in options.option_fields(s)}
