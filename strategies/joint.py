"""joint: the paper's 'cumulative' upper bound - keep training the same model on all data seen so far.

The evaluation solver trains on all data seen so far too, with no replay."""
from cl_diffusion.data import LabeledImages
from cl_diffusion.strategy import STRATEGIES, SolverTraining, Strategy, TaskContext


@STRATEGIES.register("joint")
class Joint(Strategy):
    """Epsilon-MSE on the union of tasks 0..k during task k."""

    keeps_previous = False

    @classmethod
    def trained_tasks(cls, k: int) -> range:
        return range(k + 1)

    def train_data(self, ctx: TaskContext) -> LabeledImages:
        return ctx.stream.seen_train(ctx.k)

    def solver_training(self, ctx: TaskContext) -> SolverTraining:
        return SolverTraining(ctx.stream.seen_train(ctx.k), replay=None)
