"""Preflight's cost estimate: the FLOPs of the whole protocol (:func:`image_passes` x the network's
FLOPs per image), the time they take on this device (:func:`calibrate`, a few seconds of real
training steps and forwards) and, on a CPU, the profile that fits in a few hours.

The strategy-dependent counts come from the strategy class, looked up by name with a default:
:class:`cl_diffusion.strategy.Strategy`'s cost classmethods.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import UserError
from .memory import BACKWARD_TRANSIENTS, Footprint, Plan, available_memory, check_run, check_stream
from .units import format_count, format_duration, format_flops

if TYPE_CHECKING:
    import torch

    from ..config import Config

CALIBRATION_SECONDS = 3.0  # wall time spent timing real steps for the time estimate
CALIBRATE_ABOVE_FLOP = 1e12  # smaller runs take seconds to a few minutes anywhere: not worth timing
SUGGEST_ABOVE_SECONDS = 3 * 3600  # on a CPU, a run longer than this names a profile that fits
CALIBRATION_MEMORY = 0.25  # share of the available memory the calibration's batches may use


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

    from ..execution import Execution
    from ..models import build_model

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
    from ..strategy import STRATEGIES
    from ..stream import BENCHMARKS

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
    from ..profiles import PROFILES, resolve_config

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
    from ..strategy import STRATEGIES

    if not plan.shape.task_train:
        return None
    flops = run_flops(image_passes(plan.cfg, STRATEGIES.get(plan.cfg.run.strategy), plan.shape.task_train),
                      plan.footprint)
    if sum(flops.values()) <= CALIBRATE_ABOVE_FLOP:
        return None
    rates = calibrate(plan, budget=CALIBRATION_SECONDS / 2)
    return rates.time(flops) if rates is not None else None
