"""fmnist-5: Fashion-MNIST as 5 tasks of 2 classes, resized 28 -> 32 (Masip et al. 2024, Sec. 5)."""
from cl_diffusion.stream import BENCHMARKS, BenchmarkSpec

SPEC = BenchmarkSpec(
    name="fmnist-5", dataset="fashion-mnist", n_tasks=5, image_size=32, hflip=False,
    description="Fashion-MNIST, 5 tasks x 2 classes, 1x32x32, no flips",
    paper={"epochs": 100, "batch_size": 128, "eval_steps": 10, "model": "paper-fmnist"},
)
BENCHMARKS.add(SPEC.name, SPEC)
