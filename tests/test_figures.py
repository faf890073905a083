"""Every figure script turns results/ into its PNG, without training, and the figure shows those runs.

The results are copies of committed runs (metrics, manifest, config, last sample grid), plus a
``teacher_steps`` and a ``lambda`` grid variant made from one of them, in a temporary results/
folder: three base variants (finetune, gr, gd) of five tasks each, plus ``gd__teacher_steps=10``
and ``gd__lambda=2``. Every script runs from the command line (exit code, a PNG that is not blank)
and in-process, where its ``main`` returns the figure: the tests count its axes and the lines,
bars, points and images on each, read the titles and labels, and compare the plotted values with
the copied metrics.csv files. The image writers of ``cl_diffusion`` (the sample grid and the class
histogram) are checked pixel by pixel at the end.
"""
from __future__ import annotations

import csv
import functools
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO

SCRIPTS = ("curves", "samples", "costs", "quality_vs_compute", "teacher_steps", "lambda_sweep")
SOURCE = REPO / "results" / "fmnist-5" / "quick"
FILES = ("metrics.csv", "manifest.json", "config.json", "samples_task5.png")
BASE = ("finetune", "gr", "gd")  # the base variants, in the figures' order (``_common.ORDER``)
VARIANTS = (*BASE, "gd__lambda=2", "gd__teacher_steps=10")  # every variant, sorted as the figures sort them
TASKS = [1, 2, 3, 4, 5]


def _copy_run(variant_src: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in FILES:
        shutil.copy(SOURCE / variant_src / "seed0" / name, dest / name)
    return dest


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    if not all((SOURCE / s / "seed0" / "manifest.json").is_file() for s in ("finetune", "gr", "gd")):
        pytest.skip("committed fmnist-5 quick runs not present")
    root = tmp_path_factory.mktemp("results")
    base = root / "fmnist-5" / "quick"
    for s in ("finetune", "gr", "gd"):
        _copy_run(s, base / s / "seed0")
    step10 = _copy_run("gd", base / "gd__teacher_steps=10" / "seed0")
    _edit_json(step10 / "manifest.json", variant="gd__teacher_steps=10", grid={"teacher_steps": "10"})
    _edit_json(step10 / "config.json", strategy_params={"teacher_steps": 10})
    lam = _copy_run("gd", base / "gd__lambda=2" / "seed0")  # must stay out of the teacher-steps plot, in lambda's
    _edit_json(lam / "manifest.json", variant="gd__lambda=2", grid={"lambda": "2"})
    _edit_json(lam / "config.json", strategy_params={"lambda": 2.0})
    return root


def _run_dir(results: Path, variant: str) -> Path:
    return results / "fmnist-5" / "quick" / variant / "seed0"


def _column(results: Path, variant: str, col: str) -> list[float]:
    """One column of a copied run's metrics.csv, task by task (blank -> NaN)."""
    with open(_run_dir(results, variant) / "metrics.csv", newline="") as fh:
        return [float(r[col]) if r[col] else float("nan") for r in csv.DictReader(fh)]


def _strategy_param(results: Path, variant: str, key: str) -> float:
    return float(json.loads((_run_dir(results, variant) / "config.json").read_text())["strategy_params"][key])


def assert_png_not_blank(png: Path) -> None:
    """A PNG with visible content: its pixels vary, and some are dark (text, lines, bars, images),
    not only the white background. The figures here measure std >= 0.13 and >= 2% dark pixels."""
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = mpimg.imread(png)[..., :3]
    assert rgb.std() > 0.05, rgb.std()
    dark = (rgb < 0.5).any(axis=-1).mean()
    assert dark > 0.005, dark


@functools.lru_cache(maxsize=None)
def _script(name: str):
    """``paper_figures/<name>.py`` as a module (the scripts import ``_common`` from their folder)."""
    folder = str(REPO / "paper_figures")
    spec = importlib.util.spec_from_file_location(f"paper_figures_{name}", f"{folder}/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def colour_pixels(png: Path, variant: str) -> int:
    """How many pixels of the PNG have ``variant``'s plot colour (``_common.color``), within 0.02."""
    from matplotlib.colors import to_rgb

    rgb = mpimg.imread(png)[..., :3]
    target = np.array(to_rgb(_script("_common").color(variant)))
    return int((np.abs(rgb - target).max(axis=-1) < 0.02).sum())


def _assert_drawn(png: Path, drawn: tuple[str, ...], absent: tuple[str, ...] = ()) -> None:
    """The written PNG shows the ``drawn`` strategies' data in their colours (the figures here have
    at least 90 such pixels per strategy), and nothing in the ``absent`` ones' colours."""
    for variant in drawn:
        assert colour_pixels(png, variant) > 20, variant
    for variant in absent:
        assert colour_pixels(png, variant) == 0, variant


def test_png_checks_reject_blank_and_empty_figures(tmp_path):
    """The not-blank check fails on a figure with nothing drawn; empty axes pass it (their frame
    and ticks are dark pixels), but hold none of the strategies' colours that the tests look for."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(3, 2))
    fig.savefig(tmp_path / "empty.png", dpi=60)
    fig, _ = plt.subplots(figsize=(3, 2))
    fig.savefig(tmp_path / "axes.png", dpi=60)
    plt.close("all")
    with pytest.raises(AssertionError):
        assert_png_not_blank(tmp_path / "empty.png")
    assert_png_not_blank(tmp_path / "axes.png")
    for variant in ("gr", "gd"):
        with pytest.raises(AssertionError):
            _assert_drawn(tmp_path / "axes.png", drawn=(variant,))


def _figure(script: str, results: Path, out: Path, monkeypatch, *extra: str):
    """Run ``paper_figures/<script>.py``'s ``main`` in this process; returns its figure."""
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--benchmark", "fmnist-5", "--profile", "quick",
                                      "--results", str(results), "--out", str(out), *extra])
    fig = _script(script).main()
    assert_png_not_blank(out / f"fmnist-5_quick_{script}.png")
    return fig


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _errorbar_points(ax) -> dict[str, tuple[list[float], list[float]]]:
    """Strategy -> (x, y) of each errorbar line with data (``plot_against_param``)."""
    points = {}
    for c in ax.containers:
        line = c.lines[0]
        if len(line.get_xdata()):
            points[c.get_label()] = ([float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()])
    return points


