"""Cost chart: training seconds per task and teacher network evaluations (per image) per task,
per strategy (median over seeds and tasks after the first). Seconds are the process's CPU time
(``train_cpu_seconds``), which a paused or shared machine does not inflate; runs that predate that
column show wall-clock ``train_seconds``, hatched. Reads results/, never trains.

    python paper_figures/costs.py --benchmark fmnist-5 --profile quick
"""
from _common import color, load_runs, parser, pick, plt, save, sort_variants


def main() -> "plt.Figure":
    """Write the PNG; returns the figure (closed) for tests to inspect."""
    args = parser(__doc__.split("\n")[0], variants=True).parse_args()
    df = load_runs(args.results, args.benchmark, args.profile)
    df = pick(df, args.variants)
    df = df[df["task"] > 1]
    variants = sort_variants(df["variant"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    cpu = df["train_cpu_seconds"] if "train_cpu_seconds" in df else df["train_seconds"] * float("nan")
    df = df.assign(seconds=cpu.fillna(df["train_seconds"]), wall=cpu.isna())
    for ax, col, title in ((axes[0], "seconds", "training CPU seconds per task (tasks 2.., median)\n"
                                                "hatched: wall clock, no CPU time recorded"),
                           (axes[1], "teacher_image_evals", "teacher network evaluations per task")):
        vals = [df[df["variant"] == v][col].median() for v in variants]
        bars = ax.bar(variants, vals, color=[color(v) for v in variants])
        if col == "seconds":
            for bar, v in zip(bars, variants):
                bar.set_hatch("//" if df[df["variant"] == v]["wall"].any() else "")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=30)
    save(fig, args.out, f"{args.benchmark}_{args.profile}_costs.png")
    return fig


if __name__ == "__main__":
    main()
