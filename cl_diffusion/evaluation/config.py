"""Options of the evaluator (Masip et al. 2024, Sec. 5 evaluation protocol). One field per option."""
from __future__ import annotations

from dataclasses import dataclass

from ..options import opt


@dataclass
class EvalConfig:
    """Evaluation after every task: FID, FID_clf, KLD/ARD, solver ACC, per-task matrix."""

    # --- generated samples ----------------------------------------------------------------------
    eval_samples: int = opt(10000, "generated samples per evaluation; 0 = no sample metrics", min=0)
    eval_batch_size: int = opt(500, "batch size for evaluation sampling and feature extraction", min=1)
    eval_steps: int = opt(10, "DDIM steps for evaluation samples and solver replay (each benchmark's paper "
                              "value: --list)", min=1, max="num_timesteps")
    # --- Inception FID ----------------------------------------------------------------------------
    fid_inception: bool = opt(True, "compute the Inception FID ('fid') when InceptionV3 weights are available")
    inception_weights: str = opt("", "path to torch-fidelity's InceptionV3 weights (pt_inception-2015-12-05); "
                                    "'' = env CL_DIFFUSION_INCEPTION_WEIGHTS, else torch-fidelity's download, "
                                    "else fid is left blank", protocol=False)
    # --- KID and precision/recall (hold at small sample counts; both feature spaces) ----------------
    kid_subsets: int = opt(100, "KID (Binkowski et al. 2018): random subsets averaged, their std reported "
                                "(torch-fidelity's default)", min=1)
    kid_subset_size: int = opt(1000, "KID: features per subset, capped at the smaller of the two sets "
                                     "(torch-fidelity's default)", min=2)
    pr_k: int = opt(3, "precision/recall (Kynkaanniemi et al. 2019): k of the k-NN manifold radii",
                    min=1)
    # --- evaluation classifier (KLD/ARD, FID_clf, routing of the per-task matrix) -----------------
    classifier: str = opt("resnet18", "evaluation classifier for KLD/ARD/FID_clf",
                          choices="cl_diffusion.evaluation.classifier:CLASSIFIERS")
    clf_epochs: int = opt(0, "classifier training epochs over all classes' training data; 0 = the preset's "
                             "(--list)", min=0)
    clf_iters: int = opt(0, "cap on classifier training iterations; 0 = the preset's (--list)", min=0)
    clf_batch_size: int = opt(0, "classifier training batch size; 0 = the preset's (--list)", min=0)
    clf_lr: float = opt(0.0, "classifier Adam learning rate (cosine-decayed); 0 = the preset's (--list)", min=0.0)
    clf_seed: int = opt(0, "seed of classifier training (the classifier is shared by all runs, not per run seed)",
                        min=0)
    clf_pretrained: bool = opt(True, "start resnet18 from torchvision's ImageNet weights when they are cached "
                                     "locally (torch hub cache); otherwise from scratch")
    # --- generative-replay solver (ACC / forgetting) ----------------------------------------------
    solver_epochs: int = opt(20, "epochs per task of the generative-replay solver; 0 = no solver", min=0)
    solver_iters_per_task: int = opt(0, "cap on solver iterations per task; 0 = whole epochs", min=0)
    solver_lr: float = opt(1e-3, "solver Adam learning rate", min=0.0, min_exclusive=True)
    solver_batch_size: int = opt(128, "solver batch: this many real images plus this many replayed samples", min=1)
    solver_replay_pool: int = opt(0, "replayed samples drawn once per task from the previous generator and "
                                     "shared by all solver batches; 0 = fresh samples for every batch (paper)", min=0)
    kd_temperature: float = opt(2.0, "solver distillation temperature T (loss scaled by T^2)", min=0.0,
                                min_exclusive=True)
    kd_variant: str = opt("standard", "solver KD: 'standard' (teacher probs as targets) or 'paper-code' "
                                     "(student probs outside the log, as in the paper's code)",
                          choices="cl_diffusion.evaluation.solver:KD_VARIANTS")
    # --- outputs ------------------------------------------------------------------------------------
    tensorboard: bool = opt(False, "also log every metric to TensorBoard through Avalanche's logger",
                            protocol=False)
    wandb: bool = opt(False, "also log every metric to an offline Weights & Biases run in <run dir>/wandb, "
                             "through Avalanche's logger (needs the 'wandb' extra; never uses the network)",
                      protocol=False)

    def check(self) -> None:
        """Checks across options and the environment, run when the config is validated (before training)."""
        if self.wandb:
            from .wandblog import require_wandb

            require_wandb()  # UserError with the install hint when the package is missing
