"""FID_clf, KLD and ACC after the last task against the distillation weight lambda, for gd, lwf
and gaussian. Reads results/, never trains. A point is every run of those strategies whose only
change from its defaults is ``lambda``: the plain runs (at each strategy's default, 0.75, 1.25
and 8) and the ``--grid lambda=...`` variants; mean +- SE where a lambda has several seeds.

    python paper_figures/lambda_sweep.py --benchmark fmnist-5 --profile quick
"""
from _common import knob_figure, parser, plt, save


def main() -> "plt.Figure":
    """Write the PNG; returns the figure (closed) for tests to inspect."""
    args = parser(__doc__.split("\n")[0]).parse_args()
    fig = knob_figure(args, ("gd", "lwf", "gaussian"), "lambda", ("fid_clf", "fid", "kld", "acc"),
                      "lambda (distillation weight)", "no strategy has runs at two lambdas: run the sweep "
                      "with e.g. --strategies gd --grid lambda=0.25,0.5,1,2")
    save(fig, args.out, f"{args.benchmark}_{args.profile}_lambda_sweep.png")
    return fig


if __name__ == "__main__":
    main()
