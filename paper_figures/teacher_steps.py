"""FID_clf (and FID where present) after the last task against the teacher's DDIM steps, for gr
and gd. Reads results/, never trains. A point is every gr/gd run whose only change from its
strategy's defaults is ``teacher_steps``: the plain runs (at the default of 2 steps) and the
``--grid teacher_steps=10,100`` variants.

    python paper_figures/teacher_steps.py --benchmark fmnist-5 --profile quick
"""
from _common import load_runs, one_knob_last_task, parser, plot_against_param, plt, save

STRATEGIES = ("gr", "gd")


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    last = one_knob_last_task(load_runs(args.results, args.benchmark, args.profile), STRATEGIES, "teacher_steps")
    if last["param_teacher_steps"].nunique() < 2:
        raise SystemExit("only one teacher_steps value among the gr/gd runs: run the sweep with "
                         "--grid teacher_steps=10,100")
    cols = [c for c in ("fid_clf", "fid", "kld") if c in last and last[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4))
    axes = axes if len(cols) > 1 else [axes]
    for ax, col in zip(axes, cols):
        plot_against_param(ax, last, STRATEGIES, "teacher_steps", col)
        ax.set_xlabel("teacher DDIM steps")
        ax.set_title(f"{col} after the last task", fontsize=10)
    axes[0].legend()
    save(fig, args.out, f"{args.benchmark}_{args.profile}_teacher_steps.png")


if __name__ == "__main__":
    main()
