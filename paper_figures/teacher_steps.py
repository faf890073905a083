"""FID_clf (and FID where present) after the last task against the teacher's DDIM steps, for gr
and gd. Reads the ``teacher_steps`` grid variants in results/, never trains.

    python paper_figures/teacher_steps.py --benchmark fmnist-5 --profile quick
"""
from _common import color, load_runs, mean_se, parser, plt, save


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    df = load_runs(args.results, args.benchmark, args.profile)
    if "grid_teacher_steps" not in df:
        raise SystemExit("no teacher_steps variants: run the sweep with --grid teacher_steps=2,10,100")
    df = df[df["grid_teacher_steps"].notna()]
    last = df[df["task"] == df["task"].max()]
    cols = [c for c in ("fid_clf", "fid", "kld") if c in last and last[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4))
    axes = axes if len(cols) > 1 else [axes]
    for ax, col in zip(axes, cols):
        for strategy in ("gr", "gd"):
            sub = last[last["strategy"] == strategy]
            steps = sorted({int(s) for s in sub["grid_teacher_steps"]})
            stats = [mean_se(sub[sub["grid_teacher_steps"].astype(int) == s][col]) for s in steps]
            ax.errorbar(steps, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3,
                        label=strategy, color=color(strategy))
        ax.set_xscale("log")
        ax.set_xlabel("teacher DDIM steps")
        ax.set_title(f"{col} after the last task", fontsize=10)
    axes[0].legend()
    save(fig, args.out, f"{args.benchmark}_{args.profile}_teacher_steps.png")


if __name__ == "__main__":
    main()
