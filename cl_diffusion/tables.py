"""The paper's comparison tables, rebuilt from ``results/`` alone.

    python -m cl_diffusion.tables [--benchmark B] [--profile P] [--format markdown|latex|csv]
                                  [--columns fid_clf,kid_clf,...] [--variants V,...|defaults]
                                  [--seeds 0,1,...] [--per-seed | --per-task | --rank] [--compare A,B]
                                  [--results DIR ...]

One row per strategy variant (strategy plus any grid values such as lambda or teacher steps); the
columns (:data:`COLUMNS`, chosen with ``--columns``; by default all, today's six first) are
metrics after the last task (FID, FID_clf, KLD, ARD, ACC, forgetting, then KID and precision/
recall in both feature spaces, then two costs of the last task) and the CLoG aggregates AIQ/AFQ/FR
of the per-task FID_clf, KID_clf and solver accuracy (:mod:`cl_diffusion.evaluation.aggregates`,
from ``per_task.csv``). Each cell is the mean ± standard error over seeds (SE = sample std /
sqrt(n), pandas ``sem``); the best entry of each column is marked (bold in markdown and LaTeX,
``*`` in CSV). Runs made before a column existed leave it blank (``–``).

``--compare A,B`` prints instead a paired comparison of two variants: per column, the mean over
the seeds both ran of (A's value - B's value), its SE over those seeds and their number (a seed
where either value is blank is dropped for that column). It needs at least 2 shared seeds.
Output is deterministic: the same results give byte-identical tables. ``--refresh FILE ...``
rewrites the tables that markdown files print below their command line (:data:`DOC_TABLE`).
"""
from __future__ import annotations

import argparse
import fnmatch
import math
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from .errors import UserError, choice_error, cli_main
from .evaluation.aggregates import KINDS
from .results import complete_runs, last_task, read_metrics, variant_key
from .run import _Parser

