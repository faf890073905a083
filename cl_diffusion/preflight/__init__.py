"""Preflight: a run is checked in full before it spends any compute, and says what it will cost.

Every command (``run``, ``sweep``, ``reevaluate``, ``bench``) calls these checks on the resolved
config before it loads data, builds a network on the device or makes a folder; a bad input is one
:class:`~cl_diffusion.errors.UserError` line and exit status 2.

- :mod:`.checks`: :func:`early_checks`, what can be refused before torch is imported (names,
  options, paths), and the folder checks :func:`check_out_dir` / :func:`check_new_dir`.
- :mod:`.memory`: :func:`check_run`, the rest, on the resolved
  :class:`~cl_diffusion.config.Config` (task count, model preset, batch size, data and Inception
  paths, and the memory the run needs against what the device has, unless ``force``);
  :func:`check_stream` once the data is loaded.
- :mod:`.cost`: :func:`cost_lines`, the FLOPs of the whole protocol, the time they take on this
  device and, on a CPU, the profile that fits in a few hours.
- :mod:`.units`: sizes, FLOPs, counts and durations as the messages print them.

The names below are re-exported for importing; to monkeypatch one, patch the module that defines it.
"""
from .checks import FLAG_OPTIONS, check_new_dir, check_out_dir, check_paths, early_checks, static_names
from .cost import (CALIBRATE_ABOVE_FLOP, CALIBRATION_MEMORY, CALIBRATION_SECONDS, SUGGEST_ABOVE_SECONDS,
                   ImagePasses, Rates, calibrate, cost_lines, image_passes, run_flops)
from .memory import (BACKWARD_TRANSIENTS, RESERVE, SAMPLING_SHARE, DataShape, Footprint, Plan, available_memory,
                     check_memory, check_run, check_stream, data_shape, footprint, memory_parts, total)
from .units import format_bytes, format_count, format_duration, format_flops

__all__ = [
    "BACKWARD_TRANSIENTS", "CALIBRATE_ABOVE_FLOP", "CALIBRATION_MEMORY", "CALIBRATION_SECONDS", "FLAG_OPTIONS",
    "RESERVE", "SAMPLING_SHARE", "SUGGEST_ABOVE_SECONDS", "DataShape", "Footprint", "ImagePasses", "Plan", "Rates",
    "available_memory", "calibrate", "check_memory", "check_new_dir", "check_out_dir", "check_paths", "check_run",
    "check_stream", "cost_lines", "data_shape", "early_checks", "footprint", "format_bytes", "format_count",
    "format_duration", "format_flops", "image_passes", "memory_parts", "run_flops", "static_names", "total",
]
