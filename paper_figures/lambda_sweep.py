"""FID_clf, KLD and ACC after the last task against the distillation weight lambda, for gd, lwf
and gaussian. Reads results/, never trains. A point is every run of those strategies whose only
change from its defaults is ``lambda``: the plain runs (at each strategy's default, 0.75, 1.25
and 8) and the ``--grid lambda=...`` variants; mean +- SE where a lambda has several seeds.

    python paper_figures/lambda_sweep.py --benchmark fmnist-5 --profile quick
"""
from _common import load_runs, one_knob_last_task, parser, plot_against_param, plt, save

STRATEGIES = ("gd", "lwf", "gaussian")


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    last = one_knob_last_task(load_runs(args.results, args.benchmark, args.profile), STRATEGIES, "lambda")
    if last.empty or last.groupby("strategy")["param_lambda"].nunique().max() < 2:
        raise SystemExit("no strategy has runs at two lambdas: run the sweep with e.g. "
                         "--strategies gd --grid lambda=0.25,0.5,1,2")
    cols = [c for c in ("fid_clf", "fid", "kld", "acc") if c in last and last[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4))
    for ax, col in zip(axes, cols):
        plot_against_param(ax, last, STRATEGIES, "lambda", col)
        ax.set_xlabel("lambda (distillation weight)")
        ax.set_title(f"{col} after the last task", fontsize=10)
    axes[0].legend()
    save(fig, args.out, f"{args.benchmark}_{args.profile}_lambda_sweep.png")


if __name__ == "__main__":
    main()
