"""The measured workloads, each a zero-argument callable built once: a training step of a network
in a numeric variant, one iteration of a registered strategy, one DDIM sampling call.

Variants of our UNet: ``fp32`` (contiguous NCHW), ``channels_last`` (NHWC memory format for the
weights and the input) and ``bf16`` (``torch.autocast`` to bfloat16; parameters, loss and Adam
stay fp32). Training steps follow :meth:`cl_diffusion.trainer.Trainer._step`: loss, finiteness
check, ``zero_grad(set_to_none=True)``, backward, gradient-norm clip, Adam step.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, ContextManager

import torch
from torch import nn

from ..config import Config, RunConfig
from ..diffusion import NoiseSchedule, ddim_sample
from ..execution import Execution
from ..models import MODELS, UNetPreset, build_model
from ..profiles import resolve_config

VARIANTS = ("fp32", "channels_last", "bf16")
#: Largest relative L2 difference to fp32 accepted for eps predictions and losses
#: (channels_last only reorders sums; bf16 keeps 8 mantissa bits).
TOLERANCES = {"channels_last": 1e-5, "bf16": 2e-2}

Step = Callable[[], None]


def default_variant(run: RunConfig, device: torch.device) -> str:
    """The variant a run uses on ``device`` by default (its resolved execution options)."""
    ex = Execution.resolve(run, device)
    return {(False, False): "fp32", (True, False): "channels_last", (False, True): "bf16",
            (True, True): "channels_last_bf16"}[ex.channels_last, ex.bf16]


def variant_execution(variant: str, device: torch.device) -> Execution:
    """The :class:`Execution` settings a variant name stands for (eager)."""
    return Execution(channels_last=variant.startswith("channels_last"), bf16=variant.endswith("bf16"),
                     device_type=device.type)


def autocast(device: torch.device, variant: str) -> ContextManager:
    """bf16 autocast for the ``bf16`` variants, else nothing (as runs do it)."""
    return variant_execution(variant, device).autocast()


def in_variant(model: nn.Module, x: torch.Tensor, variant: str) -> tuple[nn.Module, torch.Tensor]:
    """The model (in place, prepared as runs prepare it) and input ``[B, C, H, W]`` in the variant's
    memory format."""
    ex = variant_execution(variant, x.device)
    return ex.prepare(model), (x.contiguous(memory_format=torch.channels_last) if ex.channels_last else x)


def relative_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` in float64."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-30))


# ---- networks ------------------------------------------------------------------------------------
def bench_config(preset: str, strategy: str = "finetune", **run_fields: object) -> Config:
    """A real run Config at the paper protocol with the given network preset at its native size.

    The benchmark is the one whose paper protocol uses ``preset`` (else the default benchmark), so
    the evaluation steps and strategy defaults are those of the paper run with that network.
    """
    from ..stream import BENCHMARKS

    p = MODELS.get(preset)
    bench = next((n for n, s in BENCHMARKS.items() if s.paper.get("model") == preset), RunConfig().benchmark)
    return resolve_config(strategy, bench, "paper", model=preset, image_size=p.image_size, **run_fields)


def diffusers_config(preset: UNetPreset, in_channels: int, image_size: int) -> dict[str, object]:
    """diffusers ``UNet2DModel`` kwargs with the same architecture as our UNet ``preset``."""
    return {
        "sample_size": image_size, "in_channels": in_channels, "out_channels": in_channels,
        "layers_per_block": preset.layers_per_block, "block_out_channels": tuple(preset.block_out_channels),
        "norm_num_groups": preset.norm_num_groups, "attention_head_dim": preset.attention_head_dim,
        "dropout": preset.dropout, "add_attention": preset.mid_attention,
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in preset.down_attention),
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in preset.up_attention),
    }


class DiffusersEps(nn.Module):
    """diffusers' ``UNet2DModel`` with our call signature: ``(x_t, t) -> eps``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x_t, t).sample


def build_diffusers(preset: str, in_channels: int, image_size: int) -> nn.Module:
    """diffusers' network at ``preset``'s architecture. Raises ImportError without diffusers,
    ValueError for presets that are not UNets."""
    from diffusers import UNet2DModel  # optional: the ``bench`` extra
    from diffusers.utils import logging as dlogging

    p = MODELS.get(preset)
    if not isinstance(p, UNetPreset):
        raise ValueError(f"model preset {preset!r} is not a UNet; diffusers has no counterpart")
    dlogging.set_verbosity_error()
    return DiffusersEps(UNet2DModel(**diffusers_config(p, in_channels, image_size)))


# ---- training steps ----------------------------------------------------------------------------
def train_step(model: nn.Module, variant: str, batch: int, cfg: Config, device: torch.device,
               seed: int = 0) -> Step:
    """One training step of ``model`` (moved to ``device`` and ``variant``) on a fixed random batch.

    The loss is the eps-MSE of DDPM Eq. 14 on ``x_t ~ N(0, I)``, ``t ~ U{0..T-1}``.
    """
    run = cfg.run
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model_channels(model), run.image_size, run.image_size)
    x_t, eps = torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, run.num_timesteps, (batch,), generator=g).to(device)
    model, x_t = in_variant(model.to(device).train(), x_t, variant)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr)

    def loss_fn() -> torch.Tensor:
        with autocast(device, variant):
            out = model(x_t, t)
        return torch.mean((out.float() - eps) ** 2)

    return _optimizer_step(model, optimizer, loss_fn, run.grad_clip)


