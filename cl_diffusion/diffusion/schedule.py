"""Noise schedules: beta sequences and the float64 arrays every diffusion formula reads.

Notation (DDPM, Ho et al. 2020): ``betas[t] = beta_t``, ``alphas[t] = 1 - beta_t``,
``alpha_bar[t] = prod_{s<=t} alphas[s]``, for timesteps ``t`` in ``{0..T-1}`` (index 0 is the
paper's ``t = 1``). Arrays are computed once in float64 and read through :func:`extract`, which
casts to the working dtype (as openai/improved-diffusion does).
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import choice_error

if TYPE_CHECKING:
    from ..config import RunConfig

SCHEDULES = ("linear", "cosine")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Linear schedule, DDPM (Ho et al. 2020) Sec. 4: ``beta_t`` evenly spaced in [beta_start, beta_end].

    Returns float64 ``[T]``. Not rescaled by ``1000 / T`` (diffusers' ``'linear'`` convention).
    """
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule, Nichol & Dhariwal (2021) Eq. 17.

    ``alpha_bar(t) = f(t) / f(0)`` with ``f(t) = cos(((t / T + s) / (1 + s)) * pi / 2) ** 2``, and
    ``beta_t = min(1 - alpha_bar(t) / alpha_bar(t - 1), max_beta)``. Returns float64 ``[T]``.
    """
    u = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas to zero terminal SNR, Lin et al. (2023) Algorithm 1.

    Shifts ``sqrt(alpha_bar)`` so its last entry is exactly 0, then scales it so its first entry
    is unchanged; the last returned beta is exactly 1. ``betas``: ``[T]``; returns float64 ``[T]``.
    """
    sqrt_ab = np.sqrt(np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)))
    first, last = sqrt_ab[0], sqrt_ab[-1]
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab ** 2
    alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


class NoiseSchedule:
    """Precomputed float64 schedule arrays, each a torch tensor ``[T]`` on :attr:`device`.

    Attributes (paper symbols):
        betas: ``beta_t``.
        alpha_bar: ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``; strictly decreasing, may end at exactly 0.
        sqrt_alpha_bar, sqrt_one_minus_alpha_bar: ``sqrt(alpha_bar_t)``, ``sqrt(1 - alpha_bar_t)``
            (the forward process, DDPM (Ho et al. 2020) Eq. 4).

    The samplers derive every reverse-step coefficient (DDIM's Eq. 12, DDPM's posterior variance
    ``beta_tilde``, Eq. 7) from ``alpha_bar`` alone, for any pair of respaced timesteps, so the
    schedule holds no per-step posterior arrays.

    Args:
        betas: ``[T]`` with ``0 < beta_t < 1``, except the last, which may be exactly 1 (zero
            terminal SNR). Any array-like; stored as float64.
    """

    _ARRAYS = ("betas", "alpha_bar", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar")

    def __init__(self, betas: np.ndarray | Sequence[float]) -> None:
        b = _check_betas(betas)
        alpha_bar = np.cumprod(1.0 - b)
        arrays = {
            "betas": b,
            "alpha_bar": alpha_bar,
            "sqrt_alpha_bar": np.sqrt(alpha_bar),
            "sqrt_one_minus_alpha_bar": np.sqrt(1.0 - alpha_bar),
        }
        for name in self._ARRAYS:
            setattr(self, name, torch.from_numpy(arrays[name]))

    @classmethod
    def from_config(cls, run_cfg: "RunConfig") -> "NoiseSchedule":
        """Build from a RunConfig's ``num_timesteps, schedule, beta_start, beta_end, zero_terminal_snr``."""
        T = run_cfg.num_timesteps
        if run_cfg.schedule == "linear":
            betas = linear_betas(T, run_cfg.beta_start, run_cfg.beta_end)
        elif run_cfg.schedule == "cosine":
            betas = cosine_betas(T)
        else:
            raise choice_error("schedule", run_cfg.schedule, SCHEDULES)
        if run_cfg.zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas)

    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return int(self.betas.shape[0])

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        """A copy with every array on ``device``; storage stays float64 (cast in :func:`extract`)."""
        out = copy.copy(self)
        for name in self._ARRAYS:
            setattr(out, name, getattr(self, name).to(device))
        return out

    def __repr__(self) -> str:
        ab = self.alpha_bar
        return (f"NoiseSchedule(T={self.T}, alpha_bar[0]={float(ab[0]):.6g}, "
                f"alpha_bar[T-1]={float(ab[-1]):.6g}, device={self.device})")


def _check_betas(betas: np.ndarray | Sequence[float]) -> np.ndarray:
    b = np.array(betas, dtype=np.float64)
    if b.ndim != 1 or b.shape[0] < 2:
        raise ValueError(f"betas must be 1-D with at least 2 entries, got shape {b.shape}")
    if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b[:-1] >= 1) or b[-1] > 1:
        raise ValueError("betas must be finite with 0 < beta_t < 1 (the last may equal 1)")
    return b


def extract(a: Tensor, t: Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Read ``a[t]`` for a batch and shape it to broadcast against an image batch.

    Args:
        a: schedule array ``[T]`` (float64), on the same device as ``t``.
        t: timesteps, int64 ``[B]``.
        shape: the shape to broadcast against, ``[B, ...]`` (e.g. ``[B, C, H, W]``).
        dtype: dtype of the result (the cast happens after the float64 read).

    Returns:
        ``[B, 1, ..., 1]`` with ``len(shape)`` dimensions.
    """
    if a.device != t.device:
        raise ValueError(f"schedule array is on {a.device} but t is on {t.device}; "
                         "move the schedule with NoiseSchedule.to(device)")
    return a[t].to(dtype).reshape(t.shape[0], *([1] * (len(shape) - 1)))
