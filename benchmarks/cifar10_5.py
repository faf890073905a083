"""cifar10-5: CIFAR-10 as 5 tasks of 2 classes, random horizontal flips (Masip et al. 2024, Sec. 5)."""
from cl_diffusion.stream import BENCHMARKS, BenchmarkSpec

SPEC = BenchmarkSpec(
    name="cifar10-5", dataset="cifar10", n_tasks=5, image_size=32, hflip=True,
    description="CIFAR-10, 5 tasks x 2 classes, 3x32x32, random horizontal flips",
    paper={"epochs": 200, "batch_size": 64, "eval_steps": 20, "model": "paper-cifar10"},
)
BENCHMARKS.add(SPEC.name, SPEC)