def model_channels(model: nn.Module) -> int:
    """Image channels a network takes (its first conv's input channels)."""
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return conv.in_channels


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                    loss_fn: Callable[[], torch.Tensor], grad_clip: float) -> Step:
    def step() -> None:  # as Trainer._step
        loss = loss_fn()
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss in the benchmark step")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()

    return step


def strategy_iteration(name: str, preset: str, batch: int, device: torch.device, seed: int = 0) -> tuple[Step, Config]:
    """One training iteration of registered strategy ``name`` on task 2 (a teacher exists).

    Built as :func:`cl_diffusion.app.build_components` builds a run (real Config, preset, schedule,
    strategy, the device's default execution options); the previous generator (the teacher) is frozen
    as a run freezes it at the start of task 2.
    """
    from ..strategy import STRATEGIES, Batch, TaskContext

    cfg = bench_config(preset, name, batch_size=batch, device=device.type, seed=seed)
    run, p = cfg.run, MODELS.get(preset)
    torch.manual_seed(seed)
    execution = Execution.resolve(run, device)  # the run's own defaults for this device, as a run gets them
    model = execution.prepare(build_model(run.model, p.in_channels, run.image_size).to(device).train())
    schedule = NoiseSchedule.from_config(run).to(device)
    rng = torch.Generator(device=device).manual_seed(seed + 1)
    strategy = STRATEGIES.get(name)(model, schedule, cfg, rng, device, execution)
    ctx = TaskContext(1, None, model)  # type: ignore[arg-type]  # no stream: the loss does not read it
    strategy.freeze_previous(ctx)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr)
    g = torch.Generator().manual_seed(seed + 2)
    x0 = (torch.rand(batch, p.in_channels, run.image_size, run.image_size, generator=g) * 2 - 1).to(device)
    batch_ = Batch(x0, torch.zeros(batch, dtype=torch.int64, device=device))

    def loss() -> torch.Tensor:
        with execution.autocast():
            return strategy.loss(batch_, ctx)[0]

    return _optimizer_step(model, optimizer, loss, run.grad_clip), cfg


# ---- sampling ------------------------------------------------------------------------------------
SAMPLING_MODES = ("no_grad", "inference_mode", "inference_mode+channels_last")


def sampling_call(model: nn.Module, mode: str, batch: int, cfg: Config, device: torch.device,
                  seed: int = 0) -> Step:
    """One DDIM sampling call at the evaluation steps (``cfg.eval.eval_steps``), eta and spacing
    of the run, on ``batch`` fixed noise images. ``model`` is used in eval mode (copied for
    ``channels_last``). ``no_grad`` is the sampler as called in training (it disables autograd
    itself); the other modes add ``torch.inference_mode()`` around it."""
    run = cfg.run
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn(batch, model_channels(model), run.image_size, run.image_size, generator=g).to(device)
    model = model.to(device).eval()
    if mode.endswith("channels_last"):
        model, x_T = in_variant(copy.deepcopy(model), x_T, "channels_last")
    schedule = NoiseSchedule.from_config(run).to(device)
    ctx = contextlib.nullcontext if mode == "no_grad" else torch.inference_mode

    def call() -> None:
        with ctx():
            ddim_sample(model, schedule, x_T, steps=cfg.eval.eval_steps, eta=run.eta, spacing=run.spacing,
                        clip_x0=run.clip_x0)

    return call


# ---- agreement with fp32 ---------------------------------------------------------------------------
def variant_agreement(model: nn.Module, batch: int, cfg: Config, device: torch.device,
                      seed: int = 0) -> dict[str, dict[str, float]]:
    """Relative L2 difference to fp32 of eps predictions and of the eps-MSE loss, per variant.

    Same weights and inputs for every variant (``channels_last`` on a copy of ``model``).
    """
    run = cfg.run
    g = torch.Generator().manual_seed(seed)
    shape = (batch, model_channels(model), run.image_size, run.image_size)
    x_t, eps = torch.randn(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
    t = torch.randint(0, run.num_timesteps, (batch,), generator=g).to(device)
    model = model.to(device).eval()
    out = {}
    with torch.no_grad():
        ref = model(x_t, t).float()
        ref_loss = torch.mean((ref - eps) ** 2)
        for variant in VARIANTS[1:]:
            m, x = in_variant(copy.deepcopy(model) if variant == "channels_last" else model, x_t, variant)
            with autocast(device, variant):
                y = m(x, t)
            y = y.float()
            out[variant] = {"eps_rel": relative_error(y, ref),
                            "loss_rel": relative_error(torch.mean((y - eps) ** 2), ref_loss),
                            "tolerance": TOLERANCES[variant]}
    return out
