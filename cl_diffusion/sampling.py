"""Generation with per-sample seeds, and the sample grid written after each task.

Sample i's starting noise x_T depends only on (run seed, i), never on the task or strategy,
so every strategy is compared on the same noise and any sample can be reproduced alone
(as in NVlabs/edm's ``generate.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import Config
from .diffusion import SAMPLERS
from .diffusion.schedule import NoiseSchedule
from .execution import Execution
from .mixture import routing
from .seeding import per_index_noise
from .stream import TaskStream


@dataclass(frozen=True)
class Sampling:
    """How evaluation samples are drawn: the run seed (sample i's x_T), DDIM steps, eta, timestep
    spacing, x0 clipping, and the execution settings (autocast)."""

    seed: int
    steps: int
    eta: float = 0.0
    spacing: str = "trailing"
    clip_x0: bool = True
    execution: Execution = Execution()

    @classmethod
    def of(cls, cfg: Config, execution: Execution, steps: int | None = None) -> "Sampling":
        """The run's settings, at ``steps`` DDIM steps (default: ``eval_steps``)."""
        run = cfg.run
        return cls(run.seed, steps or cfg.eval.eval_steps, run.eta, run.spacing, run.clip_x0, execution)


@torch.no_grad()
def generate(model: nn.Module, schedule: NoiseSchedule, how: Sampling, shape: tuple[int, int, int], n: int,
             device: torch.device, start: int = 0, batch_size: int = 256, sampler: str = "ddim") -> torch.Tensor:
    """Samples start..start+n-1: x0 [n, C, H, W] in [-1, 1] (on CPU); a :class:`~.mixture.Mixture`
    routes sample i to its expert by (seed, i)."""
    was_training = model.training
    model.eval()
    chunks = []
    with how.execution.autocast():
        for lo in range(0, n, batch_size):
            m = min(batch_size, n - lo)
            x_T = per_index_noise(how.seed, start + lo, m, shape, device)
            g = torch.Generator(device=device).manual_seed(how.seed + start + lo)
            with routing(model, how.seed, torch.arange(start + lo, start + lo + m)):
                x = SAMPLERS[sampler](model, schedule, x_T, steps=how.steps, eta=how.eta, spacing=how.spacing,
                                      clip_x0=how.clip_x0, generator=g)
            chunks.append(x.float().cpu())
    model.train(was_training)
    return torch.cat(chunks) if chunks else torch.empty((0, *shape))


def save_grid(x: torch.Tensor, path: Path) -> None:
    """Save images x [N, C, H, W] in [-1, 1] as one PNG grid (atomically)."""
    import io

    from torchvision.utils import make_grid, save_image

    from .io import atomic_write_bytes

    nrow = max(1, int(round(x.shape[0] ** 0.5)))
    grid = make_grid((x.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=1, pad_value=1.0)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def sample_grid(model: nn.Module, schedule: NoiseSchedule, how: Sampling, shape: tuple[int, int, int], n: int,
                device: torch.device, path: Path, batch_size: int = 256) -> torch.Tensor:
    """Draw samples 0..n-1 and save them as a PNG grid; returns them ([n, C, H, W] in [-1, 1])."""
    x = generate(model, schedule, how, shape, n, device, batch_size=batch_size)
    save_grid(x, path)
    return x
