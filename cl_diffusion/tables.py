"""The paper's comparison tables, rebuilt from ``results/`` alone.

    python -m cl_diffusion.tables [--benchmark B] [--profile P] [--format markdown|latex|csv] [--results DIR]

One row per strategy variant (strategy plus any grid values such as lambda or teacher steps);
columns are FID, FID_clf, KLD, ARD, ACC and forgetting after the last task, each as
mean ± standard error over seeds (SE = sample std / sqrt(n)); the best entry of each column is
marked (bold in markdown and LaTeX, ``*`` in CSV). Output is deterministic: the same results give
byte-identical tables.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from .errors import UserError, cli_main
from .run import _Parser

#: (column in metrics.csv, table header, lower is better, decimals)
METRICS = (("fid", "FID", True, 2), ("fid_clf", "FID_clf", True, 2), ("kld", "KLD", True, 3),
           ("ard", "ARD", True, 3), ("acc", "ACC", False, 3), ("forgetting", "Forgetting", True, 3))
ORDER = ("finetune", "joint", "gr", "gd", "lwf", "gaussian", "pgd")
FORMATS = ("markdown", "latex", "csv")


def load_results(results: Path, benchmark: str | None = None, profile: str | None = None) -> pd.DataFrame:
    """One row per complete run: benchmark, profile, variant, strategy, seed, and the last task's metrics."""
    rows = []
    for manifest in sorted(results.glob("*/*/*/seed*/manifest.json")):
        m = json.loads(manifest.read_text())
        if m.get("status") != "complete":
            continue
        if (benchmark and m["benchmark"] != benchmark) or (profile and m["profile"] != profile):
            continue
        metrics = pd.read_csv(manifest.parent / "metrics.csv")
        last = metrics.iloc[-1]
        row = {"benchmark": m["benchmark"], "profile": m["profile"], "variant": m["variant"],
               "strategy": m["strategy"], "seed": int(m["seed"])}
        row.update({col: float(last[col]) if col in last and pd.notna(last[col]) else math.nan
                    for col, *_ in METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def _variant_key(variant: str) -> tuple:
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


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, SE and seed count per variant, in the paper's strategy order."""
    out = []
    for variant in sorted(df["variant"].unique(), key=_variant_key):
        sub = df[df["variant"] == variant]
        row = {"variant": variant, "n": len(sub)}
        for col, *_ in METRICS:
            vals = sub[col].dropna().to_numpy()
            row[f"{col}_mean"] = float(vals.mean()) if len(vals) else math.nan
            row[f"{col}_se"] = float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def _best(summary: pd.DataFrame, col: str, lower: bool, decimals: int) -> set[str]:
    """Variants whose mean is best at the displayed precision (ties are all marked)."""
    means = summary[f"{col}_mean"].dropna().round(decimals)
    if means.empty:
        return set()
    target = means.min() if lower else means.max()
    return set(summary.loc[means.index[means == target], "variant"])


def _cell(mean: float, se: float, decimals: int) -> str:
    if math.isnan(mean):
        return "–"
    s = f"{mean:.{decimals}f}"
    return s if math.isnan(se) else f"{s} ± {se:.{decimals}f}"


def render(summary: pd.DataFrame, fmt: str) -> str:
    """The table as markdown, LaTeX (booktabs-free tabular, no LaTeX install needed) or CSV."""
    from tabulate import tabulate

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; valid choices: {', '.join(FORMATS)}")
    headers = ["strategy", "seeds", *[h for _, h, *_ in METRICS]]
    best = {col: _best(summary, col, lower, dec) for col, _, lower, dec in METRICS}
    mark = {"markdown": "**{}**", "latex": "\\textbf{{{}}}", "csv": "{}*"}[fmt]
    body = []
    for _, r in summary.iterrows():
        cells = [r["variant"], int(r["n"])]
        for col, _, _, dec in METRICS:
            c = _cell(r[f"{col}_mean"], r[f"{col}_se"], dec)
            cells.append(mark.format(c) if r["variant"] in best[col] else c)
        body.append(cells)
    if fmt == "csv":
        lines = [",".join(headers)] + [",".join(f'"{c}"' if "," in str(c) else str(c) for c in row) for row in body]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        body = [[str(c).replace("±", "$\\pm$").replace("_", "\\_") for c in row] for row in body]
        headers = [h.replace("_", "\\_") for h in headers]
        return tabulate(body, headers=headers, tablefmt="latex_raw", disable_numparse=True) + "\n"
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def build_table(results: Path, benchmark: str | None, profile: str | None, fmt: str) -> str:
    df = load_results(results, benchmark, profile)
    if df.empty:
        raise UserError(f"no complete runs in {results} for benchmark={benchmark or 'any'}, profile={profile or 'any'}")
    parts = []
    for (bench, prof), sub in sorted(df.groupby(["benchmark", "profile"]), key=lambda kv: kv[0]):
        title = f"{bench}, profile {prof}: after the last task, mean ± SE over seeds"
        table = render(summarize(sub), fmt)
        parts.append(table if fmt == "csv" else f"{'%' if fmt == 'latex' else '###'} {title}\n\n{table}")
    return "\n".join(parts)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    p = _Parser(prog="python -m cl_diffusion.tables", description=__doc__.split("\n")[0])
    p.add_argument("--benchmark")
    p.add_argument("--profile")
    p.add_argument("--format", default="markdown", help="markdown | latex | csv")
    p.add_argument("--results", default="results", help="results folder (default results/)")
    args = p.parse_args(argv)
    sys.stdout.write(build_table(Path(args.results), args.benchmark, args.profile, args.format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
