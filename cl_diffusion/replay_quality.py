"""How good is a teacher's replay at a given number of DDIM steps? Measured, not trained.

    python -m cl_diffusion.replay_quality RUN_DIR [--task K] [--steps 1,2,5,10,20] [--samples N] [--out FILE]
    python -m cl_diffusion.replay_quality --table FILE ...

Loads the weights a run saved after task K (``model_task{K}.safetensors``: the teacher of task
K+1 for gr and gd), draws N samples at each DDIM step count with the run's sampler settings and
per-index seeds (so every step count starts from the same x_T), and scores them against the test
images of tasks 1..K with the run's own evaluation classifier: FID_clf, KLD, ARD, and the share of
samples the classifier puts in a seen class. This is what GR trains on as data (Masip et al.
2024, Sec. 4), so it tells how much of GR's forgetting comes from poor few-step replay.

Writes JSON (with the run's config, the commit and the device) to ``--out``; an existing file is
never overwritten. ``--table`` prints such files as one markdown table (docs regenerate theirs with
``python -m cl_diffusion.tables --refresh``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file

from .errors import UserError, cli_main
from .run import _Parser


def parse_steps(text: str) -> list[int]:
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 1:
        raise UserError(f"bad value {text!r} for --steps: expected positive integers separated by commas, e.g. 1,2,10")
    return steps


def measure(run_dir: Path, task: int, steps: Sequence[int], n: int, log=print) -> dict[str, Any]:
    """Replay quality of the model saved after ``task`` (1-based) at each DDIM step count."""
    from .app import build_components, load_plugins, load_run_config
    from .evaluation.classifier import classify, get_classifier
    from .evaluation.sample_metrics import to_uint8
    from .evaluation.frechet import fid_from_features
    from .evaluation.histogram import ard, class_histogram, kld
    from .io import provenance
    from .sampling import Sampling, generate
    from .strategy import TaskContext

    load_plugins()
    cfg, _ = load_run_config(run_dir, need_ckpt=False)
    weights = run_dir / f"model_task{task}.safetensors"
    if not weights.is_file():
        have = sorted(p.name for p in run_dir.glob("model_task*.safetensors"))
        raise UserError(f"bad value {task} for --task: {weights} does not exist; this run has: "
                        f"{', '.join(have) or 'no saved weights'}")
    comps = build_components(cfg, run_dir, log=lambda *_: None)
    if task > comps.stream.n_tasks:
        raise UserError(f"bad value {task} for --task: the run has {comps.stream.n_tasks} tasks")
    device, stream, ev = comps.device, comps.stream, cfg.eval
    ctx = TaskContext(task - 1, stream, comps.model)
    comps.strategy.load_generator(load_file(str(weights)), ctx)
    generator = comps.strategy.generator(ctx)
    clf = get_classifier(ev, stream, device, log=log)
    k = task - 1
    seen = stream.seen_test(k)
    ref_feats = classify(clf.model, seen.images, ev.eval_batch_size, device)[0]
    p_true = class_histogram(seen.labels, stream.num_classes)
    seen_classes = torch.tensor([c for j in range(k + 1) for c in stream.tasks[j].classes])
    shape = (stream.channels, stream.image_size, stream.image_size)
    rows = []
    for s in steps:
        start = time.perf_counter()
        with torch.inference_mode():
            x = generate(generator, comps.schedule, Sampling.of(cfg, comps.execution, steps=s), shape, n, device,
                         batch_size=ev.eval_batch_size)
        feats, logits = classify(clf.model, to_uint8(x), ev.eval_batch_size, device)
        pred = logits.argmax(1)
        p_gen = class_histogram(pred, stream.num_classes)
        rows.append({"steps": s, "fid_clf": fid_from_features(feats, ref_feats), "kld": kld(p_true, p_gen),
                     "ard": ard(p_true, p_gen), "share_seen": float(torch.isin(pred, seen_classes).double().mean()),
                     "seconds": time.perf_counter() - start})
        log(f"steps {s:>4}: fid_clf {rows[-1]['fid_clf']:.2f}  kld {rows[-1]['kld']:.3f}  "
            f"ard {rows[-1]['ard']:.3f}  share in seen classes {rows[-1]['share_seen']:.3f}")
    return {"run_dir": str(run_dir), "weights": weights.name, "task": task, "samples": n,
            "classifier": {k2: clf.info.get(k2) for k2 in ("arch", "test_acc", "iterations", "file")},
            "config": cfg.to_dict(), "meta": provenance(str(device)), "rows": rows}


#: (JSON key of a row, header, decimals) of :func:`table`
TABLE_COLUMNS = (("steps", "DDIM steps", 0), ("fid_clf", "FID_clf", 2), ("kld", "KLD", 3), ("ard", "ARD", 3),
                 ("share_seen", "share in a seen class", 3))


def table(paths: Sequence[Path]) -> str:
    """``--table``: the rows of the JSON files ``paths`` (written by ``--out``) as one markdown
    table, one line per (file, step count), labelled with the run's benchmark, strategy, seed and task."""
    from tabulate import tabulate

    body = []
    for path in paths:
        if not Path(path).is_file():
            raise UserError(f"bad value {str(path)!r} for --table: no such file (write one with --out)")
        res = json.loads(Path(path).read_text())
        cfg = res["config"]
        model = f"{cfg['benchmark']} {cfg['strategy']} seed {cfg['seed']}, after task {res['task']}"
        for r in res["rows"]:
            body.append([model, *(f"{r[key]:.{dec}f}" for key, _, dec in TABLE_COLUMNS)])
    return tabulate(body, headers=["model", *(h for _, h, _ in TABLE_COLUMNS)], tablefmt="github",
                    disable_numparse=True) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m cl_diffusion.replay_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", help="a run directory with config.json and model_task{K}.safetensors")
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the measurements of these --out files as "
                   "one markdown table instead of measuring")
    p.add_argument("--task", type=int, default=1, help="use the weights saved after this task (1-based)")
    p.add_argument("--steps", default="1,2,5,10,20", help="DDIM step counts, comma-separated")
    p.add_argument("--samples", type=int, default=1000, help="samples per step count")
    p.add_argument("--out", default="", help="JSON file to write (refused if it exists)")
    return p


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.table:
        sys.stdout.write(table([Path(p) for p in args.table]))
        return 0
    if args.run_dir is None:
        raise UserError("missing RUN_DIR: give a run directory to measure, or --table JSON ... to print measurements")
    steps = parse_steps(args.steps)
    if args.samples < 2:
        raise UserError(f"bad value {args.samples} for --samples: need at least 2 for a FID")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise UserError(f"{out} exists; choose another --out (results are never overwritten)")
    res = measure(Path(args.run_dir), args.task, steps, args.samples)
    if out is not None:
        from .io import atomic_write_json

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, res)
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