@pytest.mark.parametrize("script", SCRIPTS)
def test_figure_script_writes_its_png(script: str, results: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, str(REPO / "paper_figures" / f"{script}.py"), "--benchmark", "fmnist-5",
                           "--profile", "quick", "--results", str(results), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    png = out / f"fmnist-5_quick_{script}.png"
    assert proc.stdout.strip().splitlines()[-1] == str(png)
    assert_png_not_blank(png)


def test_curves_one_line_per_base_variant_per_metric(results, tmp_path, monkeypatch):
    fig = _figure("curves", results, tmp_path, monkeypatch)
    # fid is blank in every run: no panel for it
    panels = (("fid_clf", "FID_clf"), ("kld", "KLD"), ("acc", "ACC"))
    assert len(fig.axes) == len(panels)
    for ax, (col, name) in zip(fig.axes, panels):
        assert name in ax.get_title() and ax.get_xlabel() == "after task"
        assert [line.get_label() for line in ax.lines] == list(BASE)  # grid variants left out
        assert len(ax.collections) == len(BASE)  # one standard-error band per line
        for line, variant in zip(ax.lines, BASE):
            assert np.array_equal(line.get_xdata(), TASKS)
            assert np.allclose(line.get_ydata(), _column(results, variant, col)), (col, variant)
    assert _legend(fig.axes[0]) == list(BASE)
    _assert_drawn(tmp_path / "fmnist-5_quick_curves.png", drawn=("gr", "gd"))


@pytest.mark.parametrize("script", ["curves", "samples", "costs"])
def test_variants_chooses_what_a_per_strategy_figure_draws(script, results, tmp_path, monkeypatch, capsys):
    """--variants as in the tables (a name and a pattern); a name that matches nothing exits 2 with
    one line naming the valid variants, and writes no PNG."""
    fig = _figure(script, results, tmp_path, monkeypatch, "--variants", "finetune,gd__*")
    ax = fig.axes[0]
    drawn = ([t.get_text() for t in ax.get_xticklabels()] if script == "costs" else
             [a.get_title() for a in fig.axes] if script == "samples" else [line.get_label() for line in ax.lines])
    assert drawn == ["finetune", "gd__lambda=2", "gd__teacher_steps=10"]
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--results", str(results), "--out", str(tmp_path / "bad"),
                                      "--variants", "gd,nosuch"])
    with pytest.raises(SystemExit) as e:
        _script(script).main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "'nosuch'" in err[0] and "gd__lambda=2" in err[0]
    assert not (tmp_path / "bad").exists()


