"""Interleaved timing on a shared machine.

Every case of a comparison runs once per round, in turn (A, B, A, B, ...), so slow changes of
the machine (other processes, clock scaling) hit all cases alike. A figure is the median over
rounds; a ratio is the median of the per-round ratios (each taken between adjacent calls). The
first warm-up round runs under :class:`~torch.utils.flop_counter.FlopCounterMode`, so FLOP
counts cost no extra call. A case that raises is reported with its error and dropped.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

Log = Callable[[str], None]


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, with the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call as counted by ``FlopCounterMode`` (2 per multiply-add of mm/conv/attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


@dataclass
class Timings:
    """The timed rounds of one case."""

    seconds: list[float] = field(default_factory=list)  # one entry per timed round
    flop: int | None = None  # FLOPs of one call (None: not counted)
    error: str | None = None  # set when the case raised; it then has no timings

    @property
    def median(self) -> float:
        return median(self.seconds)

    def to_dict(self) -> dict:
        out = {"median_s": self.median, "seconds": self.seconds, "flop": self.flop}
        return out if self.error is None else {"error": self.error}


def paired_ratio(num: Timings, den: Timings) -> float:
    """Median over rounds of ``num.seconds[i] / den.seconds[i]`` (NaN if either case failed)."""
    pairs = [a / b for a, b in zip(num.seconds, den.seconds) if b > 0]
    return median(pairs)


def paired_range(num: Timings, den: Timings) -> list[float]:
    """``[min, max]`` of the per-round ratios: the spread the median ratio hides."""
    pairs = [a / b for a, b in zip(num.seconds, den.seconds) if b > 0]
    return [min(pairs), max(pairs)] if pairs else []


def _error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def interleave(cases: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int,
               device: torch.device, count: bool = True, log: Log | None = None,
               label: str = "") -> dict[str, Timings]:
    """Run ``warmup`` untimed rounds then ``repeats`` timed rounds over ``cases`` in turn.

    Args:
        cases: name -> zero-argument callable (one training step, one sampling call, ...).
        repeats: timed rounds (>= 1); warmup: untimed rounds (>= 1 when ``count``).
        count: count each case's FLOPs during the first warm-up round.
        log: progress lines (one per round).
    Returns:
        name -> :class:`Timings` in the order of ``cases``.
    """
    out = {name: Timings() for name in cases}
    warmup = max(warmup, 1 if count else 0)
    for r in range(warmup + repeats):
        for name, fn in cases.items():
            res = out[name]
            if res.error is not None:
                continue
            try:
                if r == 0 and count:
                    res.flop = count_flops(fn)
                elif r >= warmup:
                    res.seconds.append(time_call(fn, device))
                else:
                    time_call(fn, device)
            except Exception as err:  # a variant the device cannot run is reported, not fatal
                res.error, res.seconds = _error_line(err), []
        if log is not None:
            kind = "warm-up" if r < warmup else "timed"
            now = ", ".join(f"{n} {t.seconds[-1]:.3g}s" for n, t in out.items() if t.seconds and r >= warmup)
            log(f"{label} round {r + 1}/{warmup + repeats} ({kind}){': ' + now if now else ''}")
    return out
