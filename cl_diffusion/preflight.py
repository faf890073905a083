"""Preflight: a run is checked in full before it spends any compute, and says what it will cost.

Every command (``run``, ``sweep``, ``reevaluate``, ``bench``) calls these checks on the resolved
config before it loads data, builds a network on the device or makes a folder; a bad input is one
:class:`~cl_diffusion.errors.UserError` line and exit status 2.

- :func:`early_checks`: what can be refused before torch is imported (whose import is most of
  a failing command's start-up): the strategy name, the profile, the run and evaluation options,
  the paths.
- :func:`check_run`: the rest, on the resolved :class:`~cl_diffusion.config.Config`: the benchmark's
  task count, the model preset against the image size and channels, the batch size against the
  smallest task, the data and Inception paths, and the memory the run needs (:func:`memory_parts`)
  against what the device has, unless ``force``.
- :func:`cost_lines`: the FLOPs of the whole protocol (:func:`image_passes` x the network's FLOPs
  per image), the time they take on this device (:func:`calibrate`, a few seconds of real training
  steps and forwards) and, on a CPU, the profile that fits in a few hours.

The strategy-dependent counts come from the strategy class, looked up by name with a default:
:class:`cl_diffusion.strategy.Strategy`'s cost classmethods.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import UserError, choice_error

if TYPE_CHECKING:
    import torch

    from .config import Config

CALIBRATION_SECONDS = 3.0  # wall time spent timing real steps for the time estimate
CALIBRATE_ABOVE_FLOP = 1e12  # smaller runs take seconds to a few minutes anywhere: not worth timing
SUGGEST_ABOVE_SECONDS = 3 * 3600  # on a CPU, a run longer than this names a profile that fits
RESERVE = 0.9  # share of the available memory a run may plan to use
CALIBRATION_MEMORY = 0.25  # share of the available memory the calibration's batches may use
#: Peak training memory over the tensors saved for backward: the backward pass's gradients and
#: temporaries (a CPU step's peak RSS was 1.3x to 1.7x the saved bytes plus the weights).
BACKWARD_TRANSIENTS = 1.75
#: Peak of a no-grad forward (evaluation sampling) per image over the bytes a training forward
#: saves per image: 0.2 to 0.45 measured for the UNet presets (CPU peak RSS).
SAMPLING_SHARE = 0.5


# ------------------------------------------------------------------------------------------------
# Before torch: names, options, paths
# ------------------------------------------------------------------------------------------------
#: Options that a flag chooses and ``--set`` may not: option key -> the flag.
FLAG_OPTIONS = {"strategy": "--strategy", "benchmark": "--benchmark", "profile": "--profile"}


def early_checks(strategy: str | None, profile: str | None, sets: Sequence[tuple[str, str]],
                 run_fields: dict[str, Any], flags: dict[str, str] = FLAG_OPTIONS) -> None:
    """Refuse what needs no torch: an unknown strategy (when every registration is a literal name,
    read from the source files), an unknown profile, a ``--set`` of an option a flag chooses
    (``flags``), a bad run or evaluation option, a bad path."""
    from .config import Config
    from .profiles import PROFILES

    for key, value in sets:
        if key in flags:
            raise UserError(f"bad --set {key}={value}: {key} is chosen with {flags[key]}, not --set")
    # the bundled strategies' package, registry and entry-point group (cl_diffusion/strategy.py);
    # tests/test_preflight.py checks that these names agree with STRATEGIES.names()
    names = static_names("cl_diffusion.strategies", "STRATEGIES", "cl_diffusion.strategies")
    if strategy and names is not None and strategy not in names:
        raise choice_error("strategy", strategy, names)
    if profile:
        PROFILES.get(profile)
    cfg = Config()  # the run and evaluation sections only: strategy options are checked later
    for key, value in [*((k, v) for k, v in run_fields.items() if v is not None), *sets]:
        if key in cfg.keys():
            cfg.set(key, value)
    for s in cfg.sections():
        check = getattr(s, "check", None)
        if callable(check):
            check()
    check_paths(cfg.run.out, cfg.run.data_root)


def static_names(package: str, registry: str, entry_point_group: str | None = None) -> list[str] | None:
    """The names registered in ``package``'s modules, read from the source without importing it:
    the literal first argument of every ``.register(...)`` and ``.add(...)`` call (a superset, so a
    name missing from it is not registered); None when ``<registry>.register``/``.add`` is called
    with a name that is not a literal, or an installed plugin may register more. The registry
    stays the one declaration: tests/test_preflight.py checks that the two agree."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    if entry_point_group is not None:
        from importlib.metadata import entry_points

        if entry_points(group=entry_point_group):
            return None
    names: list[str] = []
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("register", "add")):
                    continue
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.append(first.value)
                elif node.func.attr == "register" or getattr(node.func.value, "id", None) == registry:
                    return None
    return sorted(set(names))


