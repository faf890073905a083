"""finetune: train on each task in turn with no protection against forgetting (lower bound)."""
from cl_diffusion.strategy import STRATEGIES, Strategy


@STRATEGIES.register("finetune")
class Finetune(Strategy):
    """Plain epsilon-MSE on the current task only; the base class does everything."""
