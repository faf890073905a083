"""The device's reference FLOP/s (a large dense fp32 GEMM) and what the device can do natively.

Achieved model FLOP/s are reported as a fraction of the measured GEMM rate on the same device,
thread count and moment (the GEMM runs interleaved with the training steps it is compared to).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..execution import BF16_CPU_FLAGS, cpu_flags, native_bf16
from ..io import cpu_model


def gemm_case(n: int, calls: int, device: torch.device,
              dtype: torch.dtype = torch.float32) -> Callable[[], None]:
    """``calls`` products of two ``[n, n]`` matrices into a preallocated output: ``2 n^3`` FLOPs each."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=c)

    return run


def device_info(device: torch.device) -> dict[str, object]:
    """Name, vector capability and native bf16 support of ``device`` (JSON-ready).

    On the CPU, bf16 is native only with one of :data:`BF16_CPU_FLAGS` in ``/proc/cpuinfo``;
    otherwise oneDNN emulates it with conversions and autocast bf16 is not expected to pay.
    """
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device), "capability": f"sm_{cap[0]}{cap[1]}",
                "native_bf16": native_bf16(device), "bf16_flags": [],
                "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                "tf32_cudnn": torch.backends.cudnn.allow_tf32,
                "cudnn_benchmark": torch.backends.cudnn.benchmark}
    flags = cpu_flags()
    found = sorted(f for f in BF16_CPU_FLAGS if f in flags)
    return {"name": cpu_model(), "capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(device), "bf16_flags": found,
            "avx512": sorted(f for f in flags if f.startswith("avx512"))}
