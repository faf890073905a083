"""Options of the evaluator (Masip et al. 2024, Sec. 5 evaluation protocol). One field per option."""
from __future__ import annotations

from dataclasses import dataclass

from ..options import opt


@dataclass
class EvalConfig:
    """Evaluation after every task: FID, FID_clf, KLD/ARD, solver ACC, per-task matrix."""

    eval_samples: int = opt(10000, "generated samples per evaluation (paper: 10,000)", min=0)
    eval_batch_size: int = opt(500, "batch size for evaluation sampling and feature extraction", min=1)
    eval_steps: int = opt(10, "DDIM steps for evaluation samples and solver replay (paper: 10 FMNIST, 20 CIFAR)", min=1)
    inception_weights: str = opt("", "path to torch-fidelity's InceptionV3 weights (pt_inception-2015-12-05); "
                                    "'' = env CL_DIFFUSION_INCEPTION_WEIGHTS, else torch-fidelity's download, "
                                    "else fid is left blank")
    classifier: str = opt("resnet18", "evaluation classifier for KLD/ARD/FID_clf", choices=("resnet18", "cnn"))
    solver_epochs: int = opt(20, "epochs per task of the generative-replay solver (paper: 20); 0 = no solver", min=0)
    solver_iters_per_task: int = opt(0, "cap on solver iterations per task; 0 = whole epochs", min=0)
    solver_lr: float = opt(1e-3, "solver Adam learning rate", min=0.0, min_exclusive=True)
    solver_batch_size: int = opt(128, "solver batch: this many real images plus this many replayed samples", min=1)
    kd_temperature: float = opt(2.0, "solver distillation temperature T (loss scaled by T^2)", min=0.0, min_exclusive=True)
    kd_variant: str = opt("standard", "solver KD: 'standard' (teacher probs as targets) or 'paper-code' "
                                     "(student probs outside the log, as in the paper's code)",
                          choices=("standard", "paper-code"))
    tensorboard: bool = opt(False, "also log every metric to TensorBoard through Avalanche's logger")
