"""Tables are rebuilt from results/ alone: mean ± SE over seeds, best marked, byte-identical reruns."""
from __future__ import annotations

import json
import math

from cl_diffusion.tables import build_table, main


def _fake_run(root, strategy, seed, fid_clf, acc, grid=None):
    variant = "__".join([strategy, *(f"{k}={v}" for k, v in (grid or {}).items())])
    d = root / "fmnist-5" / "quick" / variant / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("task,fid,fid_clf,kld,ard,acc,forgetting\n"
                                   f"1,,99,9,0.9,0.99,0\n2,,{fid_clf},0.5,0.2,{acc},0.1\n")
    (d / "manifest.json").write_text(json.dumps({"status": "complete", "benchmark": "fmnist-5", "profile": "quick",
                                                 "variant": variant, "strategy": strategy, "seed": seed,
                                                 "grid": grid or {}}))


def test_mean_se_best_and_determinism(tmp_path, capsys):
    _fake_run(tmp_path, "gd", 0, 10.0, 0.70)
    _fake_run(tmp_path, "gd", 1, 12.0, 0.60)
    _fake_run(tmp_path, "gr", 0, 40.0, 0.50)
    _fake_run(tmp_path, "gd", 0, 11.5, 0.62, grid={"lambda": "2"})
    table = build_table(tmp_path, "fmnist-5", "quick", "markdown")
    assert table == build_table(tmp_path, "fmnist-5", "quick", "markdown")
    se = 2.0 / math.sqrt(2) / math.sqrt(2)  # std(10, 12) = sqrt(2); SE = std / sqrt(n)
    gd_row = next(line for line in table.splitlines() if line.startswith("| gd "))
    assert f"**11.00 ± {se:.2f}**" in gd_row  # best FID_clf, with SE = std / sqrt(n)
    assert "**0.650 ± 0.050**" in gd_row  # best ACC (0.6499... rounds to 0.650)
    assert "**0.500 ± 0.000**" in gd_row  # KLD ties with gd__lambda=2 at display precision: both marked
    lines = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| g")]
    assert lines == ["gr", "gd", "gd__lambda=2"]  # the paper's strategy order, variants after
    assert "**40.00**" not in table  # worst FID_clf not marked
    assert main(["--results", str(tmp_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("strategy,seeds,FID,FID_clf")
    assert main(["--results", str(tmp_path), "--format", "html"]) == 2


# ---- new columns, aggregates, --columns, --compare ---------------------------------------------------------

def _run_v2(root, strategy, seed, fid_clf, kid_clf, acc_matrix):
    """A run with the new metrics columns and a per_task.csv (2 tasks); ``acc_matrix`` = [[a00], [a10, a11]]."""
    d = root / "fmnist-5" / "quick" / strategy / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("task,fid,fid_clf,kld,ard,acc,forgetting,kid_clf,kid_clf_std,precision_clf,"
                                   f"recall_clf,kid,kid_std,precision,recall\n1,,99,9,0.9,0.99,0,1,0.1,0.5,0.5,,,,\n"
                                   f"2,,{fid_clf},0.5,0.2,0.6,0.1,{kid_clf},0.001,0.8,0.7,,,,\n")
    (a00,), (a10, a11) = acc_matrix
    (d / "per_task.csv").write_text(f"strategy,task_after,task_j,fid_clf,kid_clf,acc\n{strategy},1,1,20,1,{a00}\n"
                                    f"{strategy},2,1,30,2,{a10}\n{strategy},2,2,25,1.5,{a11}\n")
    (d / "manifest.json").write_text(json.dumps({"status": "complete", "benchmark": "fmnist-5", "profile": "quick",
                                                 "variant": strategy, "strategy": strategy, "seed": seed}))


def _mean_se(values):
    import statistics

    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def _grid(tmp_path):
    _run_v2(tmp_path, "gd", 0, 10.0, 0.0100, [[0.90], [0.50, 0.80]])
    _run_v2(tmp_path, "gd", 1, 12.0, 0.0140, [[0.96], [0.62, 0.86]])
    _run_v2(tmp_path, "gd", 2, 17.0, 0.0200, [[0.91], [0.55, 0.83]])
    _run_v2(tmp_path, "gr", 0, 40.0, 0.0300, [[0.90], [0.20, 0.80]])
    _fake_run(tmp_path, "gr", 1, 41.0, 0.40)  # written before the new columns: no KID, no per_task.csv
    _run_v2(tmp_path, "gr", 3, 50.0, 0.0500, [[0.90], [0.10, 0.80]])
    _run_v2(tmp_path, "lwf", 0, 30.0, 0.0400, [[0.90], [0.30, 0.80]])


def test_new_columns_and_aggregates_mean_se(tmp_path):
    _grid(tmp_path)
    table = build_table(tmp_path, "fmnist-5", "quick", "csv")
    header, *rows = table.splitlines()
    cols = header.split(",")
    assert cols[:8] == ["strategy", "seeds", "FID", "FID_clf", "KLD", "ARD", "ACC", "Forgetting"]  # today's first
    by_name = {r.split(",")[0]: dict(zip(cols, r.split(","))) for r in rows}
    gd, gr = by_name["gd"], by_name["gr"]
    m, se = _mean_se([0.0100, 0.0140, 0.0200])
    assert gd["KID_clf"] == f"{m:.4f} ± {se:.4f}*"  # best (lowest) KID_clf, marked
    # ACC FR per seed: a[1, 0] - a[0, 0]; ACC AIQ: (a00 + (a10 + a11) / 2) / 2
    m, se = _mean_se([0.50 - 0.90, 0.62 - 0.96, 0.55 - 0.91])
    assert gd["ACC FR"] == f"{m:.3f} ± {se:.3f}*"  # highest (least negative) is best for accuracy
    m, se = _mean_se([(0.90 + 0.65) / 2, (0.96 + 0.74) / 2, (0.91 + 0.69) / 2])
    assert gd["ACC AIQ"].rstrip("*") == f"{m:.3f} ± {se:.3f}"
    assert gd["FID_clf FR"].rstrip("*") == "10.00 ± 0.00"  # per-task FID_clf a[1, 0] - a[0, 0] = 30 - 20, all seeds
    # gr: the old run has no KID and no per_task.csv -> its seeds count only where it has values
    assert gr["seeds"] == "3" and gr["KID_clf"] == f"{0.04:.4f} ± {0.01:.4f}"
    assert gr["Prec"] == "–" and gd["Rec_clf"].startswith("0.700")


def test_columns_option_and_bad_names(tmp_path, capsys):
    _grid(tmp_path)
    assert main(["--results", str(tmp_path), "--format", "csv", "--columns", "kid_clf,acc_fr"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "strategy,seeds,KID_clf,ACC FR"
    assert main(["--results", str(tmp_path), "--columns", "fid_clf,nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown column 'nope'; valid choices: fid, fid_clf,") and err.count("\n") == 1
    assert "acc_fr" in err


def test_paired_comparison_by_hand(tmp_path, capsys):
    _grid(tmp_path)
    assert main(["--results", str(tmp_path), "--format", "csv", "--compare", "gd,gr"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(",")[0]: line.split(",")[1:] for line in out.splitlines()}
    assert rows["metric"] == ["gd - gr", "seeds"]
    m, se = _mean_se([10.0 - 40.0, 12.0 - 41.0])  # seeds 0 and 1 are shared; gd's 2 and gr's 3 are not
    assert rows["FID_clf"] == [f"{m:.2f} ± {se:.2f}", "2"]
    assert rows["KID_clf"] == [f"{0.0100 - 0.0300:.4f}", "1"]  # gr seed 1 has no KID: one pair, no SE
    assert rows["FID"] == ["–", "0"]


def test_compare_errors(tmp_path, capsys):
    _grid(tmp_path)
    assert main(["--results", str(tmp_path), "--compare", "gd,sgd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown strategy in --compare 'sgd'; valid choices: gr, gd, lwf")
    assert err.count("\n") == 1
    assert main(["--results", str(tmp_path), "--compare", "gd,lwf"]) == 2  # lwf has seed 0 only
    err = capsys.readouterr().err
    assert err.startswith("error: too few shared seeds for --compare gd,lwf: fmnist-5/quick shares seeds [0]")
    assert err.rstrip().endswith("valid choices to pair with gd: gr") and err.count("\n") == 1
    assert main(["--results", str(tmp_path), "--compare", "gd"]) == 2
    assert "expected two different variants" in capsys.readouterr().err


def test_variants_option(tmp_path, capsys):
    """--variants keeps the named rows; 'defaults' keeps the strategies at their default settings."""
    _fake_run(tmp_path, "gd", 0, 10.0, 0.70)
    _fake_run(tmp_path, "gr", 0, 40.0, 0.50)
    _fake_run(tmp_path, "gd", 0, 8.0, 0.62, grid={"lambda": "2"})

    def rows(spec):
        table = build_table(tmp_path, "fmnist-5", "quick", "markdown", variants=spec)
        return [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| g")]

    assert rows(None) == ["gr", "gd", "gd__lambda=2"]
    assert rows("defaults") == ["gr", "gd"]
    assert rows("gd__lambda=2,gr") == ["gr", "gd__lambda=2"]
    assert rows("g?,gd__*") == ["gr", "gd", "gd__lambda=2"]
    assert "**10.00**" in build_table(tmp_path, "fmnist-5", "quick", "markdown", variants="defaults")  # best among shown
    assert main(["--results", str(tmp_path), "--variants", "gd,lwf"]) == 2
    assert "unknown variant in --variants 'lwf'; valid choices: defaults, gr, gd, gd__lambda=2" in capsys.readouterr().err


def test_committed_tables_regenerate_from_results():
    """results/tables/<benchmark>_quick.md is what ``python -m cl_diffusion.tables --benchmark B
    --profile quick`` prints (every column), and every generated table in README and docs/ is what
    its command line prints now."""
    from pathlib import Path

    from cl_diffusion.tables import DOC_TABLE, refresh_text

    repo = Path(__file__).resolve().parent.parent
    for path in sorted((repo / "results" / "tables").glob("*_quick.md")):
        bench = path.name[:-len("_quick.md")]
        full = build_table(repo / "results", bench, "quick", "markdown")
        assert path.read_text() == full, f"{path} is stale: regenerate it (docs/results.md)"
    found = 0
    for doc in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        text = doc.read_text()
        found += len(DOC_TABLE.findall(text))
        assert refresh_text(text, repo / "results") == text, \
            f"{doc.name} has a stale table: python -m cl_diffusion.tables --refresh {doc.relative_to(repo)}"
    assert found >= 16  # README's two, docs/results.md's fourteen: the pattern still finds every documented table


def test_refresh_rewrites_a_stale_table(tmp_path, capsys):
    _fake_run(tmp_path, "gd", 0, 10.0, 0.70)
    doc = tmp_path / "doc.md"
    cmd = "python -m cl_diffusion.tables --benchmark fmnist-5 --profile quick --columns fid_clf"
    doc.write_text(f"Intro.\n\n`{cmd}`:\n\n| strategy | seeds | FID_clf |\n|---|---|---|\n| gd | 1 | 99.99 |\n\nAfter.\n")
    assert main(["--results", str(tmp_path), "--refresh", str(doc)]) == 0
    assert "updated (1 tables)" in capsys.readouterr().out
    text = doc.read_text()
    assert "99.99" not in text and "| gd         | 1       | **10.00** |" in text
    assert text.startswith(f"Intro.\n\n`{cmd}`:\n\n| strategy") and text.endswith("|\n\nAfter.\n")
    assert main(["--results", str(tmp_path), "--refresh", str(doc)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["--refresh", str(tmp_path / "missing.md")]) == 2


def test_per_seed_cells(tmp_path):
    _fake_run(tmp_path, "gd", 1, 12.0, 0.60)
    _fake_run(tmp_path, "gd", 0, 10.0, 0.70)
    _fake_run(tmp_path, "gr", 2, 40.0, 0.50)
    from cl_diffusion.tables import parse_columns

    table = build_table(tmp_path, "fmnist-5", "quick", "markdown", parse_columns("fid,fid_clf,acc"), per_seed=True)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.splitlines() if line.startswith("| g")}
    assert rows["gd"][:3] == ["0, 1", "–", "10.00 / 12.00"]  # seeds in order; FID blank in both runs
    assert rows["gr"] == ["2", "–", "40.00", "0.500"] and rows["gd"][3] == "0.700 / 0.600"


def test_per_task_means_over_seeds(tmp_path, capsys):
    _fake_run(tmp_path, "gd", 0, 10.0, 0.70)  # task 1: fid_clf 99, acc 0.99 in every fake run
    _fake_run(tmp_path, "gd", 1, 12.0, 0.60)
    from cl_diffusion.tables import parse_columns

    table = build_table(tmp_path, "fmnist-5", "quick", "markdown", parse_columns("fid_clf,acc"), per_task=True)
    (row,) = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| gd")]
    assert row == ["gd", "0, 1", "99.00 / 11.00", "0.990 / 0.650"]
    assert main(["--results", str(tmp_path), "--per-task", "--columns", "acc_fr"]) == 2
    assert "--per-task shows metrics after each task" in capsys.readouterr().err


def test_refresh_reads_several_results_folders_and_replay_quality_tables(tmp_path, capsys):
    """A documented command's paths under ``results/`` are read from ``--results``: a second
    ``--results results/analysis/x`` folder, and ``replay_quality --table results/...json`` files."""
    results = tmp_path / "res"
    _fake_run(results, "gd", 0, 10.0, 0.70)
    _fake_run(results / "analysis" / "x", "gd", 0, 11.0, 0.80, grid={"solver_replay_pool": "0"})
    rq = {"task": 1, "config": {"benchmark": "fmnist-5", "strategy": "gd", "seed": 0},
          "rows": [{"steps": 2, "fid_clf": 104.2249, "kld": 2.6591, "ard": 0.93, "share_seen": 0.07}]}
    (results / "analysis" / "rq.json").write_text(json.dumps(rq))
    cmd1 = "python -m cl_diffusion.tables --results results --results results/analysis/x --columns acc"
    cmd2 = "python -m cl_diffusion.replay_quality --table results/analysis/rq.json"
    doc = tmp_path / "doc.md"
    doc.write_text(f"`{cmd1}`:\n\n| stale |\n\nand `{cmd2}`:\n\n| stale |\n")
    assert main(["--results", str(results), "--refresh", str(doc)]) == 0
    assert "updated (2 tables)" in capsys.readouterr().out
    text = doc.read_text()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")]
    assert ["gd", "1", "0.700"] in rows and ["gd__solver_replay_pool=0", "1", "**0.800**"] in rows
    assert ["fmnist-5 gd seed 0, after task 1", "2", "104.22", "2.659", "0.930", "0.070"] in rows
    assert "stale" not in text


def test_replay_quality_table_rejects_a_missing_file(tmp_path, capsys):
    from cl_diffusion.replay_quality import main as rq_main

    assert rq_main(["--table", str(tmp_path / "none.json")]) == 2
    assert rq_main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "none.json" in err[0] and "--table" in err[1]


def test_rank_per_column_by_hand(tmp_path, capsys):
    """--rank: 1 = best in each column's direction, ties at the displayed precision share the better rank."""
    _fake_run(tmp_path, "gd", 0, 10.0, 0.70)
    _fake_run(tmp_path, "gr", 0, 40.0, 0.50)
    _fake_run(tmp_path, "lwf", 0, 10.001, 0.60)  # FID_clf 10.00 at 2 decimals: ties gd
    from cl_diffusion.tables import parse_columns

    table = build_table(tmp_path, "fmnist-5", "quick", "markdown", parse_columns("fid_clf,acc"), rank=True)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:-1]]
            for line in table.splitlines() if line.startswith("| ") and "strategy" not in line}
    assert rows == {"gd": ["**10.00 (1)**", "**0.700 (1)**"], "gr": ["40.00 (3)", "0.500 (3)"],
                    "lwf": ["**10.00 (1)**", "0.600 (2)"]}
    assert main(["--results", str(tmp_path), "--rank", "--per-seed"]) == 2
    assert main(["--results", str(tmp_path), "--rank", "--compare", "gd,gr"]) == 2
    assert "--rank" in capsys.readouterr().err
