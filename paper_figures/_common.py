"""Shared helpers of the figure scripts: read results/ (never train), style, save."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cl_diffusion.results import complete_runs, read_metrics, variant_key  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COLORS = {"finetune": "#7f7f7f", "joint": "#000000", "gr": "#d62728", "gd": "#1f77b4", "lwf": "#2ca02c",
          "gaussian": "#9467bd", "pgd": "#ff7f0e",
          # the other suites' baselines: drawn dashed (line_style)
          "er": "#8c564b", "agem": "#e377c2", "ewc": "#bcbd22", "si": "#17becf", "mas": "#ff9896",
          "l2": "#aec7e8", "ensemble": "#98df8a", "lora": "#c5b0d5"}
PAPER = ("finetune", "joint", "gr", "gd", "lwf", "gaussian", "pgd")  # Masip et al.'s strategies: solid lines


def parser(description: str, variants: bool = False) -> argparse.ArgumentParser:
    """The figure scripts' options; with ``variants``, also ``--variants`` (one line per strategy
    figures: which variants they draw)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--benchmark", default="fmnist-5")
    p.add_argument("--profile", default="quick")
    p.add_argument("--results", default=str(REPO / "results"))
    p.add_argument("--out", default=str(REPO / "paper_figures" / "figures"))
    if variants:
        p.add_argument("--variants", default="defaults",
                       help="the variants drawn, as the tables' --variants: names or shell patterns, "
                            "'defaults' = every strategy at its defaults (default: %(default)s)")
    return p


def pick(df: pd.DataFrame, spec: str) -> pd.DataFrame:
    """The rows of the variants ``spec`` names (:func:`cl_diffusion.tables.select_variants`); a name
    that matches no variant exits with status 2 and one line naming the valid ones."""
    from cl_diffusion.errors import UserError
    from cl_diffusion.tables import select_variants

    try:
        return select_variants(df, spec)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def load_runs(results: str, benchmark: str, profile: str) -> pd.DataFrame:
    """All per-task rows of complete runs, with variant, strategy, seed, ``grid_<key>`` (the sweep's
    ``--grid`` values) and ``param_<key>`` (the run's strategy parameters, from config.json) columns:
    :func:`cl_diffusion.results.read_metrics`, the reader the tables use too."""
    df = read_metrics(complete_runs(results, benchmark, profile))
    if df.empty:
        raise SystemExit(f"no complete runs under {results}/{benchmark}/{profile}: run the sweep first")
    return df


def sort_variants(variants) -> list[str]:
    return sorted(set(variants), key=variant_key)


def mean_se(values: pd.Series) -> tuple[float, float]:
    v = values.dropna()
    if v.empty:
        return math.nan, math.nan
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)


def one_knob_last_task(df: pd.DataFrame, strategies: tuple[str, ...], key: str) -> pd.DataFrame:
    """Last-task rows of the runs of ``strategies`` whose only change from their defaults is the
    strategy parameter ``key``: the plain runs (at the default) and the ``--grid key=...`` variants."""
    df = df[df["strategy"].isin(strategies) & df[f"param_{key}"].notna()] if f"param_{key}" in df else df.iloc[:0]
    other_grids = [c for c in df if c.startswith("grid_") and c != f"grid_{key}"]
    df = df[df[other_grids].isna().all(axis=1)] if other_grids else df
    return df[df["task"] == df["task"].max()]


def plot_against_param(ax, last: pd.DataFrame, strategies: tuple[str, ...], key: str, col: str) -> None:
    """One line per strategy: ``col`` (mean +- SE over seeds, the seed count written beside points
    with more than one) against the parameter ``key``, on a log x axis labelled with the values run."""
    values = sorted({float(v) for v in last[f"param_{key}"]})
    for strategy in strategies:
        sub = last[last["strategy"] == strategy]
        if sub.empty:
            continue  # no runs: no legend entry either
        xs = sorted({float(v) for v in sub[f"param_{key}"]})
        groups = [sub[sub[f"param_{key}"].astype(float) == x][col].dropna() for x in xs]
        stats = [mean_se(g) for g in groups]
        ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                    label=strategy, color=color(strategy))
        for x, (mean, _), g in zip(xs, stats, groups):  # a point's seed count, where it is not 1
            if len(g) > 1:
                ax.annotate(f"n={len(g)}", (x, mean), xytext=(4, 4), textcoords="offset points", fontsize=7,
                            color=color(strategy))
    ax.set_xscale("log")
    ax.set_xticks(values, [f"{v:g}" for v in values])  # the values run, not log-decades
    ax.minorticks_off()


def knob_figure(args: argparse.Namespace, strategies: tuple[str, ...], key: str, cols: tuple[str, ...],
                xlabel: str, too_few: str) -> "plt.Figure":
    """The figure (for the caller to save): one panel per metric in ``cols`` that has values, after
    the last task, against the strategy parameter ``key`` (:func:`one_knob_last_task`,
    :func:`plot_against_param`). Exits with ``too_few`` unless some strategy has runs at two values
    of ``key``."""
    last = one_knob_last_task(load_runs(args.results, args.benchmark, args.profile), strategies, key)
    if last.empty or last.groupby("strategy")[f"param_{key}"].nunique().max() < 2:
        raise SystemExit(too_few)
    cols = [c for c in cols if c in last and last[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4), squeeze=False)
    for ax, col in zip(axes[0], cols):
        plot_against_param(ax, last, strategies, key, col)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{col} after the last task", fontsize=10)
    axes[0][0].legend()
    return fig


def color(variant: str) -> str:
    return COLORS.get(variant.split("__")[0], "#7f7f7f")


def line_style(variant: str) -> str:
    """Solid for the paper's strategies, dashed for the other baselines."""
    return "-" if variant.split("__")[0] in PAPER else "--"


def save(fig, out: str, name: str) -> Path:
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    print(path)
    return path
