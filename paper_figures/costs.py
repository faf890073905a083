"""Cost chart: training seconds per task and teacher network evaluations (per image) per task,
per strategy (median over seeds and tasks after the first: wall-clock seconds on a shared machine
have outliers). Reads results/, never trains.

    python paper_figures/costs.py --benchmark fmnist-5 --profile quick
"""
from _common import color, load_runs, parser, plt, save, sort_variants


def main() -> "plt.Figure":
    """Write the PNG; returns the figure (closed) for tests to inspect."""
    args = parser(__doc__.split("\n")[0]).parse_args()
    df = load_runs(args.results, args.benchmark, args.profile)
    df = df[(~df["variant"].str.contains("__")) & (df["task"] > 1)]
    variants = sort_variants(df["variant"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, col, title in ((axes[0], "train_seconds", "training seconds per task (tasks 2.., median)"),
                           (axes[1], "teacher_image_evals", "teacher network evaluations per task")):
        vals = [df[df["variant"] == v][col].median() for v in variants]
        ax.bar(variants, vals, color=[color(v) for v in variants])
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
    save(fig, args.out, f"{args.benchmark}_{args.profile}_costs.png")
    return fig


if __name__ == "__main__":
    main()