Roots = Path | Sequence[Path]  # one results folder or several (:func:`cl_diffusion.results.complete_runs`)


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` (the ``--columns`` name), its header, whether lower is better
    (None: no best entry is marked, as for costs), the decimals shown, and where it comes from:
    ``metric`` after the last task (``aggregate`` None), or the aggregate ``aggregate`` of the
    per-task column ``metric``."""

    key: str
    header: str
    lower: bool | None
    decimals: int
    metric: str
    aggregate: str | None = None


#: (metrics.csv column, header, lower is better, decimals) of the metrics after the last task
LAST_TASK = (("fid", "FID", True, 2), ("fid_clf", "FID_clf", True, 2), ("kld", "KLD", True, 3),
             ("ard", "ARD", True, 3), ("acc", "ACC", False, 3), ("forgetting", "Forgetting", True, 3),
             ("kid", "KID", True, 4), ("kid_clf", "KID_clf", True, 4), ("precision", "Prec", False, 3),
             ("recall", "Rec", False, 3), ("precision_clf", "Prec_clf", False, 3),
             ("recall_clf", "Rec_clf", False, 3),
             # the last task's cost (evaluation.md#cost-columns): CPU seconds of its training, teacher image
             # evaluations, batched passes beyond the student's per iteration, what the strategy stores
             ("train_cpu_seconds", "train CPU s", None, 0), ("teacher_image_evals", "teacher evals", None, 0),
             ("extra_forwards_per_iter", "extra fwd/it", None, 2),
             ("extra_backwards_per_iter", "extra bwd/it", None, 2),
             ("params_stored", "params stored", None, 0), ("buffer_images", "buffer images", None, 0))
#: (per_task.csv column, header, lower is better, decimals) of the metrics with AIQ/AFQ/FR columns;
#: FR keeps the metric's direction (lower FR is better exactly when the metric is lower-is-better)
AGGREGATED = (("fid_clf", "FID_clf", True, 2), ("kid_clf", "KID_clf", True, 4), ("acc", "ACC", False, 3))
COLUMNS = tuple([Column(m, h, lower, dec, m) for m, h, lower, dec in LAST_TASK]
                + [Column(f"{m}_{kind}", f"{h} {kind.upper()}", lower, dec, m, kind)
                   for m, h, lower, dec in AGGREGATED for kind in KINDS])
COLUMN_KEYS = tuple(c.key for c in COLUMNS)
FORMATS = ("markdown", "latex", "csv")


def parse_columns(spec: str | None) -> tuple[Column, ...]:
    """The columns named in ``spec`` ("a,b,c"; None or "" = all); UserError for an unknown name."""
    if not spec:
        return COLUMNS
    by_key = {c.key: c for c in COLUMNS}
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in by_key:
            raise choice_error("column", name, COLUMN_KEYS)
    return tuple(by_key[name] for name in names)


def load_results(results: Roots, benchmark: str | None = None, profile: str | None = None,
                 columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """One row per complete run: benchmark, profile, variant, strategy, seed, and each column's value."""
    last = [c.metric for c in columns if c.aggregate is None]
    aggregated = sorted({c.metric for c in columns if c.aggregate is not None})
    return last_task(complete_runs(results, benchmark, profile), last, aggregated)


def summarize(df: pd.DataFrame, columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """Mean, SE (pandas ``sem``: sample std / sqrt(n), NaN for one seed) and seed count per
    variant, in the paper's strategy order; columns ``variant, n, <key>_mean, <key>_se``."""
    order = sorted(df["variant"].unique(), key=variant_key)
    groups = df.groupby("variant")
    out = pd.DataFrame({"variant": order, "n": groups.size().loc[order].to_numpy()})
    for c in columns:  # one column at a time: a cell never depends on which other columns are shown
        stats = groups[c.key].agg(["mean", "sem"]).loc[order]
        out[f"{c.key}_mean"], out[f"{c.key}_se"] = stats["mean"].to_numpy(float), stats["sem"].to_numpy(float)
    return out


def paired(df: pd.DataFrame, a: str, b: str, columns: Sequence[Column] = COLUMNS) -> pd.DataFrame:
    """Per column: mean and SE over the shared seeds of ``a``'s value - ``b``'s (variants of one
    benchmark and profile), and the number of seeds where both have a value; index = column key."""
    va, vb = (df[df["variant"] == v].set_index("seed") for v in (a, b))
    shared = va.index.intersection(vb.index).sort_values()
    rows = {}
    for c in columns:  # Series statistics per column, as in summarize
        diff = va.loc[shared, c.key].astype(float) - vb.loc[shared, c.key].astype(float)
        rows[c.key] = {"mean": diff.mean(), "se": diff.sem(ddof=1), "n": int(diff.count())}
    return pd.DataFrame.from_dict(rows, orient="index")


def _cell(mean: float, se: float, decimals: int) -> str:
    if math.isnan(mean):
        return "–"
    s = f"{mean:.{decimals}f}"
    return s if math.isnan(se) else f"{s} ± {se:.{decimals}f}"


def _format(headers: list[str], body: list[list], fmt: str) -> str:
    from tabulate import tabulate

    if fmt == "csv":
        lines = [",".join(headers)] + [",".join(f'"{c}"' if "," in str(c) else str(c) for c in row) for row in body]
        return "\n".join(lines) + "\n"
    if fmt == "latex":
        body = [[str(c).replace("±", "$\\pm$").replace("_", "\\_") for c in row] for row in body]
        headers = [h.replace("_", "\\_") for h in headers]
        return tabulate(body, headers=headers, tablefmt="latex_raw", disable_numparse=True) + "\n"
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True) + "\n"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise choice_error("format", fmt, FORMATS)


def ranks(summary: pd.DataFrame, col: Column) -> pd.Series:
    """Each variant's rank in ``col``, 1 = best, by the mean at the displayed precision (ties share
    the better rank: 1, 1, 3); NaN for a blank mean or a column without a better direction."""
    means = summary[f"{col.key}_mean"].round(col.decimals)
    if col.lower is None:
        return means * math.nan
    return means.rank(method="min", ascending=col.lower)


def render(summary: pd.DataFrame, fmt: str, columns: Sequence[Column] = COLUMNS, rank: bool = False) -> str:
    """The table as markdown, LaTeX (booktabs-free tabular, no LaTeX install needed) or CSV; with
    ``rank`` each cell ends in its rank within the column, ``(1)`` for the best (:func:`ranks`)."""
    _check_format(fmt)
    rank_of = {c.key: ranks(summary, c) for c in columns}
    best = {key: set(summary.loc[r == 1, "variant"]) for key, r in rank_of.items()}  # ties all marked
    mark = {"markdown": "**{}**", "latex": "\\textbf{{{}}}", "csv": "{}*"}[fmt]
    body = []
    for i, r in summary.iterrows():
        cells = [r["variant"], int(r["n"])]
        for c in columns:
            cell = _cell(r[f"{c.key}_mean"], r[f"{c.key}_se"], c.decimals)
            if rank and not math.isnan(rank_of[c.key][i]):
                cell += f" ({int(rank_of[c.key][i])})"
            cells.append(mark.format(cell) if r["variant"] in best[c.key] else cell)
        body.append(cells)
    return _format(["strategy", "seeds", *[c.header for c in columns]], body, fmt)


def _joined(values: Iterable[float], decimals: int) -> str:
    """``a / b / ...`` (``–`` for a blank value), or one ``–`` when every value is blank."""
    values = [float(v) for v in values]
    if all(math.isnan(v) for v in values):
        return "–"
    return " / ".join(_cell(v, math.nan, decimals) for v in values)


def render_per_seed(df: pd.DataFrame, fmt: str, columns: Sequence[Column] = COLUMNS) -> str:
    """``--per-seed``: one row per variant, each cell the values after the last task at its seeds in
    increasing order (``a / b / c``; ``–`` where a run lacks the column, once where all do), nothing
    averaged."""
    _check_format(fmt)
    body = []
    for variant in sorted(df["variant"].unique(), key=variant_key):
        runs = df[df["variant"] == variant].sort_values("seed")
        cells = [variant, ", ".join(str(int(s)) for s in runs["seed"])]
        body.append(cells + [_joined(runs[c.key], c.decimals) for c in columns])
    return _format(["strategy", "seeds", *[c.header for c in columns]], body, fmt)


def render_per_task(metrics: pd.DataFrame, fmt: str, columns: Sequence[Column] = COLUMNS) -> str:
    """``--per-task``: one row per variant, each cell the column's value after task 1, 2, ...
    (``a / b / ...``), the mean over the variant's seeds at each task; ``metrics`` holds every
    ``metrics.csv`` row of the runs (:func:`cl_diffusion.results.read_metrics`)."""
    _check_format(fmt)
    body = []
    for variant in sorted(metrics["variant"].unique(), key=variant_key):
        runs = metrics[metrics["variant"] == variant]
        means = runs.groupby("task")[[c.key for c in columns if c.key in runs]].mean()
        cells = [variant, ", ".join(str(int(s)) for s in sorted(runs["seed"].unique()))]
        body.append(cells + [_joined(means[c.key], c.decimals) if c.key in means else "–" for c in columns])
    return _format(["strategy", "seeds", *[c.header for c in columns]], body, fmt)


def render_paired(diff: pd.DataFrame, a: str, b: str, fmt: str, columns: Sequence[Column] = COLUMNS) -> str:
    """The paired comparison: one row per column with the mean difference ± its SE and the seed count."""
    _check_format(fmt)
    body = [[c.header, _cell(float(diff.loc[c.key, "mean"]), float(diff.loc[c.key, "se"]), c.decimals),
             int(diff.loc[c.key, "n"])] for c in columns]
    return _format(["metric", f"{a} - {b}", "seeds"], body, fmt)


def _shared_seeds(sub: pd.DataFrame, a: str, b: str) -> list[int] | None:
    """The seeds both variants ran in one (benchmark, profile) group; None if either is absent."""
    seeds = [set(sub.loc[sub["variant"] == v, "seed"]) for v in (a, b)]
    return sorted(seeds[0] & seeds[1]) if seeds[0] and seeds[1] else None


def _groups(df: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    return sorted(df.groupby(["benchmark", "profile"]), key=lambda kv: kv[0])


def _load(results: Roots, benchmark: str | None, profile: str | None, columns: Sequence[Column]) -> pd.DataFrame:
    df = load_results(results, benchmark, profile, columns)
    if df.empty:
        where = ", ".join(map(str, [results] if isinstance(results, (str, Path)) else results))
        raise UserError(f"no complete runs in {where} for benchmark={benchmark or 'any'}, profile={profile or 'any'}")
    return df


DEFAULTS = "defaults"  # --variants: every strategy at its default settings (no --grid values)


def select_seeds(df: pd.DataFrame, spec: str | None) -> pd.DataFrame:
    """The rows of the seeds in ``spec`` (comma-separated integers); all rows for None."""
    if spec is None:
        return df
    try:
        seeds = {int(s) for s in spec.split(",")}
    except ValueError:
        raise UserError(f"bad value {spec!r} for --seeds: expected comma-separated integers, e.g. 0,1,2") from None
    return df[df["seed"].isin(seeds)]


def select_variants(df: pd.DataFrame, spec: str | None) -> pd.DataFrame:
    """The rows of the variants named in ``spec`` (comma-separated names or shell patterns such as
    ``gd__lambda=*``; ``defaults`` = those without grid values); all rows for None. UserError naming
    the valid variants for a name that matches none."""
    if spec is None:
        return df
    variants = sorted(df["variant"].unique(), key=variant_key)
    keep: list[str] = []
    for name in (s.strip() for s in spec.split(",")):
        matched = fnmatch.filter(variants, name)
        if name == DEFAULTS:
            keep += [v for v in variants if "__" not in v]
        elif matched:
            keep += matched
        else:
            raise choice_error("variant in --variants", name, [DEFAULTS, *variants])
    return df[df["variant"].isin(keep)]


def build_table(results: Roots, benchmark: str | None, profile: str | None, fmt: str,
                columns: Sequence[Column] = COLUMNS, variants: str | None = None, per_seed: bool = False,
                seeds: str | None = None, per_task: bool = False, rank: bool = False) -> str:
    """The tables of all (benchmark, profile) groups of complete runs, each with its title;
    ``variants`` and ``seeds`` select rows (:func:`select_variants`, :func:`select_seeds`);
    ``per_seed`` shows each seed's value instead of the mean ± SE (:func:`render_per_seed`),
    ``per_task`` the mean after every task (:func:`render_per_task`); ``rank`` adds each mean's rank
    in its column (:func:`ranks`)."""
    _check_format(fmt)
    if per_task and (per_seed or any(c.aggregate for c in columns)):
        raise UserError("--per-task shows metrics after each task: it takes no --per-seed and no aggregate "
                        f"columns; valid columns: {', '.join(c.key for c in COLUMNS if c.aggregate is None)}")
    if rank and (per_task or per_seed):
        raise UserError("--rank ranks the mean ± SE cells: it takes no --per-seed and no --per-task")
    df = select_variants(select_seeds(_load(results, benchmark, profile, columns), seeds), variants)
    metrics = read_metrics(complete_runs(results, benchmark, profile)) if per_task else None
    parts = []
    for (bench, prof), sub in _groups(df):
        if per_task:
            rows = metrics.merge(sub[["benchmark", "profile", "variant", "seed"]])  # the selected runs only
            title = f"{bench}, profile {prof}: after each task, mean over seeds"
            table = render_per_task(rows, fmt, columns)
        elif per_seed:
            title = f"{bench}, profile {prof}: after the last task, each seed's value"
            table = render_per_seed(sub, fmt, columns)
        else:
            title = f"{bench}, profile {prof}: after the last task, mean ± SE over seeds"
            table = render(summarize(sub, columns), fmt, columns, rank)
        parts.append(table if fmt == "csv" else f"{'%' if fmt == 'latex' else '###'} {title}\n\n{table}")
    return "\n".join(parts)


def build_comparison(results: Roots, benchmark: str | None, profile: str | None, fmt: str, pair: str,
                     columns: Sequence[Column] = COLUMNS) -> str:
    """``--compare A,B``: the paired comparison in every (benchmark, profile) group where A and B
    share at least 2 seeds. UserError for a malformed pair, an unknown variant, or no such group."""
    _check_format(fmt)
    df = _load(results, benchmark, profile, columns)
    variants = sorted(df["variant"].unique(), key=variant_key)
    names = [s.strip() for s in pair.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise UserError(f"bad value {pair!r} for --compare: expected two different variants as A,B; "
                        f"valid choices: {', '.join(variants)}")
    for name in names:
        if name not in variants:
            raise choice_error("strategy in --compare", name, variants)
    a, b = names
    parts, too_few = [], []
    for (bench, prof), sub in _groups(df):
        shared = _shared_seeds(sub, a, b)
        if shared is None:
            continue
        if len(shared) < 2:
            too_few.append(f"{bench}/{prof} shares seeds {shared or 'none'}")
            continue
        title = f"{bench}, profile {prof}: {a} - {b} after the last task, mean ± SE over {len(shared)} paired seeds"
        table = render_paired(paired(sub, a, b, columns), a, b, fmt, columns)
        parts.append(table if fmt == "csv" else f"{'%' if fmt == 'latex' else '###'} {title}\n\n{table}")
    if not parts:
        partners = [v for v in variants if v != a and any(len(_shared_seeds(sub, a, v) or ()) >= 2
                                                          for _, sub in _groups(df))]
        raise UserError(f"too few shared seeds for --compare {a},{b}: {'; '.join(too_few) or 'no common benchmark'}"
                        f" (a paired comparison needs at least 2); valid choices to pair with {a}: "
                        f"{', '.join(partners) or 'none'}")
    return "\n".join(parts)


def build_parser() -> _Parser:
    p = _Parser(prog="python -m cl_diffusion.tables", description=__doc__.split("\n")[0])
    p.add_argument("--benchmark")
    p.add_argument("--profile")
    p.add_argument("--format", default=FORMATS[0], help=f"{' | '.join(FORMATS)} (default {FORMATS[0]})")
    p.add_argument("--columns", help=f"comma-separated, from: {', '.join(COLUMN_KEYS)} (default: all)")
    p.add_argument("--compare", metavar="A,B", help="paired comparison of two variants over their shared seeds")
    p.add_argument("--seeds", help="comma-separated seeds to use (default: all)")
    p.add_argument("--per-seed", action="store_true", help="each seed's value instead of the mean ± SE")
    p.add_argument("--per-task", action="store_true", help="the mean over seeds after every task, not only the last")
    p.add_argument("--rank", action="store_true", help="end each mean ± SE cell with its rank in the column, (1) = best")
    p.add_argument("--variants", help=f"comma-separated variants or patterns to show (default: all), e.g. "
                                      f"'gd,gd__lambda=*'; '{DEFAULTS}' = every strategy at its default settings")
    p.add_argument("--results", action="append", metavar="DIR",
                   help="results folder (default results/); repeat it to read several, e.g. results/ beside a "
                        "re-evaluation's folder")
    p.add_argument("--refresh", nargs="+", metavar="FILE", help="rewrite, in these markdown files, every table "
                   "printed right below its `python -m cl_diffusion.tables ...`: line, from --results")
    return p


def _roots(args: argparse.Namespace) -> list[Path]:
    return [Path(r) for r in (args.results or [DEFAULT_RESULTS])]


def output(args: argparse.Namespace) -> str:
    """What the command prints for the parsed ``args`` (not ``--refresh``)."""
    columns = parse_columns(args.columns)
    if args.compare is not None and args.rank:
        raise UserError("--rank ranks the mean ± SE cells: it takes no --compare")
    if args.compare is not None:
        return build_comparison(_roots(args), args.benchmark, args.profile, args.format, args.compare, columns)
    return build_table(_roots(args), args.benchmark, args.profile, args.format, columns, args.variants,
                       args.per_seed, args.seeds, args.per_task, args.rank)


DEFAULT_RESULTS = "results"
#: a generated table in a markdown file: its command line in backticks, a colon, a blank line, the
#: table. The commands are those of :data:`DOC_COMMANDS`, written as run from the repository root.
DOC_TABLE = re.compile(r"`python -m cl_diffusion\.(tables|replay_quality) ([^`]+)`:\n\n((?:\|.*\n)+)")


def in_results(path: str, results: Path) -> Path:
    """A path of a documented command, read from ``results`` when it lies under ``results/``
    (``results/analysis/x`` -> ``<results>/analysis/x``), as written otherwise."""
    parts = Path(path).parts
    return results.joinpath(*parts[1:]) if parts and parts[0] == DEFAULT_RESULTS else Path(path)


def _tables_doc(argv: list[str], results: Path) -> str:
    args = build_parser().parse_args(argv)
    args.results = [str(in_results(r, results)) for r in (args.results or [DEFAULT_RESULTS])]
    return output(args).split("\n", 2)[2]  # without the title line


def _replay_quality_doc(argv: list[str], results: Path) -> str:
    from .replay_quality import build_parser as rq_parser, table

    args = rq_parser().parse_args(argv)
    return table([in_results(p, results) for p in args.table])


#: module -> the table its documented command prints (argv, results folder)
DOC_COMMANDS = {"tables": _tables_doc, "replay_quality": _replay_quality_doc}


def refresh_text(text: str, results: Path) -> str:
    """``text`` with every :data:`DOC_TABLE` replaced by what its command prints now, reading the
    paths under ``results/`` from ``results`` (:func:`in_results`)."""
    def regenerate(m: re.Match) -> str:
        table = DOC_COMMANDS[m.group(1)](shlex.split(m.group(2)), results)
        return m.group(0)[:m.start(3) - m.start(0)] + table
    return DOC_TABLE.sub(regenerate, text)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.refresh:
        for name in args.refresh:
            path = Path(name)
            if not path.is_file():
                raise UserError(f"bad value {name!r} for --refresh: no such file")
            text = path.read_text()
            new = refresh_text(text, _roots(args)[0])
            if new != text:
                path.write_text(new)
            print(f"{name}: {'updated' if new != text else 'up to date'} ({len(DOC_TABLE.findall(text))} tables)")
        return 0
    sys.stdout.write(output(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
