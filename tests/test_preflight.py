"""The preflight's counts against hand computations: FLOPs and saved bytes per image of a network
that can be counted by hand, the image passes of a tiny protocol, the run's FLOPs, and the fast
name check against the registry."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from cl_diffusion import preflight
from cl_diffusion.app import load_plugins
from cl_diffusion.models import MODELS
from cl_diffusion.profiles import resolve_config
from cl_diffusion.strategy import STRATEGIES, Strategy

C, S = 2, 8  # channels and side of the hand-counted network


class OneConv(nn.Module):
    """eps = conv3x3(x_t): 2 * 9 * C * C FLOPs per output pixel, one saved input per image."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv(x_t)


@dataclass(frozen=True)
class OneConvPreset:
    description: str = "test: one 3x3 convolution"
    in_channels: int = C
    image_size: int = S

    def build(self, in_channels: int, image_size: int) -> nn.Module:
        return OneConv(in_channels)


@pytest.fixture
def one_conv(monkeypatch):
    monkeypatch.setitem(MODELS._entries, "test-one-conv", OneConvPreset())
    preflight.footprint.cache_clear()
    yield "test-one-conv"
    preflight.footprint.cache_clear()


def test_footprint_of_one_convolution(one_conv):
    fp = preflight.footprint(one_conv, C, S)
    forward = 2 * 9 * C * C * S * S  # multiply-adds of a 3x3 conv, counted as 2 FLOPs each
    assert fp.params == 9 * C * C + C
    assert fp.flops_forward == forward
    assert fp.flops_train == 2 * forward  # backward: the weight's gradient (x_t needs none, as in training)
    assert fp.activation_bytes == C * S * S * 4  # the conv's float32 input, per image


class Distilling(Strategy):
    """A gd-like strategy described by the cost hooks: one replay image per current image, made with
    teacher_steps + 1 teacher forwards; the previous generator is kept (so the solver replays)."""

    keeps_previous = True

    @classmethod
    def replay_images_per_image(cls, params) -> float:
        return 1.0

    @classmethod
    def teacher_forwards_per_replay_image(cls, params) -> float:
        return params.teacher_steps + 1


class Cumulative(Strategy):
    """A joint-like strategy: trains on every task seen so far, no previous generator."""

    keeps_previous = False

    @classmethod
    def trained_tasks(cls, k: int) -> range:
        return range(k + 1)


def tiny_config(**sets):
    load_plugins()
    base = {"batch_size": 16, "epochs": 2, "iters_per_task": 0, "grid_samples": 16, "eval_samples": 32,
            "eval_steps": 2, "solver_epochs": 1, "solver_iters_per_task": 3, "solver_batch_size": 16,
            "solver_replay_pool": 0, "teacher_steps": 2}
    return resolve_config("gd", "fmnist-5", "smoke", list({**base, **sets}.items()))


def test_image_passes_of_a_tiny_protocol_by_hand():
    cfg = tiny_config()
    passes = preflight.image_passes(cfg, Distilling, [128] * 5)
    iters = 2 * math.ceil(128 / 16)  # 16 iterations of 16 images per task
    assert passes.train == iters * 16 * (1 + 4 * 2)  # task 1: B images; tasks 2-5: B current + B replay
    assert passes.teacher == 4 * iters * 16 * 1 * (2 + 1)  # tasks 2-5: B replay images x (2 steps + 1)
    assert passes.sampling == 5 * (16 + 32) * 2  # grid + evaluation samples at 2 DDIM steps, each task
    assert passes.solver_replay == 4 * min(1 * math.ceil(128 / 16), 3) * 16 * 2  # 3 solver iterations of 16
    pooled = preflight.image_passes(tiny_config(solver_replay_pool=50), Distilling, [128] * 5)
    assert pooled.solver_replay == 4 * 50 * 2


def test_partial_batches_and_the_iteration_cap():
    cfg = tiny_config(epochs=3, iters_per_task=0)
    passes = preflight.image_passes(cfg, Strategy, [100] * 5)  # batches of 16: 6 full + one of 4 per epoch
    assert passes.train == 5 * 3 * 100
    capped = preflight.image_passes(tiny_config(epochs=3, iters_per_task=9), Strategy, [100] * 5)
    assert capped.train == 5 * (100 + 2 * 16)  # one epoch of 7 batches, then 2 more batches of 16


def test_image_passes_follow_the_strategy_hooks():
    cfg = tiny_config(iters_per_task=20)
    joint = preflight.image_passes(cfg, Cumulative, [128] * 5)
    # task k trains on (k + 1) * 128 images: min(2 epochs x ceil(n / 16), 20) iterations
    assert joint.train == sum(min(2 * math.ceil((k + 1) * 128 / 16), 20) for k in range(5)) * 16
    assert joint.teacher == 0 and joint.solver_replay == 0
    plain = preflight.image_passes(cfg, Strategy, [128] * 5)  # the contract's defaults
    assert plain.train == 5 * 16 * 16 and plain.teacher == 0
    assert plain.solver_replay == 4 * 3 * 16 * 2  # default: the previous generator is kept


def test_run_flops_by_hand(one_conv):
    cfg = tiny_config()
    fp = preflight.footprint(one_conv, C, S)
    flops = preflight.run_flops(preflight.image_passes(cfg, Distilling, [128] * 5), fp)
    f = 2 * 9 * C * C * S * S
    assert flops == {"training": 2304 * 2 * f, "replay teacher": 3072 * f, "evaluation sampling": 480 * f,
                     "solver replay": 384 * f}


def test_static_names_agree_with_the_registry():
    load_plugins()
    assert preflight.static_names("cl_diffusion.strategies", "STRATEGIES", "cl_diffusion.strategies") == \
        STRATEGIES.names()


def test_memory_parts_by_hand():
    fp = preflight.footprint("tiny", 1, 16)
    parts = preflight.memory_parts(fp, 64, 500, 1, 1000, 1, 16)
    assert parts["weights"] == 4 * fp.params * 5  # weights, grads, 2 Adam moments, 1 frozen copy
    assert parts["activations"] == fp.activation_bytes * preflight.BACKWARD_TRANSIENTS * 64
    assert parts["sampling"] == fp.activation_bytes * preflight.SAMPLING_SHARE * 500
    assert parts["data"] == 1000 * 16 * 16
    assert preflight.total(parts) == parts["weights"] + parts["data"] + max(parts["activations"], parts["sampling"])


def test_cost_lines_and_the_profile_that_fits(monkeypatch):
    """A paper run on a (pretended) slow CPU names a smaller profile that fits in a few hours."""
    load_plugins()
    monkeypatch.setattr(preflight.cost, "calibrate", lambda plan, budget=0: preflight.Rates(2e10, 4e10, 0.1))
    cfg = resolve_config("finetune", "fmnist-5", "paper")
    plan = preflight.check_run(cfg, torch.device("cpu"))
    lines = preflight.cost_lines(plan)
    assert lines[0].startswith("cost: ") and "training" in lines[0] and "evaluation sampling" in lines[0]
    assert lines[1].startswith("time: about ") and "days" in lines[1]
    assert lines[2].startswith("note: on this CPU this is about ") and "`--profile quick` takes about" in lines[2]


def test_format_duration_units():
    assert preflight.format_duration(5) == "5 seconds"
    assert preflight.format_duration(90 * 60) == "90 minutes"
    assert preflight.format_duration(3 * 86400) == "3 days"
    assert preflight.format_duration(11 * 365.25 * 86400) == "11 years"
    assert preflight.format_duration(1234 * 365.25 * 86400) == "1,234 years"
