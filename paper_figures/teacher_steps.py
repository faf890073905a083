"""FID_clf (and FID where present) and KLD after the last task against the teacher's DDIM steps,
for gr and gd. Reads results/, never trains. A point is every gr/gd run whose only change from its
strategy's defaults is ``teacher_steps``: the plain runs (at the default of 2 steps) and the
``--grid teacher_steps=10,100`` variants.

    python paper_figures/teacher_steps.py --benchmark fmnist-5 --profile quick
"""
from _common import knob_figure, parser, plt, save


def main() -> "plt.Figure":
    """Write the PNG; returns the figure (closed) for tests to inspect."""
    args = parser(__doc__.split("\n")[0]).parse_args()
    fig = knob_figure(args, ("gr", "gd"), "teacher_steps", ("fid_clf", "fid", "kld"), "teacher DDIM steps",
                      "only one teacher_steps value among the gr/gd runs: run the sweep with "
                      "--grid teacher_steps=10,100")
    save(fig, args.out, f"{args.benchmark}_{args.profile}_teacher_steps.png")
    return fig


if __name__ == "__main__":
    main()
