"""Quality against compute: FID_clf after the last task against total training seconds, one
point per run, every variant (grid variants included). Reads results/, never trains.

    python paper_figures/quality_vs_compute.py --benchmark fmnist-5 --profile quick
"""
from _common import color, load_runs, parser, plt, save, sort_variants


def main() -> "plt.Figure":
    """Write the PNG; returns the figure (closed) for tests to inspect."""
    args = parser(__doc__.split("\n")[0]).parse_args()
    df = load_runs(args.results, args.benchmark, args.profile)
    total = df.groupby(["variant", "seed"]).agg(train_seconds=("train_seconds", "sum"),
                                                 fid_clf=("fid_clf", "last")).reset_index()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for variant in sort_variants(total["variant"]):
        sub = total[total["variant"] == variant]
        ax.scatter(sub["train_seconds"] / 60, sub["fid_clf"], color=color(variant), s=18,
                   marker="o" if "__" not in variant else "x", label=variant)
    ax.set_xlabel("total training minutes (all tasks)")
    ax.set_ylabel("FID_clf after the last task (lower is better)")
    ax.legend(fontsize=6, ncol=2)
    save(fig, args.out, f"{args.benchmark}_{args.profile}_quality_vs_compute.png")
    return fig


if __name__ == "__main__":
    main()