def check_paths(out: str, data_root: str) -> None:
    """``out`` is (or can be made) a writable folder; a ``data_root``, if given, is a folder."""
    check_out_dir(out, "out")
    if data_root and not Path(data_root).expanduser().is_dir():
        what = "a file, not a folder" if Path(data_root).expanduser().exists() else "no such folder"
        raise UserError(f"bad value {data_root!r} for data_root: {what}; give the folder that holds the dataset, "
                        "or leave it empty to search the usual places")


def check_out_dir(path: str | os.PathLike, option: str) -> None:
    """``path`` is a writable folder or can be made as one; UserError naming ``option`` if not."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"bad value {str(path)!r} for {option}: it is a file, not a folder; choose a folder "
                        "(it is made if missing)")
    base = p
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise UserError(f"bad value {str(path)!r} for {option}: {base} is a file, so no folder can be made in it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"bad value {str(path)!r} for {option}: {base} is not writable; choose a folder you can "
                        "write to")


def check_new_dir(path: str | os.PathLike, option: str) -> None:
    """``path`` does not exist yet and can be made as a folder."""
    if Path(path).expanduser().exists():
        raise UserError(f"bad value {str(path)!r} for {option}: it exists; choose a new folder (results are "
                        "never overwritten)")
    check_out_dir(path, option)


# ------------------------------------------------------------------------------------------------
# The resolved config: data shape, model, memory
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataShape:
    """The run's data as far as it is known before loading it (None: known only after loading)."""

    channels: int | None
    task_train: tuple[int, ...] | None  # training images per task
    images: int | None  # training + test images kept in memory


