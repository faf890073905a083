"""Sample grids after the last task, one per strategy, side by side in rows of at most
:data:`PER_ROW` (seed 0 of each strategy).
Reads the PNG grids that runs wrote into results/, never trains.

    python paper_figures/samples.py --benchmark fmnist-5 --profile quick
"""
from pathlib import Path

import matplotlib.image as mpimg
from _common import load_runs, parser, pick, plt, save, sort_variants

PER_ROW = 8


def main() -> "plt.Figure":
    """Write the PNG; returns the figure (closed) for tests to inspect."""
    args = parser(__doc__.split("\n")[0], variants=True).parse_args()
    df = load_runs(args.results, args.benchmark, args.profile)
    df = pick(df, args.variants)
    variants = sort_variants(df["variant"])
    cols = min(len(variants), PER_ROW)
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(variants):]:
        fig.delaxes(ax)  # the last row's empty places
    for ax, variant in zip(axes.flat, variants):
        sub = df[(df["variant"] == variant)]
        run_dir = Path(sub.sort_values("seed")["run_dir"].iloc[0])
        last = int(sub["task"].max())
        ax.imshow(mpimg.imread(run_dir / f"samples_task{last}.png"), cmap="gray")
        ax.set_title(variant, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{args.benchmark}, profile {args.profile}: samples after the last task (same noise)", fontsize=10)
    save(fig, args.out, f"{args.benchmark}_{args.profile}_samples.png")
    return fig


if __name__ == "__main__":
    main()
