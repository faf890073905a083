"""Diffusion math: noise schedules, the forward process and loss, and the reverse-process samplers."""
from .forward import ALPHA_BAR_EPS, EpsModel, eps_mse, mse, predict_x0, q_sample, sample_timesteps
from .samplers import SAMPLERS, SPACINGS, Sampler, ddim_sample, ddim_timesteps, ddpm_sample
from .schedule import (SCHEDULES, NoiseSchedule, cosine_betas, extract, linear_betas,
                       rescale_zero_terminal_snr)

__all__ = [
    "ALPHA_BAR_EPS", "EpsModel", "eps_mse", "mse", "predict_x0", "q_sample", "sample_timesteps",
    "SAMPLERS", "SPACINGS", "Sampler", "ddim_sample", "ddim_timesteps", "ddpm_sample",
    "SCHEDULES", "NoiseSchedule", "cosine_betas", "extract", "linear_betas", "rescale_zero_terminal_snr",
]
