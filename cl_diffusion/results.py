"""The one reader of committed results (``results/<benchmark>/<profile>/<variant>/seed<N>/``).

A run folder counts when its ``manifest.json`` says ``"status": "complete"``. It holds
``metrics.csv`` (one row per task), usually ``per_task.csv`` (one row per (task_after, task_j)) and
``config.json``. :mod:`cl_diffusion.tables` and the ``paper_figures/`` scripts both read through
here, so they see the same runs. Files written before a column existed simply lack it: readers get
NaN there, never an error (:func:`last_task`, :func:`run_aggregates`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .evaluation.aggregates import KINDS, aggregates, matrix

RUN_COLUMNS = ("benchmark", "profile", "variant", "strategy", "seed")  # what identifies a run
#: the order of strategies in tables and figures: the paper's, then the other suites' baselines
ORDER = ("finetune", "joint", "gr", "gd", "lwf", "gaussian", "pgd",
         "er", "agem", "ewc", "si", "mas", "l2", "ensemble", "lora")


def variant_key(variant: str) -> tuple:
    """Sort key of a variant name ``<strategy>[__<key>=<value>...]``: the strategy's place in
    :data:`ORDER` (unknown ones after, by name), then its grid values, numbers numerically."""
    strategy, _, rest = variant.partition("__")
    rank = ORDER.index(strategy) if strategy in ORDER else len(ORDER)
    parts = []
    for kv in rest.split("__") if rest else []:
        k, _, v = kv.partition("=")
        try:
            parts.append((k, 0, float(v), ""))
        except ValueError:
            parts.append((k, 1, 0.0, v))
    return rank, strategy, parts


@dataclass(frozen=True)
class Run:
    """One complete run folder and its manifest."""

    folder: Path
    manifest: dict

    @property
    def ids(self) -> dict:
        m = self.manifest
        return {"benchmark": m["benchmark"], "profile": m["profile"], "variant": m["variant"],
                "strategy": m["strategy"], "seed": int(m["seed"])}


def complete_runs(results: Path | str | Sequence[Path | str], benchmark: str | None = None,
                  profile: str | None = None) -> list[Run]:
    """The complete runs under ``results`` (one folder or several, e.g. ``results/`` and a
    re-evaluation's folder), sorted by folder within each; optionally of one benchmark / profile."""
    roots = [results] if isinstance(results, (str, Path)) else list(results)
    runs = []
    for manifest in (m for root in roots for m in sorted(Path(root).glob("*/*/*/seed*/manifest.json"))):
        m = json.loads(manifest.read_text())
        if m.get("status") != "complete":
            continue
        if (benchmark and m["benchmark"] != benchmark) or (profile and m["profile"] != profile):
            continue
        runs.append(Run(manifest.parent, m))
    return runs


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def read_metrics(runs: Iterable[Run]) -> pd.DataFrame:
    """All ``metrics.csv`` rows of ``runs``, with the run's ids, ``run_dir``, ``grid_<key>`` (the
    sweep's ``--grid`` values) and ``param_<key>`` (its strategy parameters, from config.json)."""
    frames = []
    for run in runs:
        df = pd.read_csv(run.folder / "metrics.csv")
        for key, value in run.ids.items():
            df[key] = value
        df["run_dir"] = str(run.folder)
        for k, v in run.manifest.get("grid", {}).items():
            df[f"grid_{k}"] = v
        config = run.folder / "config.json"
        params = json.loads(config.read_text()).get("strategy_params", {}) if config.is_file() else {}
        for k, v in params.items():  # e.g. teacher_steps, lambda: also for runs at their defaults
            df[f"param_{k}"] = v
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_aggregates(per_task: pd.DataFrame, columns: Iterable[str]) -> dict[str, float]:
    """AIQ/AFQ/FR (:mod:`cl_diffusion.evaluation.aggregates`) of each per-task ``column`` of one
    run's ``per_task.csv``, as ``<column>_aiq`` ...; NaN where the file or the column is missing."""
    out = {}
    n_tasks = int(per_task["task_after"].max()) if "task_after" in per_task and len(per_task) else 0
    for col in columns:
        if n_tasks and col in per_task:
            a = matrix(per_task["task_after"], per_task["task_j"], per_task[col], n_tasks)
            out.update({f"{col}_{kind}": v for kind, v in aggregates(a).items()})
        else:
            out.update({f"{col}_{kind}": math.nan for kind in KINDS})
    return out


def last_task(runs: Iterable[Run], columns: Iterable[str], aggregated: Iterable[str] = ()) -> pd.DataFrame:
    """One row per run: its ids, ``columns`` from the last row of ``metrics.csv`` and the
    aggregates of the ``aggregated`` per-task columns; NaN wherever a file lacks a column."""
    columns, aggregated = list(columns), list(aggregated)
    rows = []
    for run in runs:
        last = pd.read_csv(run.folder / "metrics.csv").iloc[-1]
        row = dict(run.ids)
        row.update({c: float(last[c]) if c in last and pd.notna(last[c]) else math.nan for c in columns})
        row.update(run_aggregates(_read_csv(run.folder / "per_task.csv"), aggregated))
        rows.append(row)
    return pd.DataFrame(rows, columns=[*RUN_COLUMNS, *columns, *(f"{c}_{k}" for c in aggregated for k in KINDS)])

