"""Forward process, x0 prediction and the training loss (DDPM, Ho et al. 2020).

Shapes: ``x0, x_t, eps`` are ``[B, C, H, W]`` in model space (``x0`` in ``[-1, 1]``); ``t`` is
int64 ``[B]`` in ``{0..T-1}`` on the schedule's device. Models are called as
``model(x_t, t) -> eps_pred [B, C, H, W]``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .schedule import NoiseSchedule, extract

#: An eps-network: ``model(x_t, t) -> eps``. ``x_t``: float ``[B, C, H, W]`` noisy images in the model
#: range, any memory format; ``t``: int64 ``[B]`` timesteps (a 0-d tensor is broadcast to the batch);
#: returns the predicted noise ``[B, C, H, W]``, same dtype and device as ``x_t``.
EpsModel = Callable[[Tensor, Tensor], Tensor]

# Added to alpha_bar_t under the square root when dividing by it in predict_x0. With zero
# terminal SNR alpha_bar_{T-1} = 0, and the paper's scheduler uses sqrt(alpha_bar_t + 1e-8) there.
ALPHA_BAR_EPS = 1e-8


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Sample ``x_t ~ q(x_t | x0)``: ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``.

    DDPM (Ho et al. 2020) Eq. 4. ``x0, eps``: ``[B, ...]``; ``t``: int64 ``[B]``. Returns ``[B, ...]``.
    """
    sqrt_ab = extract(schedule.sqrt_alpha_bar, t, x0.shape, x0.dtype)
    sqrt_one_minus_ab = extract(schedule.sqrt_one_minus_alpha_bar, t, x0.shape, x0.dtype)
    return sqrt_ab * x0 + sqrt_one_minus_ab * eps


def predict_x0(schedule: NoiseSchedule, x_t: Tensor, t: Tensor, eps: Tensor, clip: bool) -> Tensor:
    """Invert DDPM Eq. 4 for x0: ``x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t + 1e-8)``.

    DDIM (Song et al. 2021) Eq. 12, "predicted x0" term, with :data:`ALPHA_BAR_EPS` in the
    denominator so it stays finite when ``alpha_bar_t = 0`` (zero terminal SNR).

    Args:
        x_t, eps: ``[B, ...]``; ``t``: int64 ``[B]``.
        clip: clamp ``x0_pred`` to ``[-1, 1]``.

    Returns:
        ``x0_pred``: ``[B, ...]``, dtype of ``x_t``.
    """
    ab = extract(schedule.alpha_bar, t, x_t.shape, torch.float64)
    sqrt_one_minus_ab = (1.0 - ab).sqrt().to(x_t.dtype)
    inv_sqrt_ab = (ab + ALPHA_BAR_EPS).rsqrt().to(x_t.dtype)
    x0_pred = (x_t - sqrt_one_minus_ab * eps) * inv_sqrt_ab
    return x0_pred.clamp(-1.0, 1.0) if clip else x0_pred


def sample_timesteps(B: int, T: int, generator: torch.Generator | None,
                     device: torch.device | str) -> Tensor:
    """Training timesteps ``t ~ Uniform{0..T-1}`` (DDPM Alg. 1, line 3). Returns int64 ``[B]`` on ``device``.

    Drawn on the generator's device (``device`` when ``generator`` is None), then moved to ``device``.
    """
    draw_device = generator.device if generator is not None else device
    return torch.randint(0, T, (B,), generator=generator, device=draw_device).to(device)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """``mean((pred - target) ** 2)`` over batch and pixels: DDPM (Ho et al. 2020) Eq. 14 when
    ``target`` is the noise added, the distillation loss (GD, Masip et al. 2024, Sec. 4) when it is a
    teacher's prediction. ``pred, target``: ``[B, C, H, W]``; returns a scalar."""
    return torch.mean((pred - target) ** 2)


def eps_mse(model: EpsModel, schedule: NoiseSchedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """``L_simple = mean((eps_theta(x_t, t) - eps) ** 2)`` with ``x_t = q_sample(x0, t, eps)``.

    DDPM (Ho et al. 2020) Eq. 14. ``x0, eps``: ``[B, C, H, W]``; ``t``: int64 ``[B]``.
    Returns a scalar (mean over batch and pixels).
    """
    return mse(model(q_sample(schedule, x0, t, eps), t), eps)
