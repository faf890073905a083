"""Shared helpers of the figure scripts: read results/ (never train), style, save."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ORDER = ("finetune", "joint", "gr", "gd", "lwf", "gaussian", "pgd")
COLORS = {"finetune": "#7f7f7f", "joint": "#000000", "gr": "#d62728", "gd": "#1f77b4", "lwf": "#2ca02c",
          "gaussian": "#9467bd", "pgd": "#ff7f0e"}


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--benchmark", default="fmnist-5")
    p.add_argument("--profile", default="quick")
    p.add_argument("--results", default=str(REPO / "results"))
    p.add_argument("--out", default=str(REPO / "paper_figures" / "figures"))
    return p


def load_runs(results: str, benchmark: str, profile: str) -> pd.DataFrame:
    """All per-task rows of complete runs, with variant, strategy, seed, ``grid_<key>`` (the sweep's
    ``--grid`` values) and ``param_<key>`` (the run's strategy parameters, from config.json) columns."""
    frames = []
    for manifest in sorted(Path(results).glob(f"{benchmark}/{profile}/*/seed*/manifest.json")):
        m = json.loads(manifest.read_text())
        if m.get("status") != "complete":
            continue
        df = pd.read_csv(manifest.parent / "metrics.csv")
        df["variant"], df["strategy"], df["seed"] = m["variant"], m["strategy"], int(m["seed"])
        df["run_dir"] = str(manifest.parent)
        for k, v in m.get("grid", {}).items():
            df[f"grid_{k}"] = v
        params = json.loads((manifest.parent / "config.json").read_text()).get("strategy_params", {})
        for k, v in params.items():  # e.g. teacher_steps, lambda: also for runs at their defaults
            df[f"param_{k}"] = v
        frames.append(df)
    if not frames:
        raise SystemExit(f"no complete runs under {results}/{benchmark}/{profile}: run the sweep first")
    return pd.concat(frames, ignore_index=True)


def sort_variants(variants) -> list[str]:
    def key(v: str):
        s = v.split("__")[0]
        return (ORDER.index(s) if s in ORDER else len(ORDER), v)
    return sorted(set(variants), key=key)


def mean_se(values: pd.Series) -> tuple[float, float]:
    v = values.dropna()
    if v.empty:
        return math.nan, math.nan
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)


def color(variant: str) -> str:
    return COLORS.get(variant.split("__")[0], "#8c564b")


def save(fig, out: str, name: str) -> Path:
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(path)
    return path
