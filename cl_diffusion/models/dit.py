"""The DiT epsilon-model: a Vision Transformer on image patches with adaLN-Zero conditioning
(Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", Sec. 3.2, Fig. 3).

``x_t [B, C, H, W]`` is cut into ``p x p`` patches (a stride-``p`` convolution), each patch token
gets a fixed 2-D sine-cosine position, and ``depth`` transformer blocks run over the
``(H/p) * (W/p)`` tokens. Every block regresses shift, scale and gate of both of its sub-layers
from the timestep embedding ``c`` (adaLN-Zero): the gates start at zero, so each block starts as
the identity. The final layer modulates once more and decodes every token linearly back to its
``p * p * C`` pixels. Unconditional (no class tokens); the output is ``eps`` only (no learned
variance), the same contract as :class:`~cl_diffusion.models.unet.UNet`.

Presets ``dit-s-2`` (DiT-S/2: hidden 384, 12 blocks, 6 heads, patch 2) and ``dit-tiny`` register
themselves in ``MODELS`` when this module is imported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .layers import TimestepMLP, timestep_embedding
from .presets import MODELS


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[len(pos), dim]``: ``[sin(pos * w_i), cos(pos * w_i)]`` with ``w_i = 10000 ** (-2i / dim)``."""
    w = torch.exp(-math.log(10_000.0) * torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = pos.to(torch.float64)[:, None] * w[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D position embedding ``float32 [grid * grid, dim]`` of a row-major token grid:
    half the channels encode the row, half the column (MAE / DiT). ``dim`` must be divisible by 4."""
    pos = torch.arange(grid, dtype=torch.float64)
    rows = sincos_1d(dim // 2, pos).repeat_interleave(grid, dim=0)  # token i*grid+j -> row i
    cols = sincos_1d(dim // 2, pos).repeat(grid, 1)  # token i*grid+j -> column j
    return torch.cat([rows, cols], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` per sample; ``x [B, N, D]``, ``shift, scale [B, D]``."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``[B, N, D]`` (``F.scaled_dot_product_attention``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D/heads]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero (DiT Sec. 3.2): from ``c`` it regresses
    ``(shift, scale, gate)`` for attention and for the MLP;
    ``x += gate_a * Attn(modulate(LN(x)))``, ``x += gate_m * MLP(modulate(LN(x)))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D]`` tokens, ``c [B, D]`` conditioning -> ``[B, N, D]``."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada_ln(c).chunk(6, dim=1)
        x = x + gate_a[:, None, :] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None, :] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm, then a linear decoder of each token to ``p * p * C`` values."""

    def __init__(self, dim: int, patch: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_ln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch * patch * channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_ln(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Epsilon-prediction DiT, ``[B, C, H, W] x int64 [B] -> [B, C, H, W]``.

    Args:
        in_channels: image channels (the output has the same count).
        image_size: image side ``H = W``; a multiple of ``patch``.
        patch: patch side ``p``; the transformer sees ``(H / p) ** 2`` tokens.
        hidden: token width ``D`` (divisible by ``heads`` and by 4, for the 2-D position code).
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP width / ``D``.
        freq_dim: width of the sinusoidal timestep features fed to the timestep MLP.
    """

    def __init__(self, in_channels: int, image_size: int, *, patch: int, hidden: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, freq_dim: int = 256) -> None:
        super().__init__()
        self.in_channels, self.patch, self.grid, self.freq_dim = in_channels, patch, image_size // patch, freq_dim
        self.patch_embed = nn.Conv2d(in_channels, hidden, patch, stride=patch)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden, self.grid)[None], persistent=False)
        self.time_embedding = TimestepMLP(freq_dim, hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden, patch, in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linears (and patch conv, as a linear), zero biases,
        N(0, 0.02) timestep MLP, and zero adaLN regressors and decoder (adaLN-Zero)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        for lin in (self.time_embedding.linear_1, self.time_embedding.linear_2):
            nn.init.normal_(lin.weight, std=0.02)
        for m in [b.ada_ln[-1] for b in self.blocks] + [self.final.ada_ln[-1], self.final.linear]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, g*g, p*p*C]`` (row-major grid, each ordered ``(p_row, p_col, C)``) -> ``[B, C, g*p, g*p]``."""
        B, g, p = x.shape[0], self.grid, self.patch
        x = x.view(B, g, g, p, p, self.in_channels)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(B, self.in_channels, g * p, g * p)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The :data:`~cl_diffusion.diffusion.forward.EpsModel` contract: ``eps`` ``[B, C, H, W]`` from
        ``x_t`` ``[B, C, H, W]`` and ``t`` int64 ``[B]`` (or 0-d)."""
        t = t.reshape(-1).expand(x_t.shape[0]) if t.numel() == 1 else t
        c = self.time_embedding(timestep_embedding(t, self.freq_dim).to(x_t.dtype))  # [B, D]
        x = self.patch_embed(x_t).flatten(2).transpose(1, 2) + self.pos_embed.to(x_t.dtype)  # [B, N, D]
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final(x, c))


@dataclass(frozen=True)
class DiTPreset:
    """A :class:`DiT` configuration registered in ``MODELS`` (satisfies ``ModelPreset``)."""

    name: str  # registry name, used in error messages
    hidden: int  # token width D
    depth: int  # transformer blocks
    heads: int  # attention heads
    patch: int  # patch side p in pixels
    description: str  # one line for --list, with the intended resolution
    in_channels: int = 3  # native image channels
    image_size: int = 32  # native side in pixels
    mlp_ratio: float = 4.0  # MLP width / D

    def check(self, in_channels: int, image_size: int) -> None:
        """Raise :class:`UserError` if the network cannot be built for these inputs."""
        p = self.patch
        if image_size < p or image_size % p:
            sizes = ", ".join(str(p * k) for k in (1, 2, 4, 8, 16))
            raise UserError(f"image size {image_size} does not fit model preset {self.name!r} (patch {p}): "
                            f"valid sizes are multiples of {p} ({sizes}, ...)")
        if in_channels < 1:
            raise UserError(f"in_channels must be >= 1 for model preset {self.name!r}, got {in_channels}")
        if self.hidden % self.heads or self.hidden % 4:
            raise UserError(f"model preset {self.name!r}: hidden={self.hidden} must be divisible by "
                            f"heads={self.heads} and by 4")

    def build(self, in_channels: int, image_size: int) -> nn.Module:
        self.check(in_channels, image_size)
        return DiT(in_channels, image_size, patch=self.patch, hidden=self.hidden, depth=self.depth,
                   heads=self.heads, mlp_ratio=self.mlp_ratio)


def _dit(name: str, **kw: object) -> None:
    MODELS.add(name, DiTPreset(name=name, **kw))  # type: ignore[arg-type]


_dit("dit-s-2", hidden=384, depth=12, heads=6, patch=2, in_channels=3, image_size=32,
     description="DiT-S/2 (Peebles & Xie 2023), 32x32, 256 tokens of 2x2 patches, 12 blocks, adaLN-Zero")
_dit("dit-tiny", hidden=64, depth=2, heads=2, patch=2, in_channels=1, image_size=16,
     description="smoke-test DiT, 16x16, 64 tokens of 2x2 patches, 2 blocks of width 64")
