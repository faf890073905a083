"""finetune: train on each task in turn with no protection against forgetting (lower bound).

The evaluation solver is finetuned too: it trains on the current task only, with no replay."""
from cl_diffusion.strategy import STRATEGIES, SolverTraining, Strategy, TaskContext


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    """Plain epsilon-MSE on the current task only; the base class does everything."""

    keeps_previous = False

    def solver_training(self, ctx: TaskContext) -> SolverTraining:
        return SolverTraining(ctx.stream.tasks[ctx.k].train, replay=None)
