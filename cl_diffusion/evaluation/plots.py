"""The class-histogram PNG written after each task (matplotlib, Agg backend). The sample grid is
drawn by :func:`cl_diffusion.sampling.save_grid`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import torch

from ..io import atomic_write_bytes


def save_class_histogram(p_true: torch.Tensor, p_gen: torch.Tensor, class_names: Sequence[str], path: Path,
                         title: str = "") -> None:
    """Bars of ``p_gen`` (generated samples, classified) next to ``p_true`` (seen test labels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(class_names)
    fig = Figure(figsize=(max(4.0, 0.55 * k + 1.5), 3.2), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global state
    ax = fig.add_subplot()
    xs = torch.arange(k).numpy()
    ax.bar(xs - 0.2, p_true.numpy(), width=0.4, label="p_true (seen test labels)", color="0.6")
    ax.bar(xs + 0.2, p_gen.numpy(), width=0.4, label="p_gen (classified samples)", color="tab:blue")
    ax.set_xticks(xs, [str(c) for c in class_names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of samples")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
