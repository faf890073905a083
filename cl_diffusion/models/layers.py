"""UNet building blocks: timestep embedding, ResNet block, self-attention, resampling.

Submodule names follow diffusers' ``UNet2DModel`` (``norm1``, ``conv1``, ``time_emb_proj``,
``to_q``, ...), so the two models have the same parameter names up to ``to_out.0`` ->
``to_out``. Every block accepts ``channels_last`` inputs and keeps that memory format.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Sec. 3.5; DDPM App. B).

    Frequencies are ``max_period ** (-i / (dim/2 - freq_shift))`` for ``i < dim/2``; the output
    is ``[cos, sin]`` when ``flip_sin_to_cos`` else ``[sin, cos]``, zero-padded to odd ``dim``.

    Args:
        t: ``[B]`` timesteps (any numeric dtype).
        dim: embedding width.
    Returns:
        ``[B, dim]`` float32 on ``t``'s device.
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * i / (half - freq_shift))
    angles = t.float()[:, None] * freqs[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepMLP(nn.Module):
    """``Linear -> SiLU -> Linear``: ``[B, in_dim]`` -> ``[B, out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """Pre-norm ResNet block with an additive time-embedding bias (DDPM, Ho et al. 2020, App. B).

    ``h = conv1(SiLU(GN(x))) + Linear(SiLU(emb)); h = conv2(dropout(SiLU(GN(h))));
    out = shortcut(x) + h``, where the shortcut is a 1x1 conv when the channel count changes.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, groups: int, dropout: float,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x [B, in_ch, H, W]``, ``emb [B, emb_dim]`` -> ``[B, out_ch, H, W]``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SelfAttention(nn.Module):
    """Residual multi-head self-attention over the ``H*W`` positions (Vaswani et al. 2017).

    ``out = x + W_o · softmax(Q Kᵀ / sqrt(d_head)) V`` with ``Q, K, V`` linear maps of
    ``GN(x)``; computed with ``F.scaled_dot_product_attention``.
    """

    def __init__(self, channels: int, *, groups: int, head_dim: int | None,
                 eps: float = 1e-5) -> None:
        super().__init__()
        head_dim = channels if head_dim is None else head_dim
        if channels % head_dim:
            raise ValueError(f"attention channels {channels} not divisible by head_dim {head_dim}")
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> ``[B, C, H, W]``."""
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]

        def split(y: torch.Tensor) -> torch.Tensor:  # [B, HW, C] -> [B, heads, HW, C/heads]
            return y.unflatten(-1, (self.heads, c // self.heads)).transpose(1, 2)

        q, k, v = split(self.to_q(tokens)), split(self.to_k(tokens)), split(self.to_v(tokens))
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # [B, HW, C]
        out = self.to_out(attn).transpose(1, 2).reshape(b, c, h, w)
        return x + out


class Downsample(nn.Module):
    """3x3 conv with stride 2: ``[B, C, H, W]`` -> ``[B, C, H/2, W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv: ``[B, C, H, W]`` -> ``[B, C, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
