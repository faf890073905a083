"""The UNet epsilon-model: ``eps_theta(x_t, t)`` (DDPM, Ho et al. 2020, App. B).

Same structure, parameter count and parameter names as diffusers' ``UNet2DModel`` with its
default options (positional timestep embedding, ``flip_sin_to_cos=True``, ``freq_shift=0``,
conv down/upsampling, ``mid_block`` with attention), so a diffusers state dict loads after
renaming ``to_out.0.`` to ``to_out.``. Weights keep PyTorch's default initialisation, as
diffusers does (no zero-initialised output convs).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .layers import (Downsample, ResnetBlock, SelfAttention, TimestepMLP, Upsample,
                     timestep_embedding)


def _layers(in_chs: Sequence[int], out_ch: int, emb_dim: int, attention: bool, groups: int,
            head_dim: int | None, dropout: float) -> tuple[nn.ModuleList, nn.ModuleList | None]:
    """One resnet per input width in ``in_chs`` (all to ``out_ch``), and as many attentions if
    ``attention``; built in that order (the order of the initial weights' random draws)."""
    resnets = nn.ModuleList(ResnetBlock(c, out_ch, emb_dim, groups=groups, dropout=dropout) for c in in_chs)
    attentions = nn.ModuleList(SelfAttention(out_ch, groups=groups, head_dim=head_dim)
                               for _ in in_chs) if attention else None
    return resnets, attentions


class DownBlock(nn.Module):
    """``n_layers`` resnets (each optionally followed by attention), then an optional downsample.

    Returns the output and every intermediate activation, which the up path consumes as skips.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, n_layers: int, attention: bool,
                 downsample: bool, groups: int, head_dim: int | None, dropout: float) -> None:
        super().__init__()
        self.resnets, self.attentions = _layers([in_ch] + [out_ch] * (n_layers - 1), out_ch, emb_dim, attention,
                                                groups, head_dim, dropout)
        self.downsamplers = nn.ModuleList([Downsample(out_ch)]) if downsample else None

    def forward(self, x: torch.Tensor,
                emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, emb)
            if self.attentions is not None:
                x = self.attentions[i](x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """``n_layers`` resnets over ``cat([x, skip])`` (each optionally followed by attention), then
    an optional upsample. ``skip_chs`` lists the channels of the skips in the order consumed."""

    def __init__(self, in_ch: int, out_ch: int, skip_chs: Sequence[int], emb_dim: int, *,
                 attention: bool, upsample: bool, groups: int, head_dim: int | None,
                 dropout: float) -> None:
        super().__init__()
        widths = [(in_ch if i == 0 else out_ch) + c for i, c in enumerate(skip_chs)]
        self.resnets, self.attentions = _layers(widths, out_ch, emb_dim, attention, groups, head_dim, dropout)
        self.upsamplers = nn.ModuleList([Upsample(out_ch)]) if upsample else None

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor],
                emb: torch.Tensor) -> torch.Tensor:
        """Pops one skip per resnet from the end of ``skips`` (mutates the list)."""
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), emb)
            if self.attentions is not None:
                x = self.attentions[i](x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """``resnet -> attention -> resnet`` at the lowest resolution."""

    def __init__(self, ch: int, emb_dim: int, *, attention: bool, groups: int, head_dim: int | None,
                 dropout: float) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(ch, ch, emb_dim, groups=groups, dropout=dropout) for _ in range(2))
        self.attentions = nn.ModuleList(
            [SelfAttention(ch, groups=groups, head_dim=head_dim)]) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, emb)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, emb)


class UNet(nn.Module):
    """Epsilon-prediction UNet, ``[B, C, H, W] x int64 [B] -> [B, C, H, W]``.

    Args:
        in_channels: image channels (the output has the same count).
        block_out_channels: channels per resolution level, highest resolution first; every
            level but the last halves the resolution, so ``H, W`` must be divisible by
            ``2 ** (len(block_out_channels) - 1)``.
        layers_per_block: resnets per down level (the up levels have one more).
        down_attention / up_attention: per-level attention flags; ``up_attention[i]`` is for
            the ``i``-th up level, i.e. lowest resolution first (diffusers' order).
        norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
        attention_head_dim: channels per attention head (``None``: one head per layer).
        dropout: dropout probability inside every resnet.
        mid_attention: whether the mid block has attention (diffusers' ``add_attention``).
    """

    def __init__(self, in_channels: int, block_out_channels: Sequence[int], layers_per_block: int,
                 down_attention: Sequence[bool], up_attention: Sequence[bool], *,
                 norm_num_groups: int = 32, attention_head_dim: int | None = 8,
                 dropout: float = 0.0, mid_attention: bool = True) -> None:
        super().__init__()
        chs = list(block_out_channels)
        n = len(chs)
        if len(down_attention) != n or len(up_attention) != n:
            raise ValueError("need one down and one up attention flag per level")
        emb_dim = 4 * chs[0]
        common = dict(groups=norm_num_groups, head_dim=attention_head_dim, dropout=dropout)
        self.in_channels = in_channels
        self.levels = n

        self.time_embedding = TimestepMLP(chs[0], emb_dim)
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)

        skip_chs = [chs[0]]  # channels of each activation the down path stores
        self.down_blocks = nn.ModuleList()
        for i in range(n):
            last = i == n - 1
            self.down_blocks.append(DownBlock(
                chs[max(i - 1, 0)], chs[i], emb_dim, n_layers=layers_per_block,
                attention=down_attention[i], downsample=not last, **common))
            skip_chs += [chs[i]] * (layers_per_block + (0 if last else 1))

        self.mid_block = MidBlock(chs[-1], emb_dim, attention=mid_attention, **common)

        self.up_blocks = nn.ModuleList()
        prev = chs[-1]
        for i, out_ch in enumerate(reversed(chs)):
            mine = [skip_chs.pop() for _ in range(layers_per_block + 1)]
            self.up_blocks.append(UpBlock(prev, out_ch, mine, emb_dim, attention=up_attention[i],
                                          upsample=i < n - 1, **common))
            prev = out_ch

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, chs[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chs[0], in_channels, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The :data:`~cl_diffusion.diffusion.forward.EpsModel` contract: ``eps`` ``[B, C, H, W]`` from
        ``x_t`` ``[B, C, H, W]`` and ``t`` int64 ``[B]`` (or 0-d)."""
        t = t.reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t
        emb = self.time_embedding(timestep_embedding(t, self.conv_in.out_channels).to(x_t.dtype))
        h = self.conv_in(x_t)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb)
            skips += block_skips
        h = self.mid_block(h, emb)
        for block in self.up_blocks:
            h = block(h, skips, emb)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))
