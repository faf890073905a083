"""Evaluate a finished run again, from the weights it saved after each task, with other evaluation
options: ``python -m cl_diffusion.reevaluate RUN_DIR --out DIR [--set KEY=VALUE ...]``.

Only evaluation options (``eval_samples``, ``solver_iters_per_task``, ``inception_weights``, ...)
and the run options that say where and how to compute (declared ``how=True``) can change: training
options would need a new run. With no ``--set``, the
metrics equal the run's own (same sample noise, same solver seed), which the tests check. Uses:

- fill in Inception FID later, on a machine that has the weights: ``--set inception_weights=PATH``;
- test whether a metric is limited by the evaluation's own scale (a longer-trained solver, more
  samples) rather than by the strategy.

Reads ``RUN_DIR/config.json`` and ``RUN_DIR/model_task{1..K}.safetensors``; writes a new folder
``DIR`` (never an existing one) with ``config.json`` (the new options, and under ``meta`` the
source run, its commit and the overrides), ``metrics.csv``, ``per_task.csv``, the evaluator's
PNGs and, once every task is done, ``manifest.json``. ``RUN_DIR`` is not changed.

The new folder is a run of its own variant, ``<source variant>__<key>=<value>...`` with the
overrides in the order given (:func:`variant_of`). ``--into ROOT`` instead of ``--out`` places it at
``ROOT/<benchmark>/<profile>/<variant>/seed<k>/``, where ``python -m cl_diffusion.tables --results
results --results ROOT`` shows it beside the original runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import RunConfig
from .errors import UserError, cli_main
from .options import add_flags
from .run import _Parser, parse_sets, set_threads


def reevaluate(run_dir: Path, out: Path, sets: Sequence[tuple[str, str]] = (), device: str | None = None,
               log: Callable[[str], None] = print) -> Path:
    """Run the evaluator after each task of ``run_dir`` on its saved weights into the new folder ``out``."""
    from safetensors.torch import load_file

    from .app import build_components, load_plugins, load_run_config, resolve_device
    from .evaluation.config import EvalConfig
    from .io import atomic_write_json, provenance, write_csv
    from .options import keys_where, option_keys
    from .preflight import check_new_dir, check_run
    from .strategy import TaskContext

    load_plugins()
    check_new_dir(out, "--out")
    cfg, source_meta = load_run_config(run_dir, need_ckpt=False)
    allowed = [*option_keys(EvalConfig), *keys_where(RunConfig, "how")]
    for key, value in sets:
        if key not in allowed:
            raise UserError(f"cannot change {key!r} after training: only evaluation options can change; "
                            f"valid: {', '.join(sorted(allowed))}")
        cfg.set(key, value)
    if device is not None:
        cfg.set("device", device)
    cfg.validate()
    weights = [run_dir / f"model_task{k}.safetensors" for k in range(1, _n_tasks(run_dir) + 1)]
    missing = [w.name for w in weights if not w.is_file()]
    if missing:
        raise UserError(f"{run_dir} lacks the saved weights {', '.join(missing)} (committed results keep "
                        "metrics, not weights: rerun the sweep to make them)")
    check_run(cfg, resolve_device(cfg.run.device), out=out.parent, training=False)
    out.mkdir(parents=True)
    try:
        comps = build_components(cfg, out, log=log)
    except BaseException:
        out.rmdir()  # still empty: leave nothing behind
        raise
    meta = {**provenance(str(comps.device)), "reevaluated_from": str(run_dir),
            "source_git_commit": source_meta.get("git_commit"), "overrides": dict(sets)}
    atomic_write_json(out / "config.json", {**cfg.to_dict(), "meta": meta})
    rows: list[dict[str, Any]] = []
    per_task: list[dict[str, Any]] = []
    strategy, stream = comps.strategy, comps.stream
    for k, path in enumerate(weights):
        ctx = TaskContext(k, stream, comps.model)
        if k > 0 and strategy.keeps_previous:
            strategy.freeze_previous(ctx)  # the generator after task k-1, still loaded
        strategy.load_generator(load_file(str(path)), ctx)
        row, task_rows = comps.evaluator.after_task(k, strategy.generator(ctx), strategy.solver_training(ctx))
        rows.append({"task": k + 1, **row})
        per_task += [{"strategy": cfg.run.strategy, **r} for r in task_rows]
        write_csv(out / "metrics.csv", rows)
        write_csv(out / "per_task.csv", per_task)
        log(f"task {k + 1}: " + "  ".join(f"{m} {row[m]:.4g}" for m in ("fid", "fid_clf", "kld", "acc")
                                           if m in row))
    comps.evaluator.close()
    command = " ".join(["python -m cl_diffusion.reevaluate", str(run_dir), "--out", str(out),
                        *(f"--set {k}={v}" for k, v in sets)])
    atomic_write_json(out / "manifest.json", {
        "status": "complete", "command": command, "benchmark": cfg.run.benchmark, "profile": cfg.run.profile,
        "variant": variant_of(run_dir, cfg.run.strategy, sets), "strategy": cfg.run.strategy, "seed": cfg.run.seed,
        **meta})
    return out


def variant_of(run_dir: Path, strategy: str, sets: Sequence[tuple[str, str]]) -> str:
    """The re-evaluation's variant: the source run's (its manifest's, else the strategy) followed by
    ``__<key>=<value>`` for each override in order, e.g. ``gd__solver_replay_pool=0``; overrides of
    options that say only where and how to compute (``how=True``: device, progress) are left out."""
    from .options import keys_where

    manifest = run_dir / "manifest.json"
    source = json.loads(manifest.read_text()).get("variant", strategy) if manifest.is_file() else strategy
    how = set(keys_where(RunConfig, "how"))
    return "__".join([source, *(f"{k}={v}" for k, v in sets if k not in how)])


def folder_in(root: Path, run_dir: Path, sets: Sequence[tuple[str, str]]) -> Path:
    """``--into ROOT``: ``ROOT/<benchmark>/<profile>/<variant>/seed<k>`` of the re-evaluation."""
    from .app import load_plugins, load_run_config

    load_plugins()
    cfg, _ = load_run_config(run_dir, need_ckpt=False)
    variant = variant_of(run_dir, cfg.run.strategy, sets)
    return root / cfg.run.benchmark / cfg.run.profile / variant / f"seed{cfg.run.seed}"


def _n_tasks(run_dir: Path) -> int:
    """The number of tasks the run finished: its metrics rows (the stream's length when complete)."""
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        raise UserError(f"{run_dir} has no metrics.csv: the run never finished a task")
    return max(1, len(metrics.read_text().strip().splitlines()) - 1)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cl_diffusion.reevaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a finished run: config.json, metrics.csv and model_task{K}.safetensors")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="new folder for the metrics (must not exist)")
    where.add_argument("--into", metavar="ROOT", help="write to ROOT/<benchmark>/<profile>/<variant>/seed<k>/ "
                       "(must not exist), a results folder for cl_diffusion.tables")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an evaluation option")
    add_flags(p, RunConfig, ["device"], show_default=False, note="default: the run's")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    sets = parse_sets(args.set)
    out = Path(args.out) if args.out else folder_in(Path(args.into), Path(args.run_dir), sets)
    print(reevaluate(Path(args.run_dir), out, sets, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
