"""Named network presets (the ``MODELS`` registry) and :func:`build_model`.

A preset is any object with ``description``, native ``in_channels`` / ``image_size`` (used for
``--list``) and ``build(in_channels, image_size) -> nn.Module``, so other backbones (e.g. a DiT)
register here the same way :class:`UNetPreset` does. ``build`` raises
:class:`~cl_diffusion.errors.UserError` for sizes or channels the network cannot take.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry
from .unet import UNet


class ModelPreset(Protocol):
    """What the ``MODELS`` registry holds."""

    description: str  # one line for --list, naming the intended resolution
    in_channels: int  # native image channels (parameter counts in --list use these)
    image_size: int  # native side in pixels

    def build(self, in_channels: int, image_size: int) -> nn.Module:
        """A freshly initialised ``eps``-model for ``[B, in_channels, image_size, image_size]``."""
        ...


MODELS: Registry[ModelPreset] = Registry("model preset")


@dataclass(frozen=True)
class UNetPreset:
    """A :class:`~cl_diffusion.models.unet.UNet` configuration (diffusers ``UNet2DModel`` names).

    ``up_attention`` is ordered like diffusers' ``up_block_types``: lowest resolution first.
    """

    name: str  # registry name, used in error messages
    block_out_channels: tuple[int, ...]  # channels per level, highest resolution first
    layers_per_block: int  # resnets per down level (up levels get one more)
    down_attention: tuple[bool, ...]  # self-attention after each resnet of that down level
    up_attention: tuple[bool, ...]  # same for up levels, lowest resolution first
    norm_num_groups: int  # GroupNorm groups, must divide every channel count
    description: str  # one line for --list, with the intended resolution
    in_channels: int = 1  # native image channels
    image_size: int = 32  # native side in pixels
    attention_head_dim: int | None = 8  # channels per attention head; None = a single head
    dropout: float = 0.0  # dropout probability inside every resnet
    mid_attention: bool = True  # attention in the mid block

    @property
    def downsample_factor(self) -> int:
        """The image side must be a multiple of this: ``2 ** (levels - 1)``."""
        return 2 ** (len(self.block_out_channels) - 1)

    def attention_channels(self) -> list[int]:
        """Channel counts of the levels (and mid block) that have self-attention."""
        chs = self.block_out_channels
        down = [c for c, a in zip(chs, self.down_attention) if a]
        up = [c for c, a in zip(reversed(chs), self.up_attention) if a]
        return down + up + ([chs[-1]] if self.mid_attention else [])

    def check(self, in_channels: int, image_size: int) -> None:
        """Raise :class:`UserError` if the network cannot be built for these inputs."""
        name = self.name
        f = self.downsample_factor
        if image_size < 1 or image_size % f:
            sizes = ", ".join(str(f * k) for k in range(1, 5))
            raise UserError(f"image size {image_size} does not fit model preset {name!r} "
                            f"({len(self.block_out_channels)} levels): valid sizes are multiples "
                            f"of {f} ({sizes}, ...)")
        if in_channels < 1:
            raise UserError(f"in_channels must be >= 1 for model preset {name!r}, "
                            f"got {in_channels}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise UserError(f"model preset {name!r}: channels {bad} are not divisible by "
                            f"norm_num_groups={self.norm_num_groups}")
        head = self.attention_head_dim
        bad = [c for c in self.attention_channels() if head and c % head]
        if bad:
            raise UserError(f"model preset {name!r}: channels {bad} are not divisible by "
                            f"attention_head_dim={head}")

    def build(self, in_channels: int, image_size: int) -> nn.Module:
        self.check(in_channels, image_size)
        return UNet(in_channels, self.block_out_channels, self.layers_per_block,
                    self.down_attention, self.up_attention, norm_num_groups=self.norm_num_groups,
                    attention_head_dim=self.attention_head_dim, dropout=self.dropout,
                    mid_attention=self.mid_attention)


def build_model(preset: str, in_channels: int, image_size: int) -> nn.Module:
    """Build the registered network ``preset`` for ``[B, in_channels, image_size, image_size]``.

    Raises:
        UserError: unknown preset (message lists the choices), or an image size / channel
            configuration the preset cannot take (message names the valid sizes).
    """
    return MODELS.get(preset).build(in_channels, image_size)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def describe_models() -> list[tuple[str, int, str]]:
    """``(name, parameter count at the native channels/size, description)`` for ``--list``.

    Networks are built on the ``meta`` device, so listing allocates and initialises nothing.
    """
    with torch.device("meta"):
        return [(name, count_parameters(p.build(p.in_channels, p.image_size)), p.description)
                for name, p in MODELS.items()]


def _unet(name: str, **kw: object) -> None:
    MODELS.add(name, UNetPreset(name=name, **kw))  # type: ignore[arg-type]


# The two paper networks: exact diffusers UNet2DModel configs (attention_head_dim=8 default).
_unet("paper-fmnist", block_out_channels=(64, 128, 256, 512), layers_per_block=1,
      down_attention=(False, False, False, True), up_attention=(True, False, False, False),
      norm_num_groups=32, in_channels=1, image_size=32,
      description="paper FMNIST UNet2DModel (diffusers config), 32x32, 4 levels, attn at 4x4")
_unet("paper-cifar10", block_out_channels=(128, 256, 256, 256), layers_per_block=2,
      down_attention=(False, True, False, False), up_attention=(False, False, True, False),
      norm_num_groups=32, in_channels=3, image_size=32,
      description="paper CIFAR-10 UNet2DModel (diffusers config), 32x32, 4 levels, attn at 16x16")
# CPU-sized networks (sized on a 2-core CPU; heads of 32 channels).
_unet("tiny", block_out_channels=(16, 32), layers_per_block=1,
      down_attention=(False, False), up_attention=(False, False), norm_num_groups=8,
      attention_head_dim=32, in_channels=1, image_size=16,
      description="smoke-test UNet, 16x16, 2 levels, attn in mid block only (8x8)")
_unet("small", block_out_channels=(16, 32, 64), layers_per_block=1,
      down_attention=(False, False, True), up_attention=(True, False, False), norm_num_groups=8,
      attention_head_dim=32, in_channels=1, image_size=16,
      description="quick-profile UNet for 2 CPU cores, 16x16, 3 levels, attn at 4x4")
_unet("base", block_out_channels=(32, 64, 128, 192), layers_per_block=1,
      down_attention=(False, False, True, False), up_attention=(False, True, False, False),
      norm_num_groups=8, attention_head_dim=32, in_channels=3, image_size=32,
      description="CPU-experiment UNet, 32x32, 4 levels, attn at 8x8 and 4x4 (mid)")
