"""Generation with per-sample seeds, and the sample grid written after each task.

Sample i's starting noise x_T depends only on (run seed, i), never on the task or strategy,
so every strategy is compared on the same noise and any sample can be reproduced alone
(as in NVlabs/edm's ``generate.py``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import Config
from .diffusion import SAMPLERS
from .diffusion.schedule import NoiseSchedule
from .execution import Execution
from .stream import TaskStream


def per_index_noise(seed: int, start: int, n: int, shape: tuple[int, int, int],
                    device: torch.device) -> torch.Tensor:
    """x_T ~ N(0, I) for sample indices start..start+n-1, each from its own seeded generator.

    Returns [n, C, H, W] float32 on ``device``.
    """
    out = torch.empty((n, *shape))
    for j in range(n):
        g = torch.Generator().manual_seed((seed * 1_000_003 + start + j) % (1 << 63))
        out[j] = torch.randn(shape, generator=g)
    return out.to(device)


@torch.no_grad()
def generate(model: nn.Module, schedule: NoiseSchedule, cfg: Config, shape: tuple[int, int, int], n: int,
             device: torch.device, steps: int, start: int = 0, batch_size: int = 256,
             sampler: str = "ddim") -> torch.Tensor:
    """n samples x0 [n, C, H, W] in [-1, 1] (on CPU), DDIM with the run's eta/spacing/clip settings."""
    run = cfg.run
    was_training = model.training
    model.eval()
    chunks = []
    with Execution.resolve(run, torch.device(device)).autocast():
        for lo in range(0, n, batch_size):
            m = min(batch_size, n - lo)
            x_T = per_index_noise(run.seed, start + lo, m, shape, device)
            g = torch.Generator(device=device).manual_seed(run.seed + start + lo)
            chunks.append(SAMPLERS[sampler](model, schedule, x_T, steps=steps, eta=run.eta, spacing=run.spacing,
                                            clip_x0=run.clip_x0, generator=g).float().cpu())
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty((0, *shape))


def save_grid(x: torch.Tensor, path: Path, title: str = "") -> None:
    """Save images x [N, C, H, W] in [-1, 1] as one PNG grid (atomically)."""
    import io

    from torchvision.utils import make_grid, save_image

    from .io import atomic_write_bytes

    nrow = max(1, int(round(x.shape[0] ** 0.5)))
    grid = make_grid((x.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def sample_grid(model: nn.Module, schedule: NoiseSchedule, cfg: Config, stream: TaskStream,
                device: torch.device, path: Path, title: str = "") -> torch.Tensor:
    """Draw ``grid_samples`` samples at the evaluation DDIM steps and save them as a PNG grid."""
    shape = (stream.channels, stream.image_size, stream.image_size)
    x = generate(model, schedule, cfg, shape, cfg.run.grid_samples, device, steps=cfg.eval.eval_steps,
                 batch_size=cfg.eval.eval_batch_size)
    save_grid(x, path, title)
    return x
