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