def data_shape(cfg: "Config") -> DataShape:
    """Channels, task sizes and image count of the run's benchmark, from its registration; UserError
    for a task count the benchmark cannot split its classes into."""
    from .data import DATASETS
    from .stream import BENCHMARKS, task_classes

    run = cfg.run
    spec = BENCHMARKS.get(run.benchmark)
    n_tasks = spec.task_count(run)
    info = DATASETS.get(spec.dataset)
    if info is None:
        return DataShape(None, None, None)
    classes = len(info.class_names)
    task_classes("fixed", classes, n_tasks, run.seed)  # UserError naming the valid task counts
    per_class = info.split_per_class
    if per_class is None:
        return DataShape(info.channels, None, None)
    train, test = (min(n, keep) if keep else n for n, keep in zip(per_class, (run.train_subset, run.test_subset)))
    return DataShape(info.channels, (train * classes // n_tasks,) * n_tasks, classes * (train + test))


@dataclass(frozen=True)
class Footprint:
    """The network at the run's image size, per image: from one trace on the ``meta`` device."""

    params: int
    flops_forward: int  # FLOPs of one image's forward (FlopCounterMode: 2 per multiply-add)
    flops_train: int  # forward + backward
    activation_bytes: float  # tensors saved for backward (inf: beyond what can be counted)


@functools.lru_cache(maxsize=16)
def footprint(preset: str, channels: int, image_size: int) -> Footprint:
    """Trace the network on the ``meta`` device (no memory, no arithmetic) at batches 1 and 2: its
    parameters, FLOPs per image and the bytes per image it saves for the backward pass (the
    difference of the two batches, so parameters drop out; attention as :func:`_saved_bytes`
    counts it). UserError when the preset cannot take this size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models import build_model

    with torch.device("meta"):
        net = build_model(preset, channels, image_size)
    params = sum(p.numel() for p in net.parameters())
    try:
        x, t = _meta_inputs(1, channels, image_size)
        with FlopCounterMode(display=False) as counter:
            saved_1, out = _saved_bytes(lambda: net(x, t))
            forward = counter.get_total_flops()
            out.float().square().mean().backward()
            train = counter.get_total_flops()
        del out
        x, t = _meta_inputs(2, channels, image_size)
        saved_2, _ = _saved_bytes(lambda: net(x, t))
    except RuntimeError as err:  # shapes beyond int64 (``Storage size calculation overflowed``)
        if "overflow" not in str(err):
            raise
        return Footprint(params, 0, 0, math.inf)
    return Footprint(params, forward, train, saved_2 - saved_1)


def _meta_inputs(batch: int, channels: int, image_size: int) -> tuple[Any, Any]:
    import torch

    return (torch.empty(batch, channels, image_size, image_size, device="meta"),
            torch.zeros(batch, dtype=torch.int64, device="meta"))


def _saved_bytes(forward: Callable[[], Any]) -> tuple[float, Any]:
    """Bytes of the distinct tensors autograd saves during ``forward()``, and its output.

    ``scaled_dot_product_attention`` counts what the fused kernels that CPU and CUDA runs use save
    (q, k, v, the output and a float32 log-sum-exp per query), not the ``[L, L]`` attention weights
    that its decomposition on the meta device would store."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode

    seen: dict[int, Any] = {}

    def pack(t: Any) -> Any:
        seen[id(t)] = t  # keeps each alive, so ids stay distinct
        return t

    class FusedAttention(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            if func is not F.scaled_dot_product_attention:
                return func(*args, **(kwargs or {}))
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                out = func(*args, **(kwargs or {}))
            q, k, v = args[:3]
            for t in (q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32)):
                pack(t)
            return out

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FusedAttention():
        out = forward()
    return float(sum(t.numel() * t.element_size() for t in seen.values())), out


def memory_parts(fp: Footprint, batch: float, sample_batch: int, frozen_copies: int, data_images: int | None,
                 channels: int, image_size: int, training: bool = True) -> dict[str, float]:
    """Bytes by part: ``weights`` (the model, with gradients and Adam's two moments when
    ``training``, and ``frozen_copies`` eval copies), ``activations`` (saved for backward by
    ``batch`` training images, times :data:`BACKWARD_TRANSIENTS`), ``sampling`` (no-grad forwards
    of ``sample_batch`` images, :data:`SAMPLING_SHARE` of that) and ``data`` (uint8 images at the
    run's size, kept on the CPU). Training and sampling do not overlap: see :func:`total`."""
    copies = (4 if training else 1) + frozen_copies
    parts = {"weights": 4.0 * fp.params * copies,
             "activations": fp.activation_bytes * BACKWARD_TRANSIENTS * batch if training else 0.0,
             "sampling": fp.activation_bytes * SAMPLING_SHARE * sample_batch}
    if data_images is not None:
        parts["data"] = float(data_images) * channels * image_size ** 2
    return parts


def total(parts: dict[str, float]) -> float:
    """The peak of ``parts``: everything at once, but training activations or sampling, not both."""
    apart = [parts[k] for k in ("activations", "sampling") if k in parts]
    return sum(v for k, v in parts.items() if k not in ("activations", "sampling")) + max(apart, default=0.0)


def available_memory(device: "torch.device") -> float | None:
    """Free bytes on ``device``: CUDA's free memory, or the CPU's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        import torch

        return float(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(parts: dict[str, float], device: "torch.device", hint: dict[str, str], force: bool = False,
                 share: int = 1) -> None:
    """Refuse a run whose ``parts`` do not fit in the memory ``device`` has (the ``data`` part is
    compared with the CPU's), unless ``force``. ``hint``: part -> the options that shrink it;
    ``share``: runs that will share the memory at once."""
    if force:
        return
    groups = {"cpu": parts} if device.type == "cpu" else {
        device.type: {k: v for k, v in parts.items() if k != "data"},
        "cpu": {k: v for k, v in parts.items() if k == "data"}}
    for where, group in groups.items():
        need = total(group)
        have = available_memory(device if where == device.type else _cpu())
        if not group or have is None or need <= RESERVE * have / share:
            continue
        biggest = max(group, key=group.get)
        listed = ", ".join(f"{k} {format_bytes(v)}" for k, v in sorted(group.items(), key=lambda kv: -kv[1]) if v)
        shared = f" / {share} runs at once" if share > 1 else ""
        about = "about " if math.isfinite(need) else ""
        raise UserError(f"the run needs {about}{format_bytes(need)} of {where} memory ({listed}) but "
                        f"{format_bytes(have)}{shared} is available; {hint[biggest]}, or add --force to run anyway")


def _cpu() -> "torch.device":
    import torch

    return torch.device("cpu")


@dataclass(frozen=True)
class Plan:
    """What :func:`check_run` found, reused by :func:`check_stream` and :func:`cost_lines`."""

    cfg: "Config"
    device: "torch.device"
    shape: DataShape
    footprint: Footprint
    channels: int
    training: bool = True  # the run trains (else it only evaluates: no gradients, Adam or batches)
    force: bool = False  # run even where the memory estimate exceeds what is available
    share: int = 1  # runs that share the device's memory at once


def check_run(cfg: "Config", device: "torch.device", *, force: bool = False, out: str | os.PathLike | None = None,
              training: bool = True, share: int = 1) -> Plan:
    """Every check of a resolved run that needs no data loaded; see the module docstring.
    ``out``: the folder the run writes into (default ``cfg.run.out``). Where the dataset's size is
    not registered, the memory is checked for one training image here and in full by
    :func:`check_stream` once the data is loaded (after the batch size is checked against it)."""
    from .models import MODELS

    run = cfg.run
    cfg.validate()
    check_paths(str(out if out is not None else run.out), run.data_root)
    shape = data_shape(cfg)
    channels = shape.channels or MODELS.get(run.model).in_channels
    fp = footprint(run.model, channels, run.image_size)  # UserError if the preset cannot take the size
    if shape.task_train and run.batch_size > min(shape.task_train):
        n = min(shape.task_train)
        raise UserError(f"bad value {run.batch_size} for batch_size: larger than the smallest task's training set "
                        f"({n} images{f' with train_subset={run.train_subset}' if run.train_subset else ''}); "
                        f"choose batch_size <= {n}")
    if cfg.eval.fid_inception and cfg.eval.eval_samples > 0:
        from .evaluation.inception import resolve_user_weights

        resolve_user_weights(cfg.eval.inception_weights)  # UserError for a missing file
    plan = Plan(cfg, device, shape, fp, channels, training, force, share)
    _check_plan_memory(plan, whole_batch=shape.task_train is not None)
    return plan


def check_stream(plan: Plan, stream: Any) -> Plan:
    """Once the data is loaded (``stream``: a :class:`~cl_diffusion.stream.TaskStream`): the plan
    with its real task sizes and channels, and, where they were not known before, the full memory
    check."""
    shape = DataShape(stream.channels, tuple(len(t.train) for t in stream.tasks),
                      sum(len(t.train) + len(t.test) for t in stream.tasks))
    known = plan.shape.task_train is not None
    fp = plan.footprint if stream.channels == plan.channels else footprint(plan.cfg.run.model, stream.channels,
                                                                           plan.cfg.run.image_size)
    plan = dataclasses.replace(plan, shape=shape, channels=stream.channels, footprint=fp)
    if not known:
        _check_plan_memory(plan, whole_batch=True)
    return plan


def _check_plan_memory(plan: Plan, whole_batch: bool) -> None:
    """The memory check of :func:`check_memory` for the run's batch (or one image)."""
    from .strategy import STRATEGIES

    run = plan.cfg.run
    strategy_cls = STRATEGIES.get(run.strategy)
    replay = float(strategy_cls.replay_images_per_image(plan.cfg.strategy_params))
    frozen = 1 if getattr(strategy_cls, "keeps_previous", True) else 0
    batch = run.batch_size * (1 + replay) if whole_batch else 1
    sample_batch = plan.cfg.eval.eval_batch_size if whole_batch else 1
    parts = memory_parts(plan.footprint, batch, sample_batch, frozen, plan.shape.images, plan.channels,
                         run.image_size, plan.training)
    hint = {"weights": f"choose a smaller model than {run.model!r} (see --list)",
            "activations": f"lower batch_size (now {run.batch_size}) or image_size (now {run.image_size})",
            "sampling": f"lower eval_batch_size (now {plan.cfg.eval.eval_batch_size}) or image_size "
                        f"(now {run.image_size})",
            "data": f"lower image_size (now {run.image_size}), train_subset or test_subset"}
    check_memory(parts, plan.device, hint, plan.force, plan.share)


# ------------------------------------------------------------------------------------------------
# Cost: FLOPs of the protocol, time on this device
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImagePasses:
    """Network passes over single images in a whole run."""

    train: float  # student forward + backward (current and replay images)
    teacher: float  # frozen-teacher forwards making the replay
    sampling: float  # evaluation samples and sample grids: DDIM steps x images
    solver_replay: float  # samples the evaluation solver trains on: DDIM steps x images


def image_passes(cfg: "Config", strategy_cls: type, task_train: Sequence[int]) -> ImagePasses:
    """Count the protocol's image passes, as the trainer and the evaluator make them: per task k,
    ``epochs x ceil(n_k / B)`` iterations (capped at ``iters_per_task``) over the n_k images of the
    tasks the strategy trains on (hook ``trained_tasks``), in batches of B current images and,
    after the first task, ``replay_images_per_image`` replay images per current image, made with
    ``teacher_forwards_per_replay_image`` teacher forwards each; after each task
    ``grid_samples + eval_samples`` samples at ``eval_steps``; from the second task, when the
    strategy keeps its previous generator, the solver's replay: ``solver_replay_pool`` samples, or
    as many as real images in its iterations, at ``eval_steps``. The hooks are the strategy
    class's cost declarations (:class:`cl_diffusion.strategy.Strategy`)."""
    run, ev, params = cfg.run, cfg.eval, cfg.strategy_params
    replay = float(strategy_cls.replay_images_per_image(params))
    teacher = float(strategy_cls.teacher_forwards_per_replay_image(params))
    trained = strategy_cls.trained_tasks
    solver_replays = ev.solver_epochs > 0 and getattr(strategy_cls, "keeps_previous", True)
    train = teacher_fw = sampling = solver = 0.0
    for k, n_k in enumerate(task_train):
        images = _images(sum(task_train[j] for j in trained(k)), run.batch_size, run.epochs, run.iters_per_task)
        train += images * (1 + (replay if k > 0 else 0.0))
        teacher_fw += images * replay * teacher if k > 0 else 0.0
        sampling += (run.grid_samples + ev.eval_samples) * ev.eval_steps
        if solver_replays and k > 0:
            real = _images(n_k, ev.solver_batch_size, ev.solver_epochs, ev.solver_iters_per_task)
            solver += (ev.solver_replay_pool or real) * ev.eval_steps
    return ImagePasses(train, teacher_fw, sampling, solver)


def _images(n: int, batch: int, epochs: int, cap: int) -> int:
    """Images in ``epochs`` passes over ``n`` images in batches of ``batch`` (the last of each epoch
    partial), stopped after ``cap`` iterations when ``cap`` > 0."""
    per_epoch = math.ceil(n / batch)
    iters = min(epochs * per_epoch, cap) if cap > 0 else epochs * per_epoch
    epochs_done, rest = divmod(iters, per_epoch)
    return epochs_done * n + rest * batch


def run_flops(passes: ImagePasses, fp: Footprint) -> dict[str, float]:
    """FLOPs by part of the run: the image passes times the network's FLOPs per image."""
    return {"training": passes.train * fp.flops_train, "replay teacher": passes.teacher * fp.flops_forward,
            "evaluation sampling": passes.sampling * fp.flops_forward,
            "solver replay": passes.solver_replay * fp.flops_forward}


@dataclass(frozen=True)
class Rates:
    """Measured FLOP/s of the run's network on the device: training steps and no-grad forwards."""

    train: float
    forward: float
    seconds: float  # wall time the measurement took

    def time(self, flops: dict[str, float]) -> float:
        """Seconds for :func:`run_flops`' parts: training at the training rate, the rest as forwards."""
        return flops["training"] / self.train + (sum(flops.values()) - flops["training"]) / self.forward


def calibrate(plan: Plan, budget: float = CALIBRATION_SECONDS) -> Rates | None:
    """Time a few real training steps (Adam, the run's batch size or fewer images when a step would
    take longer than the budget or more than :data:`CALIBRATION_MEMORY` of the free memory) and
    no-grad forwards (the evaluation batch size, likewise) of the run's network on the device,
    with the run's memory format and precision, uncompiled; None when not even one image fits.
    The global RNG is restored afterwards."""
    import torch

    from .execution import Execution
    from .models import build_model

    cfg, device, start = plan.cfg, plan.device, time.perf_counter()
    run, C, S = cfg.run, plan.channels, cfg.run.image_size
    per_image, have = plan.footprint.activation_bytes * BACKWARD_TRANSIENTS, available_memory(device)
    fits = int(min(CALIBRATION_MEMORY * have / per_image, 1e9)) if have and per_image > 0 else 1 << 30
    if fits < 1:
        return None
    ex = dataclasses.replace(Execution.resolve(run, device), compile=False)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = ex.prepare(build_model(run.model, C, S).to(device))
        opt = torch.optim.Adam(model.parameters(), lr=run.lr)

        def inputs(b: int) -> tuple[Any, Any]:
            return (torch.randn(b, C, S, S, device=device, generator=g),
                    torch.randint(0, run.num_timesteps, (b,), device=device, generator=g))

        def train_step(b: int) -> None:
            x, t = inputs(b)
            with ex.autocast():
                loss = (model(x, t).float() - x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.no_grad()
        def forward(b: int) -> None:
            with ex.autocast():
                model(*inputs(b))

        train = _rate(train_step, min(run.batch_size, fits), plan.footprint.flops_train, device, budget / 2)
        model.eval()
        fwd = _rate(forward, min(cfg.eval.eval_batch_size, fits), plan.footprint.flops_forward, device, budget / 2)
    return Rates(train, fwd, time.perf_counter() - start)


def _rate(step: Callable[[int], None], batch: int, flops_per_image: int, device: "torch.device",
          budget: float) -> float:
    """FLOP/s of ``step(b)``: a warm-up and a timed step at one image, then the best of a few steps
    at ``batch`` images, or at as many as take a third of ``budget`` when that is fewer.

    On a CPU with one torch thread every operation runs in the calling thread, so a step is timed
    by that thread's CPU time: other processes sharing the cores (a ``--jobs 2`` sweep's other run)
    do not inflate it, and the estimate is the run's time with a core of its own. Otherwise (threads,
    CUDA) it is wall time."""
    import torch

    clock = time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter

    def timed(b: int) -> float:
        t0 = clock()
        step(b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return max(clock() - t0, 1e-9)

    timed(1)  # warm-up: lazy initialisation
    per_image = timed(1)
    batch = max(1, min(batch, int(budget / 3 / per_image)))
    if batch == 1:
        return flops_per_image / per_image
    times: list[float] = []
    while not times or (sum(times) < budget and (len(times) < 3 or sum(times) < budget / 10)):
        times.append(timed(batch))
    return flops_per_image * batch / min(times)


def cost_lines(plan: Plan, stream: Any = None, suggest: bool = True) -> list[str]:
    """What the run will cost, before it starts: its FLOPs by part, the time they take here, and on
    a CPU, when that exceeds a few hours, the profile that fits. ``stream``: the loaded
    :class:`~cl_diffusion.stream.TaskStream`, if any (see :func:`check_stream`); without it, a
    dataset whose size is not registered is loaded to count its images."""
    from .strategy import STRATEGIES
    from .stream import BENCHMARKS

    cfg = plan.cfg
    if stream is None and not plan.shape.task_train:
        stream = BENCHMARKS.get(cfg.run.benchmark).build(cfg.run)
    if stream is not None:
        plan = check_stream(plan, stream)
    passes = image_passes(cfg, STRATEGIES.get(cfg.run.strategy), plan.shape.task_train or ())
    flops = run_flops(passes, plan.footprint)
    rates = calibrate(plan) if sum(flops.values()) > CALIBRATE_ABOVE_FLOP else None
    seconds = rates.time(flops) if rates is not None else math.nan
    counts = {"training": (passes.train, "image forward+backward passes"), "replay teacher": (passes.teacher, ""),
              "evaluation sampling": (passes.sampling, ""), "solver replay": (passes.solver_replay, "")}
    parts = ", ".join(f"{k} {format_flops(v)} ({format_count(counts[k][0])} {counts[k][1] or 'image forwards'})"
                      for k, v in flops.items())
    lines = [f"cost: {format_flops(sum(flops.values()))} in the diffusion network: {parts}; evaluation classifiers "
             "and Inception not counted"]
    if rates is None and sum(flops.values()) <= CALIBRATE_ABOVE_FLOP:
        lines.append(f"time: not measured: under {format_flops(CALIBRATE_ABOVE_FLOP)}, seconds to minutes on any device")
        return lines
    if rates is None:
        lines.append(f"time: not measured: one training image at image_size {cfg.run.image_size} needs more than "
                     f"{CALIBRATION_MEMORY:.0%} of the free {plan.device.type} memory")
        return lines
    lines.append(f"time: about {format_duration(seconds)} on this {plan.device.type} (measured here in "
                 f"{rates.seconds:.1f} s: {format_flops(rates.train)}/s training, {format_flops(rates.forward)}/s "
                 f"sampling, eager{_threads(plan.device)})")
    if suggest and plan.device.type == "cpu" and seconds > SUGGEST_ABOVE_SECONDS:
        lines.append(_suggestion(plan, seconds))
    return lines


def _threads(device: "torch.device") -> str:
    import torch

    n = torch.get_num_threads()
    return f", {n} thread{'s' if n > 1 else ''}" if device.type == "cpu" else ""


def _suggestion(plan: Plan, seconds: float) -> str:
    """One line naming the largest other profile that runs within :data:`SUGGEST_ABOVE_SECONDS`
    here (with the run's own overrides), or the cheapest one. Profiles under
    :data:`CALIBRATE_ABOVE_FLOP` (smoke: a plumbing check whose numbers mean nothing) are not named."""
    from .profiles import PROFILES, resolve_config

    cfg = plan.cfg
    run = cfg.run
    fields = {k: getattr(run, k) for k in ("seed", "device", "out", "data_root", "class_order")}
    own = cfg.diff(resolve_config(run.strategy, run.benchmark, run.profile, **fields))
    options: list[tuple[float, str]] = []
    for name in PROFILES.names():
        if name == run.profile:
            continue
        try:
            other = resolve_config(run.strategy, run.benchmark, name, [(k, v) for k, (v, _) in own.items()], **fields)
            estimate = _estimate_seconds(check_run(other, plan.device))
        except UserError:  # the run's own overrides do not fit that profile
            continue
        if estimate is not None:
            options.append((estimate, name))
    if not options:
        return f"note: on this CPU this is about {format_duration(seconds)}"
    fits = [o for o in options if o[0] <= SUGGEST_ABOVE_SECONDS]
    best_seconds, best = max(fits) if fits else min(options)
    return (f"note: on this CPU this is about {format_duration(seconds)}; `--profile {best}` takes about "
            f"{format_duration(best_seconds)} here")


def _estimate_seconds(plan: Plan) -> float | None:
    """The run's time here from a shorter calibration; None where the data's size is not known or
    the run is too small to be worth naming (under :data:`CALIBRATE_ABOVE_FLOP`)."""
    from .strategy import STRATEGIES

    if not plan.shape.task_train:
        return None
    flops = run_flops(image_passes(plan.cfg, STRATEGIES.get(plan.cfg.run.strategy), plan.shape.task_train),
                      plan.footprint)
    if sum(flops.values()) <= CALIBRATE_ABOVE_FLOP:
        return None
    rates = calibrate(plan, budget=CALIBRATION_SECONDS / 2)
    return rates.time(flops) if rates is not None else None


# ------------------------------------------------------------------------------------------------
# Formatting
# ------------------------------------------------------------------------------------------------
def format_bytes(n: float) -> str:
    if not math.isfinite(n):
        return "over 8 EiB"  # beyond int64 sizes
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024:
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.3g} EiB"


def format_flops(n: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.3g} FLOP"


def format_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def format_duration(seconds: float) -> str:
    for unit, scale in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * scale:
            value = seconds / scale
            return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"
    return f"{seconds:.2g} seconds" if seconds < 10 else f"{seconds:.0f} seconds"
