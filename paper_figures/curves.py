"""Per-task curves of FID_clf (and FID where present), KLD and ACC, mean with standard-error
bands over seeds, one line per strategy. Reads results/, never trains.

    python paper_figures/curves.py --benchmark fmnist-5 --profile quick
"""
from _common import color, line_style, load_runs, mean_se, parser, pick, plt, save, sort_variants

PANELS = [("fid_clf", "FID_clf (own classifier features)"), ("fid", "FID (Inception)"), ("kld", "KLD"),
          ("acc", "solver ACC (seen tasks)")]


def main() -> "plt.Figure":
    """Write the PNG; returns the figure (closed) for tests to inspect."""
    args = parser(__doc__.split("\n")[0], variants=True).parse_args()
    df = load_runs(args.results, args.benchmark, args.profile)
    df = pick(df, args.variants)  # the strategies at their defaults unless --variants says otherwise
    panels = [(c, t) for c, t in PANELS if c in df and df[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (col, title) in zip(axes, panels):
        for variant in sort_variants(df["variant"]):
            sub = df[df["variant"] == variant]
            tasks = sorted(sub["task"].unique())
            stats = [mean_se(sub[sub["task"] == t][col]) for t in tasks]
            m = [s[0] for s in stats]
            se = [s[1] for s in stats]
            ax.plot(tasks, m, marker="o", ms=3, label=variant, color=color(variant), linestyle=line_style(variant))
            ax.fill_between(tasks, [a - b for a, b in zip(m, se)], [a + b for a, b in zip(m, se)],
                            color=color(variant), alpha=0.15)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("after task")
        ax.set_xticks(tasks)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{args.benchmark}, profile {args.profile}: per-task curves (mean ± SE over seeds)", fontsize=10)
    save(fig, args.out, f"{args.benchmark}_{args.profile}_curves.png")
    return fig


if __name__ == "__main__":
    main()
