"""cifar100-10 / cifar100-20: CIFAR-100 (fine labels) as 10 tasks of 10 classes or 20 tasks of 5,
3x32x32, random horizontal flips; the CIFAR-10 protocol of Masip et al. (2024, Sec. 5) otherwise.

``--class-order seeded`` gives Avalanche's ``SplitCIFAR100(n_experiences, seed=seed)`` split.
"""
from cl_diffusion.benchmarks.cifar10_5 import SPEC as CIFAR10_5
from cl_diffusion.stream import BENCHMARKS, BenchmarkSpec

for n_tasks in (10, 20):
    spec = BenchmarkSpec(
        name=f"cifar100-{n_tasks}", dataset="cifar-100", n_tasks=n_tasks, image_size=32, hflip=True,
        description=f"CIFAR-100, {n_tasks} tasks x {100 // n_tasks} classes, 3x32x32, random horizontal flips",
        paper=CIFAR10_5.paper,  # epochs 200, batch 64, 20 DDIM steps, paper-cifar10 UNet
        profiles=CIFAR10_5.profiles,  # the quick profile's longer-trained classifier
    )
    BENCHMARKS.add(spec.name, spec)