def test_samples_shows_each_base_variants_last_grid(results, tmp_path, monkeypatch):
    fig = _figure("samples", results, tmp_path, monkeypatch)
    assert [ax.get_title() for ax in fig.axes] == list(BASE)
    for ax, variant in zip(fig.axes, BASE):
        (image,) = ax.images
        expected = mpimg.imread(_run_dir(results, variant) / "samples_task5.png")
        assert np.array_equal(np.asarray(image.get_array()), expected), variant


def test_costs_bars_are_medians_over_tasks_after_the_first(results, tmp_path, monkeypatch):
    """CPU seconds where a run recorded them, else wall-clock seconds, hatched."""
    import shutil

    results = Path(shutil.copytree(results, tmp_path / "own_results"))  # the fixture is shared: edit a copy
    cpu = [float(s) / 3 for s in _column(results, "gd", "train_seconds")]
    for v in BASE:  # gd gets a CPU-time column of its own; the others lose theirs, as older runs lack it
        path = _run_dir(results, v) / "metrics.csv"
        with open(path, newline="") as fh:
            rows = [{k: x for k, x in r.items() if k != "train_cpu_seconds"} for r in csv.DictReader(fh)]
        if v == "gd":
            rows = [{**r, "train_cpu_seconds": c} for r, c in zip(rows, cpu)]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    fig = _figure("costs", results, tmp_path, monkeypatch)
    panels = (("seconds", "training CPU seconds"), ("teacher_image_evals", "teacher network evaluations"))
    assert len(fig.axes) == len(panels)
    for ax, (col, name) in zip(fig.axes, panels):
        assert name in ax.get_title()
        (bars,) = ax.containers
        assert [t.get_text() for t in ax.get_xticklabels()] == list(BASE)
        column = {v: (cpu if v == "gd" and col == "seconds" else _column(results, v, "train_seconds" if col == "seconds"
                                                                          else col)) for v in BASE}
        expected = [statistics.median(column[v][1:]) for v in BASE]
        assert [b.get_height() for b in bars] == pytest.approx(expected), col
        if col == "seconds":
            assert [b.get_hatch() or "" for b in bars] == ["" if v == "gd" else "//" for v in BASE]
    assert [b.get_height() for b in fig.axes[1].containers[0]][0] == 0  # finetune has no teacher
    _assert_drawn(tmp_path / "fmnist-5_quick_costs.png", drawn=("gr", "gd"))


def test_quality_vs_compute_one_point_per_run(results, tmp_path, monkeypatch):
    fig = _figure("quality_vs_compute", results, tmp_path, monkeypatch)
    (ax,) = fig.axes
    assert "FID_clf" in ax.get_ylabel() and "training minutes" in ax.get_xlabel()
    assert [c.get_label() for c in ax.collections] == list(VARIANTS)  # grid variants included
    assert _legend(ax) == list(VARIANTS)
    for points, variant in zip(ax.collections, VARIANTS):
        expected = [sum(_column(results, variant, "train_seconds")) / 60, _column(results, variant, "fid_clf")[-1]]
        assert points.get_offsets().tolist() == [pytest.approx(expected)], variant
    _assert_drawn(tmp_path / "fmnist-5_quick_quality_vs_compute.png", drawn=("gr", "gd"))


def test_teacher_steps_one_point_per_value_run(results, tmp_path, monkeypatch):
    fig = _figure("teacher_steps", results, tmp_path, monkeypatch)
    # fid is blank in every run: no panel for it
    assert [ax.get_title() for ax in fig.axes] == ["fid_clf after the last task", "kld after the last task"]
    for ax, col in zip(fig.axes, ("fid_clf", "kld")):
        assert ax.get_xlabel() == "teacher DDIM steps"
        gr, gd = (_column(results, v, col)[-1] for v in ("gr", "gd"))
        # gd at its default (2) and the teacher_steps=10 variant; the lambda=2 variant stays out
        assert _errorbar_points(ax) == {"gr": ([2.0], [pytest.approx(gr)]),
                                        "gd": ([2.0, 10.0], [pytest.approx(gd), pytest.approx(gd)])}
        assert list(ax.get_xticks()) == [2.0, 10.0]
    assert _legend(fig.axes[0]) == ["gr", "gd"]
    _assert_drawn(tmp_path / "fmnist-5_quick_teacher_steps.png", drawn=("gr", "gd"))


