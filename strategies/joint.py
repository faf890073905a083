"""joint: the paper's 'cumulative' upper bound - keep training the same model on all data seen so far."""
from cl_diffusion.data import LabeledImages
from cl_diffusion.strategy import STRATEGIES, Strategy
from cl_diffusion.stream import TaskStream


@STRATEGIES.register("joint")
class Joint(Strategy):
    """Epsilon-MSE on the union of tasks 0..k during task k."""

    solver_mode = "joint"

    def train_data(self, stream: TaskStream, k: int) -> LabeledImages:
        return stream.seen_train(k)
