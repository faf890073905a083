"""Helpers of the ``python -m cl_diffusion.bench`` command: interleaved timing (``timing``), FLOP
counting and the device's GEMM reference (``flops``), the measured workloads (``workloads``), the
benchmark sections (``sections``) and the targets and stdout table (``report``)."""
