"""FID_clf (and FID where present) after the last task against the teacher's DDIM steps, for gr
and gd. Reads results/, never trains. A point is every gr/gd run whose only change from its
strategy's defaults is ``teacher_steps``: the plain runs (at the default of 2 steps) and the
``--grid teacher_steps=10,100`` variants.

    python paper_figures/teacher_steps.py --benchmark fmnist-5 --profile quick
"""
from _common import color, load_runs, mean_se, parser, plt, save


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    df = load_runs(args.results, args.benchmark, args.profile)
    df = df[df["strategy"].isin(["gr", "gd"]) & df["param_teacher_steps"].notna()]
    other_grids = [c for c in df if c.startswith("grid_") and c != "grid_teacher_steps"]
    df = df[df[other_grids].isna().all(axis=1)] if other_grids else df
    if df["param_teacher_steps"].nunique() < 2:
        raise SystemExit("only one teacher_steps value among the gr/gd runs: run the sweep with "
                         "--grid teacher_steps=10,100")
    last = df[df["task"] == df["task"].max()]
    cols = [c for c in ("fid_clf", "fid", "kld") if c in last and last[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4))
    axes = axes if len(cols) > 1 else [axes]
    ticks = sorted({int(s) for s in last["param_teacher_steps"]})  # label the step counts run, not log-decades
    for ax, col in zip(axes, cols):
        for strategy in ("gr", "gd"):
            sub = last[last["strategy"] == strategy]
            steps = sorted({int(s) for s in sub["param_teacher_steps"]})
            stats = [mean_se(sub[sub["param_teacher_steps"].astype(int) == s][col]) for s in steps]
            ax.errorbar(steps, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                        label=strategy, color=color(strategy))
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("teacher DDIM steps")
        ax.set_title(f"{col} after the last task", fontsize=10)
    axes[0].legend()
    save(fig, args.out, f"{args.benchmark}_{args.profile}_teacher_steps.png")


if __name__ == "__main__":
    main()
