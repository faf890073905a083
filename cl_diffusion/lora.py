"""Low-rank adapters (LoRA, Hu et al. 2022, ICLR) on a network's convolutions and linear layers.

Hu et al. 2022 Eq. 3: h = W0 x + ΔW x = W0 x + B A x, with W0 [out, fan_in] frozen and the update
ΔW = B A of rank r (B [out, r], A [r, fan_in]) scaled by alpha / r (Sec. 4.1: alpha is fixed while
r varies, so the effective learning rate needs no retuning). B starts at zero, so a new adapter
changes nothing; A starts random (here U(-1/sqrt(fan_in), 1/sqrt(fan_in)), Kaiming-uniform as in
the authors' ``loralib``, drawn from a seeded generator, never from torch's global RNG).

A wrapped layer holds its base layer and a list of adapters, one per task; a shared
:class:`AdapterSwitch` says which one is active (-1: none, the base alone). One network thus holds
T experts, and :class:`AdapterView` presents expert j as an eps-network of its own:

    switch = AdapterSwitch()
    wrap(model, switch, scale=alpha / r)   # every nn.Conv2d / nn.Linear, in place
    add_adapter(model, r, generator)       # adapter 0 in every wrapped layer (B = 0)
    switch.active = 0                      # model(x_t, t) now computes W0 x + scale B A x
    expert_0 = AdapterView(model, switch, -1)   # the base alone
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn



@dataclass
class AdapterSwitch:
    """Which adapter every wrapped layer of one network applies: its index, or -1 for none."""

    active: int = -1


class _LoRALayer(nn.Module):
    """A frozen-able base layer plus adapters ``lora_A[j]`` [r, fan_in], ``lora_B[j]`` [out, r]."""

    def __init__(self, base: nn.Conv2d | nn.Linear, switch: AdapterSwitch, scale: float) -> None:
        super().__init__()
        self.base, self.switch, self.scale = base, switch, scale
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()

    def __getattr__(self, name: str):
        """Attributes the wrapper lacks are the base's (``out_channels``, ``in_features``, ...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":
                raise
            return getattr(self.base, name)

    def add(self, rank: int, generator: torch.Generator) -> None:
        """Append one adapter: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from ``generator``, B = 0."""
        w = self.base.weight
        fan_in = w[0].numel()
        a = (torch.rand((rank, fan_in), generator=generator, dtype=torch.float64) * 2 - 1) / fan_in ** 0.5
        self.lora_A.append(nn.Parameter(a.to(device=w.device, dtype=w.dtype)))
        self.lora_B.append(nn.Parameter(torch.zeros((w.shape[0], rank), device=w.device, dtype=w.dtype)))

    def delta(self, j: int) -> torch.Tensor:
        """scale B_j A_j shaped like the base weight ([out, fan_in], or [out, in/groups, kh, kw])."""
        return (self.scale * (self.lora_B[j] @ self.lora_A[j])).view(self.base.weight.shape)


class LoRALinear(_LoRALayer):
    """h = W0 x + b + scale B_j A_j x for the active adapter j (x [..., in] -> h [..., out])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, j = self.base(x), self.switch.active
        if j < 0:
            return h
        return h + self.scale * F.linear(F.linear(x, self.lora_A[j]), self.lora_B[j])


class LoRAConv2d(_LoRALayer):
    """y = conv(x; W0 + scale reshape(B_j A_j)) + b, computed as base(x) + conv(x; scale reshape(B_j A_j))
    with the base's stride, padding (and padding mode), dilation and groups (x [B, in, H, W])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, j = self.base(x), self.switch.active
        if j < 0:
            return y
        return y + self.base._conv_forward(x, self.delta(j), None)  # the base's own conv call, no bias


def wrap(model: nn.Module, switch: AdapterSwitch, scale: float) -> nn.Module:
    """Replace, in place, every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` (exact types: subclasses
    such as attention's out-projections are read by weight elsewhere) by a wrapper with no adapters
    that shares ``switch``. Already wrapped layers are left alone. Returns ``model``."""
    for name, child in list(model.named_children()):
        if type(child) is nn.Conv2d:
            setattr(model, name, LoRAConv2d(child, switch, scale))
        elif type(child) is nn.Linear:
            setattr(model, name, LoRALinear(child, switch, scale))
        elif not isinstance(child, _LoRALayer):
            wrap(child, switch, scale)
    return model


def lora_layers(model: nn.Module) -> list[_LoRALayer]:
    """The wrapped layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, _LoRALayer)]


def n_adapters(model: nn.Module) -> int:
    """How many adapters each wrapped layer holds (0 for an unwrapped model)."""
    layers = lora_layers(model)
    return len(layers[0].lora_A) if layers else 0


def add_adapter(model: nn.Module, rank: int, generator: torch.Generator) -> list[nn.Parameter]:
    """Give every wrapped layer one more adapter (index ``n_adapters(model) - 1`` afterwards), its A
    drawn from ``generator`` in module order; returns the new A and B parameters."""
    new: list[nn.Parameter] = []
    for layer in lora_layers(model):
        layer.add(rank, generator)
        new += [layer.lora_A[-1], layer.lora_B[-1]]
    return new


def adapter_parameters(model: nn.Module, j: int) -> list[nn.Parameter]:
    """Adapter j's A and B in every wrapped layer."""
    return [p for layer in lora_layers(model) for p in (layer.lora_A[j], layer.lora_B[j])]


class AdapterView(nn.Module):
    """The eps-network ``model`` with adapter ``j`` active (-1: the base alone); the switch is set
    for the call and restored after it, so views of one network can be called in any order."""

    def __init__(self, model: nn.Module, switch: AdapterSwitch, j: int) -> None:
        super().__init__()
        self.model, self.switch, self.j = model, switch, j

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """eps [B, C, H, W] of x_t [B, C, H, W] at t int64 [B]."""
        before, self.switch.active = self.switch.active, self.j
        try:
            return self.model(x_t, t)
        finally:
            self.switch.active = before