def test_lambda_sweep_one_point_per_value_run(results, tmp_path, monkeypatch):
    fig = _figure("lambda_sweep", results, tmp_path, monkeypatch)
    cols = ("fid_clf", "kld", "acc")  # fid is blank in every run: no panel for it
    assert [ax.get_title() for ax in fig.axes] == [f"{c} after the last task" for c in cols]
    default = _strategy_param(results, "gd", "lambda")
    assert default != 2.0
    for ax, col in zip(fig.axes, cols):
        assert "lambda" in ax.get_xlabel()
        gd = pytest.approx(_column(results, "gd", col)[-1])
        # gd at its default and the lambda=2 variant (lwf and gaussian have no runs here); the
        # teacher_steps=10 variant stays out
        assert _errorbar_points(ax) == {"gd": (sorted([default, 2.0]), [gd, gd])}
        assert list(ax.get_xticks()) == sorted([default, 2.0])
    assert _legend(fig.axes[0]) == ["gd"]  # lwf and gaussian have no runs: no legend entry
    _assert_drawn(tmp_path / "fmnist-5_quick_lambda_sweep.png", drawn=("gd",), absent=("gr",))  # gr has no lambda


@pytest.mark.parametrize("script, hint", [("teacher_steps", "--grid teacher_steps=10,100"),
                                          ("lambda_sweep", "--grid lambda=")])
def test_knob_figure_needs_two_values(script: str, hint: str, tmp_path: Path) -> None:
    """With only the plain gd run (one teacher_steps, one lambda) the script stops and names the sweep to run."""
    if not (SOURCE / "gd" / "seed0" / "manifest.json").is_file():
        pytest.skip("committed fmnist-5 quick runs not present")
    _copy_run("gd", tmp_path / "fmnist-5" / "quick" / "gd" / "seed0")
    proc = subprocess.run([sys.executable, str(REPO / "paper_figures" / f"{script}.py"), "--results",
                           str(tmp_path), "--out", str(tmp_path / "figs")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and hint in proc.stderr, proc.stderr
    assert not (tmp_path / "figs").exists()


def test_save_grid_places_each_image_in_the_grid(tmp_path):
    """Four 3x3 single-channel images -> a 2x2 grid with 1-pixel white padding, [-1, 1] mapped to
    0..255 (values outside clamped), grey copied into R, G and B."""
    from cl_diffusion.sampling import save_grid

    values = [-1.0, -0.5, 0.5, 3.0]  # 3.0 is clamped to 1
    x = torch.tensor(values).view(4, 1, 1, 1).expand(4, 1, 3, 3).clone()
    save_grid(x, tmp_path / "grid.png")
    img = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert img.shape == (9, 9, 3)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    expected = np.full((9, 9), 255, np.uint8)
    for i, level in enumerate([0, 64, 191, 255]):  # floor((v + 1) / 2 * 255 + 0.5)
        r, c = divmod(i, 2)
        expected[1 + 4 * r: 4 + 4 * r, 1 + 4 * c: 4 + 4 * c] = level
    assert np.array_equal(img[..., 0], expected)


def test_class_histogram_bars_follow_the_shares(tmp_path):
    """The bars' areas follow ``p_gen`` (blue) and ``p_true`` (grey): four equal blue bars cover
    about four times the blue area of one bar of the same height (measured: 26524 vs 7213 pixels),
    and with ``p_gen`` all zero only the legend's patch is blue (133 pixels)."""
    from cl_diffusion.evaluation.plots import save_class_histogram

    def areas(p_gen: list[float]) -> tuple[int, int]:
        path = tmp_path / f"hist_{len(list(tmp_path.iterdir()))}.png"
        save_class_histogram(torch.full((4,), 0.25), torch.tensor(p_gen), ["a", "b", "c", "d"], path, title="t")
        img = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert img.shape == (320, 400, 3)  # figsize (4, 3.2) at 100 dpi for 4 classes
        assert_png_not_blank(path)
        blue = int((np.abs(img - [31, 119, 180]).sum(-1) <= 6).sum())  # tab:blue, p_gen
        grey = int((np.abs(img - [153, 153, 153]).sum(-1) <= 3).sum())  # 0.6 grey, p_true
        return blue, grey

    uniform, one, none = areas([0.25] * 4), areas([1.0, 0, 0, 0]), areas([0.0] * 4)
    assert uniform[0] > 3 * one[0] > 3 * 1000 > 3 * none[0]
    assert uniform[1] > 3 * one[1]  # y axis up to 1 instead of 0.25: the grey bars a quarter as tall
    assert none[1] == pytest.approx(uniform[1], rel=0.05)
