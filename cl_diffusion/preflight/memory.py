"""Preflight on the resolved config: the data's shape, the network's footprint and the memory.

:func:`check_run` checks a resolved :class:`~cl_diffusion.config.Config` before any data is
loaded: the benchmark's task count, the model preset against the image size and channels, the
batch size against the smallest task, the data and Inception paths, and the memory the run needs
(:func:`memory_parts`, from the network's :func:`footprint`) against what the device has, unless
``force``. :func:`check_stream` completes it once the data is loaded.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError
from .checks import check_paths
from .units import format_bytes

if TYPE_CHECKING:
    import torch

    from ..config import Config

RESERVE = 0.9  # share of the available memory a run may plan to use
#: Peak training memory over the tensors saved for backward: the backward pass's gradients and
#: temporaries (a CPU step's peak RSS was 1.3x to 1.7x the saved bytes plus the weights).
BACKWARD_TRANSIENTS = 1.75
#: Peak of a no-grad forward (evaluation sampling) per image over the bytes a training forward
#: saves per image: 0.2 to 0.45 measured for the UNet presets (CPU peak RSS).
SAMPLING_SHARE = 0.5


@dataclass(frozen=True)
class DataShape:
    """The run's data as far as it is known before loading it (None: known only after loading)."""

    channels: int | None
    task_train: tuple[int, ...] | None  # training images per task
    images: int | None  # training + test images kept in memory


def data_shape(cfg: "Config") -> DataShape:
    """Channels, task sizes and image count of the run's benchmark, from its registration; UserError
    for a task count the benchmark cannot split its classes into."""
    from ..data import DATASETS
    from ..stream import BENCHMARKS, task_classes

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

    from ..models import build_model

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
    """What :func:`check_run` found, reused by :func:`check_stream` and
    :func:`~cl_diffusion.preflight.cost.cost_lines`."""

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
    from ..models import MODELS

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
        from ..evaluation.inception import resolve_user_weights

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
    from ..strategy import STRATEGIES

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
