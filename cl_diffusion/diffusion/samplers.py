"""Reverse-process samplers. Every sampler has the same signature, so any one can replace another:

    sampler(model, schedule, x_T, *, steps, eta=0.0, spacing="trailing", clip_x0=True,
            generator=None, stop_at=None, progress=False) -> x

- ``model(x_t [B, C, H, W], t int64 [B]) -> eps_pred [B, C, H, W]``.
- ``x_T``: ``[B, C, H, W]`` starting noise, on ``schedule.device``; it is taken to be at timestep
  ``ddim_timesteps(T, steps, spacing)[0]`` (``T - 1`` for trailing spacing). The working dtype is
  ``x_T.dtype``; schedule coefficients are computed in float64 and cast.
- ``stop_at``: int64 ``[B]`` or None (= all ``-1``). Sample ``b`` follows the usual trajectory but
  stops at its own timestep ``stop_at[b]`` and the sampler returns ``x_{stop_at[b]}`` for it
  (``-1`` = run to ``x0``). At a step ``t -> t_prev``, samples with ``t <= stop_at`` are left
  unchanged and the others jump to ``max(t_prev, stop_at)``. With ``stop_at`` at or above the first
  timestep, ``x_T`` is returned unchanged.
- Samplers run under ``torch.no_grad()`` (not inference mode, so their outputs can be used as
  training targets); they also work when the caller is in ``torch.inference_mode()``.
- Noise is drawn from ``generator`` on the generator's device and moved to ``x_T``'s device; a
  generator on ``x_T``'s device avoids that copy.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import UserError, choice_error
from .forward import EpsModel, predict_x0
from .schedule import NoiseSchedule, extract

SPACINGS = ("trailing", "leading")


class Sampler(Protocol):
    def __call__(self, model: EpsModel, schedule: NoiseSchedule, x_T: Tensor, *, steps: int,
                 eta: float = 0.0, spacing: str = "trailing", clip_x0: bool = True,
                 generator: torch.Generator | None = None, stop_at: Tensor | None = None,
                 progress: bool = False) -> Tensor: ...


def ddim_timesteps(T: int, S: int, spacing: str) -> Tensor:
    """The ``S`` sampling timesteps, descending, as an int64 CPU tensor ``[S]`` in ``{0..T-1}``.

    Lin et al. (2023) Sec. 3.3 / Table 2 (diffusers' ``timestep_spacing``):
    ``'trailing'``: ``round(T - k T / S) - 1`` for ``k = 0..S-1`` (starts at ``T - 1``, so the first
    step sees pure noise under zero terminal SNR); ``'leading'``: ``k * (T // S)`` for
    ``k = S-1..0`` (starts at ``(S - 1) * (T // S)``, ends at 0).
    """
    if spacing not in SPACINGS:
        raise choice_error("spacing", spacing, SPACINGS)
    if not 1 <= S <= T:
        raise UserError(f"sampling steps must be in 1..{T} (the number of diffusion steps), got {S}")
    if spacing == "trailing":
        ts = np.round(T - np.arange(S, dtype=np.float64) * (T / S)).astype(np.int64) - 1
    else:
        ts = (np.arange(S, dtype=np.int64) * (T // S))[::-1].copy()
    if np.any(np.diff(ts) >= 0):  # cannot happen for 1 <= S <= T; guards rounding surprises
        raise AssertionError(f"timesteps not strictly descending: {ts}")
    return torch.from_numpy(ts)


@dataclass
class _Plan:
    """What one sampling call needs on the device, computed once before the loop."""

    timesteps: Tensor  # int64 [S]: t at each step, descending
    t_prev: Tensor  # int64 [S]: the next timestep, -1 after the last (x0)
    stop_at: Tensor  # int64 [B]: each sample's stopping timestep, -1 = x0
    alpha_bar_ext: Tensor  # float64 [T+1]: alpha_bar_{i-1} at index i, with alpha_bar_{-1} = 1
    n_steps: int  # steps actually run: those with some sample still active


def _plan(schedule: NoiseSchedule, x_T: Tensor, steps: int, spacing: str,
          stop_at: Tensor | None) -> _Plan:
    device = schedule.device
    if x_T.device != device:
        raise ValueError(f"x_T is on {x_T.device} but the schedule on {device}; use schedule.to(device)")
    ts = ddim_timesteps(schedule.T, steps, spacing)
    t_prev = torch.cat([ts[1:], torch.tensor([-1])])
    B = x_T.shape[0]
    if stop_at is None:
        stop, n_steps = torch.full((B,), -1, dtype=torch.int64, device=device), steps
    else:
        if stop_at.shape != (B,) or stop_at.is_floating_point():
            raise ValueError(f"stop_at must be an integer tensor of shape [{B}], got {stop_at.dtype} "
                             f"{tuple(stop_at.shape)}")
        stop = stop_at.to(device=device, dtype=torch.int64)
        lo, hi = torch.stack([stop.min(), stop.max()]).tolist()  # the one host sync
        if lo < -1 or hi > schedule.T - 1:
            raise ValueError(f"stop_at must be in -1..{schedule.T - 1}, got values in {lo}..{hi}")
        n_steps = int((ts > lo).sum())
    ab_ext = torch.cat([torch.ones(1, dtype=torch.float64, device=device), schedule.alpha_bar])
    return _Plan(ts.to(device), t_prev.to(device), stop, ab_ext, n_steps)


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` (on its own device)."""
    if generator is None:
        return torch.randn_like(x)
    z = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return z.to(x.device)


# update(x_t, t, s, eps) -> x_s for one step t -> s; t: int64 [B] (all equal), s: int64 [B] (s < t
# where active, -1 = x0).
Update = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def _run_chain(model: EpsModel, x_T: Tensor, plan: _Plan, update: Update, progress: bool,
               desc: str) -> Tensor:
    """The loop shared by all samplers: call the model, step active samples, freeze stopped ones."""
    x = x_T
    B = x.shape[0]
    bshape = (B,) + (1,) * (x.dim() - 1)
    for k in tqdm(range(plan.n_steps), desc=desc, disable=not progress, leave=False):
        t = plan.timesteps[k].repeat(B)
        s = torch.maximum(plan.t_prev[k], plan.stop_at)
        active = (t > plan.stop_at).view(bshape)
        eps = model(x, t).to(x.dtype)
        x = torch.where(active, update(x, t, s, eps), x)
    return x


def _ddim_update(schedule: NoiseSchedule, ab_ext: Tensor, x_t: Tensor, t: Tensor, s: Tensor,
                 eps: Tensor, *, eta: float, clip_x0: bool,
                 generator: torch.Generator | None) -> Tensor:
    """One DDIM step ``x_t -> x_s``, DDIM (Song et al. 2021) Eq. 12 with sigma from Eq. 16.

    ==============================  ================================================
    code                            paper
    ==============================  ================================================
    ``ab_t``, ``ab_s``              ``alpha_t``, ``alpha_{t-1}`` (DDIM writes alpha for alpha_bar)
    ``x0_pred``                     "predicted x0" term of Eq. 12
    ``dir_coef * eps``              "direction pointing to x_t"
    ``sigma``                       ``sigma_t(eta)``, Eq. 16
    ==============================  ================================================

    ``eps`` in the direction term is the model's eps even when ``x0_pred`` is clipped (as in
    diffusers' DDIMScheduler with ``use_clipped_model_output=False``).
    """
    ab_t = extract(schedule.alpha_bar, t, x_t.shape, torch.float64)
    ab_s = extract(ab_ext, s + 1, x_t.shape, torch.float64)
    x0_pred = predict_x0(schedule, x_t, t, eps, clip_x0)
    sigma = eta * ((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s).clamp(min=0.0)).sqrt()
    dir_coef = (1.0 - ab_s - sigma ** 2).clamp(min=0.0).sqrt()
    x_s = ab_s.sqrt().to(x_t.dtype) * x0_pred + dir_coef.to(x_t.dtype) * eps
    if eta > 0:
        x_s = x_s + sigma.to(x_t.dtype) * _randn_like(x_t, generator)
    return x_s


def _ddpm_update(schedule: NoiseSchedule, ab_ext: Tensor, x_t: Tensor, t: Tensor, s: Tensor,
                 eps: Tensor, *, clip_x0: bool, generator: torch.Generator | None) -> Tensor:
    """One ancestral step ``x_s ~ q(x_s | x_t, x0_pred)``, DDPM (Ho et al. 2020) Eqs. 6-7 / Alg. 2.

    Respaced chain (Nichol & Dhariwal 2021 Sec. 4): ``beta = 1 - alpha_bar_t / alpha_bar_s``;
    mean ``= sqrt(alpha_bar_s) beta / (1 - alpha_bar_t) x0_pred
    + sqrt(1 - beta) (1 - alpha_bar_s) / (1 - alpha_bar_t) x_t``; variance
    ``beta_tilde = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta`` (0 when ``s = -1``).
    """
    ab_t = extract(schedule.alpha_bar, t, x_t.shape, torch.float64)
    ab_s = extract(ab_ext, s + 1, x_t.shape, torch.float64)
    x0_pred = predict_x0(schedule, x_t, t, eps, clip_x0)
    beta = (1.0 - ab_t / ab_s).clamp(0.0, 1.0)
    coef_x0 = ab_s.sqrt() * beta / (1.0 - ab_t)
    coef_xt = (1.0 - beta).sqrt() * (1.0 - ab_s) / (1.0 - ab_t)
    std = ((1.0 - ab_s) / (1.0 - ab_t) * beta).sqrt()
    dt = x_t.dtype
    mean = coef_x0.to(dt) * x0_pred + coef_xt.to(dt) * x_t
    return mean + std.to(dt) * _randn_like(x_t, generator)


@torch.no_grad()
def ddim_sample(model: EpsModel, schedule: NoiseSchedule, x_T: Tensor, *, steps: int,
                eta: float = 0.0, spacing: str = "trailing", clip_x0: bool = True,
                generator: torch.Generator | None = None, stop_at: Tensor | None = None,
                progress: bool = False) -> Tensor:
    """DDIM sampling, DDIM (Song et al. 2021) Eq. 12 (sigma from Eq. 16) over ``steps`` timesteps.

    The last step goes to ``alpha_bar = 1`` and returns ``x0_pred`` (diffusers' ``set_alpha_to_one``).
    ``eta = 0`` is deterministic; ``eta > 0`` draws noise from ``generator``. See the module
    docstring for the shared arguments. Returns ``[B, C, H, W]`` (``x0`` in ``[-1, 1]`` when
    ``clip_x0`` and ``stop_at`` is None), dtype and device of ``x_T``.
    """
    if eta < 0:
        raise UserError(f"eta must be >= 0, got {eta}")
    plan = _plan(schedule, x_T, steps, spacing, stop_at)
    update = functools.partial(_ddim_update, schedule, plan.alpha_bar_ext, eta=eta, clip_x0=clip_x0,
                               generator=generator)
    return _run_chain(model, x_T, plan, update, progress, desc="DDIM")


@torch.no_grad()
def ddpm_sample(model: EpsModel, schedule: NoiseSchedule, x_T: Tensor, *, steps: int,
                eta: float = 0.0, spacing: str = "trailing", clip_x0: bool = True,
                generator: torch.Generator | None = None, stop_at: Tensor | None = None,
                progress: bool = False) -> Tensor:
    """Ancestral sampling, DDPM (Ho et al. 2020) Eq. 11 / Alg. 2, on a respaced chain of ``steps``.

    The chain's betas come from ``alpha_bar`` at the chosen timesteps (``steps = T`` with trailing
    spacing is the original chain); the posterior variance is ``beta_tilde`` (Eq. 7). ``eta`` is
    ignored (ancestral sampling is stochastic by definition; with ``clip_x0`` off it equals DDIM with
    ``eta = 1``, up to :data:`~.forward.ALPHA_BAR_EPS`). ``stop_at`` jumps through
    ``q(x_s | x_t, x0_pred)`` to any earlier ``s``.
    Returns ``[B, C, H, W]``, dtype and device of ``x_T``.
    """
    plan = _plan(schedule, x_T, steps, spacing, stop_at)
    update = functools.partial(_ddpm_update, schedule, plan.alpha_bar_ext, clip_x0=clip_x0,
                               generator=generator)
    return _run_chain(model, x_T, plan, update, progress, desc="DDPM")


SAMPLERS: dict[str, Sampler] = {"ddim": ddim_sample, "ddpm": ddpm_sample}
