"""How the networks execute: memory format, precision and compilation.

Three run options choose how every eps-network call runs; none changes what is computed beyond
floating-point rounding, and each has a default per device (``auto``):

=================  ==========================================  =====================================
option             auto resolves to                            tolerance (tests/test_execution.py)
=================  ==========================================  =====================================
``memory_format``  ``channels_last`` on CPU and CUDA           eps output within 1e-5 relative L2
``precision``      ``bf16`` autocast on CUDA with native bf16,  eps output within 2e-2 relative L2,
                   else ``fp32`` (CPUs too, native bf16 or      loss within 2e-2 relative
                   not)
``compile``        ``on`` on CUDA, ``off`` on CPU              eps output within 1e-4 relative L2
=================  ==========================================  =====================================

Why these defaults: on a 2-core Ice Lake CPU (no native bf16) channels_last made a training step
1.2-1.3x faster, bf16 autocast made it 2x *slower* (emulated), and ``torch.compile`` gained 1.18x
after a 1-2 minute compile, which a CPU-scale run does not win back. On an AMD EPYC with native
bf16 (AVX-512 BF16), bf16 autocast gained 1.06x on the quick profile's training step in the
benchmark and made two real runs' training 1.4x slower (docs/bench.md): not worth results that
differ from every fp32 run, so a CPU stays in fp32 whatever its flags, and CPU results do not
depend on which CPU family ran them beyond rounding. The CUDA defaults follow the usual practice for
Hopper/Ampere GPUs and have not been measured on a GPU yet.

bf16 autocast covers the student's forward (the loss), the teacher's replay sampling and the
evaluation sampling; the sampler arithmetic, the loss reduction, the optimizer and the
evaluation classifier stay in fp32. The resolved choice is written to ``config.json``'s ``meta``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

import torch
from torch import nn

#: CPU flags that give native bf16 arithmetic (AVX-512 BF16, AMX tiles with bf16).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The ``flags`` line of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bf16 arithmetic natively (not emulated by conversions)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


@dataclass(frozen=True)
class Execution:
    """The resolved execution settings of one run on one device."""

    channels_last: bool = False
    bf16: bool = False
    compile: bool = False
    device_type: str = "cpu"

    @classmethod
    def resolve(cls, run: Any, device: torch.device) -> "Execution":
        """Resolve the ``auto`` values of ``run.memory_format``, ``run.precision`` and ``run.compile``."""
        return cls(channels_last=run.memory_format in ("channels_last", "auto"),
                   bf16=run.precision == "bf16" or (run.precision == "auto" and device.type == "cuda"
                                                     and native_bf16(device)),
                   compile=run.compile == "on" or (run.compile == "auto" and device.type == "cuda"),
                   device_type=device.type)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the resolved settings."""
        return {"memory_format": "channels_last" if self.channels_last else "contiguous",
                "precision": "bf16" if self.bf16 else "fp32", "compile": self.compile}

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model``'s weights into the chosen memory format and compile it in place.

        ``nn.Module.compile`` keeps parameter names (checkpoints are unchanged); a deep copy of a
        compiled module comes back eager, so copies (the teacher) are prepared again.
        """
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()
        return model

    def frozen_copy(self, model: nn.Module) -> nn.Module:
        """A prepared deep copy of ``model`` in eval mode with ``requires_grad`` off (teachers)."""
        net = copy.deepcopy(model).eval().requires_grad_(False)
        return self.prepare(net)

    def autocast(self) -> ContextManager[Any]:
        """bf16 autocast on this device when ``bf16``, else a no-op context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)

