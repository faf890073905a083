"""Evaluation after every task: FID (Inception and classifier features), KLD/ARD, solver ACC.

- :mod:`.evaluator`: :class:`~.evaluator.Evaluator`, the object the trainer calls after each task.
- :mod:`.frechet`: Fréchet distance from features or Gaussian statistics.
- :mod:`.inception`: torch-fidelity's InceptionV3 (weights resolution, pool3 features).
- :mod:`.classifier`: the evaluation classifier (presets, deterministic training, on-disk cache).
- :mod:`.histogram`: class histograms, KLD and ARD.
- :mod:`.solver`: the generative-replay solver behind ACC and forgetting.
- :mod:`.plots`, :mod:`.tblog`: the class-histogram PNG and TensorBoard scalars.
- :mod:`.config`: :class:`~.config.EvalConfig`, the evaluator's options.

This package's ``__init__`` imports nothing: :mod:`cl_diffusion.config` imports ``.config`` early.
"""
